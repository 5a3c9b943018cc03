"""Forwarding the audit trail to syslog from a durable outbox: nothing lost, duplicates allowed.

The audit store is the outbox. A background thread reads the events after a cursor, sends them in
batches, and moves the cursor (durably, in the store) only once they are delivered, so a collector
outage or a zguard restart resends instead of losing: delivery is at-least-once, and the event id
(`id` in the structured data) lets the collector drop duplicates.

"Delivered" for TCP and TLS, which have no acknowledgement: the collector's host has acknowledged
every byte (see `SyslogTransport.delivered`) and the connection then stayed open for `settle_s`
more. A collector that stops or crashes closes its connections; if that happens within `settle_s`
of receiving a batch, the batch is sent again, which covers what it held in memory but had not
written yet. What it cannot cover: a collector that acknowledges, keeps the connection open for
longer, and then loses its queue (run it with a disk-assisted queue). UDP confirms at once and
loses what a down collector does not receive.

While the collector is down the forwarder retries with exponential backoff and jitter, up to
`max_backoff_s`. Failing to forward never blocks a request: events are already committed in the
store (fail closed happens there); the lag grows and is reported (`status()`, `zguard audit
status`, `/readyz` detail).

With several replicas on one store, one forwards at a time: the forwarder is given a `Lease`
(`zguard.store.leases`, in the state database) and sends only while it holds it. A replica that
takes the lease over starts from the durable cursor, so what the previous holder sent but had
not yet recorded is sent again (the at-least-once window: at most what was in flight, plus
`CURSOR_WRITE_EVERY_S` of events) and nothing is skipped. A holder that loses the lease drops
what it had in flight and stops sending.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from zguard.audit.syslog import SyslogEvent, format_message
from zguard.audit.syslog_transport import SyslogTransport, SyslogUnavailable, open_transport
from zguard.config import SyslogSettings
from zguard.store.leases import Lease

CURSOR_NAME: Final = "syslog"
SETTLE_S: Final = 1.0  # how long a delivered batch must stay on an open connection before the cursor passes it
BACKOFF_FIRST_S: Final = 0.5
MAX_UNACKED_BATCHES: Final = 16  # then wait for the collector's acknowledgements before sending more
CURSOR_WRITE_EVERY_S: Final = 0.25  # the durable cursor moves at most this often while events flow
IDLE_POLL_S: Final = 0.2  # also how soon events appended by another process are seen
IN_FLIGHT_POLL_S: Final = 0.01

log = logging.getLogger("zguard.audit.syslog")
_jitter = secrets.SystemRandom()


def backoff_delay(failures: int, max_backoff_s: float) -> float:
    """Seconds to wait after `failures` failures in a row: doubling from `BACKOFF_FIRST_S`, at most
    `max_backoff_s`, each drawn between half and all of that so restarted replicas spread out."""
    ceiling = min(max_backoff_s, BACKOFF_FIRST_S * 2 ** min(max(failures, 1) - 1, 30))
    return _jitter.uniform(ceiling / 2, ceiling)


class OutboxSource(Protocol):
    """The audit store, as the forwarder reads it. Every method may be called from its thread."""

    def events_after(self, seq: int, limit: int) -> Sequence[SyslogEvent]:
        """Up to `limit` events with sequence number > `seq`, ascending."""

    def cursor(self, name: str) -> int:
        """The durable cursor `name`; 0 when never set."""

    def advance_cursor(self, name: str, seq: int) -> None:
        """Durably set cursor `name` to `seq` (committed before it returns)."""

    def head_seq(self) -> int:
        """The highest sequence number stored; 0 when empty."""

    def wait_for_events(self, after_seq: int, timeout: float) -> None:
        """Return once the head is past `after_seq`, or after `timeout` seconds."""


@dataclass(frozen=True)
class ForwarderStatus:
    """What `zguard audit status` and the admin `/readyz` detail show about forwarding."""

    target: str  # `tcp://collector:514`
    running: bool
    cursor: int  # last sequence number durably delivered
    head: int
    lag: int  # events stored but not yet delivered: head − cursor
    last_success: float | None  # UNIX time the cursor last moved
    last_error: str | None  # the latest failure, in zguard's words; None once delivery resumes
    last_error_time: float | None
    consecutive_failures: int
    active: bool = True  # whether this replica forwards now (it holds the lease, or there is none)
    holder: str | None = None  # the replica holding the forwarder's lease; None without a lease


@dataclass
class _Batch:
    last_seq: int
    acked_at: float | None = None  # monotonic time the collector's host had acknowledged it


class Forwarder:
    """Sends the audit trail to syslog from a background thread; `start()`, then `close()`."""

    def __init__(
        self,
        source: OutboxSource,
        settings: SyslogSettings,
        *,
        transport: SyslogTransport | None = None,
        hostname: str | None = None,
        procid: int | str | None = None,
        cursor_name: str = CURSOR_NAME,
        settle_s: float = SETTLE_S,
        lease: Lease | None = None,
    ) -> None:
        """`lease`: forward only while holding it (several replicas on one store); None: always."""
        self._source = source
        self._lease = lease
        self._active = lease is None
        self._settings = settings
        self._transport = transport if transport is not None else open_transport(settings)
        self._hostname = hostname if hostname is not None else socket.gethostname()
        self._procid = procid if procid is not None else os.getpid()
        self._cursor_name = cursor_name
        self._settle_s = settle_s
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()  # cuts a backoff or poll wait short when closing
        self._closing = False
        self._drain_until = 0.0
        self._drain_target = 0
        # Owned by the forwarder thread once started:
        self._cursor = source.cursor(cursor_name)  # durable
        self._confirmed = self._cursor  # delivered, maybe not yet written to the cursor
        self._sent = self._cursor
        self._in_flight: list[_Batch] = []
        self._cursor_written_at = 0.0
        # Read by status():
        self._last_success: float | None = None
        self._last_error: str | None = None
        self._last_error_time: float | None = None
        self._failures = 0

    # -- the caller's side -------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("the forwarder is already started")
            self._thread = threading.Thread(target=self._run, name="zguard-syslog", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> bool:
        """Deliver what was stored before the call, for at most `timeout` seconds, then stop.

        True when all of it was delivered; what was not is sent after the next start.
        """
        with self._lock:
            thread = self._thread
            self._drain_target = self._source.head_seq()
            self._drain_until = time.monotonic() + timeout
            self._closing = True
        self._wake.set()
        if thread is None:
            self._transport.close()
        else:
            thread.join(timeout + self._settings.timeout_s + 1.0)
        return self._cursor >= self._drain_target

    def lag(self) -> int:
        """Events stored but not yet delivered (head − durable cursor)."""
        return max(0, self._source.head_seq() - self._cursor)

    def status(self) -> ForwarderStatus:
        head = self._source.head_seq()
        holder = None
        if self._lease is not None:
            held = self._lease.holder_now()
            holder = held[0] if held is not None and held[1] > time.time() * 1000 else None
        with self._lock:
            thread = self._thread
            active = self._active
            cursor = self._cursor
        if not active:  # another replica forwards: the durable cursor is the one that counts
            cursor = self._source.cursor(self._cursor_name)
        with self._lock:
            return ForwarderStatus(
                target=self._transport.target,
                running=thread is not None and thread.is_alive(),
                cursor=cursor,
                head=head,
                lag=max(0, head - cursor),
                last_success=self._last_success,
                last_error=self._last_error,
                last_error_time=self._last_error_time,
                consecutive_failures=self._failures,
                active=active,
                holder=holder,
            )

    # -- the forwarder thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._done():
                try:
                    self._round()
                except Exception as exc:  # noqa: BLE001  any failure keeps the events and retries; _failed logs it
                    self._failed(exc)
                    self._sleep(backoff_delay(self._failures, self._settings.max_backoff_s))
        finally:
            self._transport.close()
            if self._lease is not None:
                self._lease.release()  # another replica takes over at once

    def _done(self) -> bool:
        if not self._closing:
            return False
        if not self._active:  # another replica forwards what is left
            return True
        return self._cursor >= self._drain_target or time.monotonic() >= self._drain_until

    def _leased(self, lease: Lease) -> bool:
        """Take or renew the lease; on taking it start from the durable cursor, on losing it drop
        what is in flight. Whether to forward this round (waits a poll interval when not)."""
        held = lease.keep()
        if held and not self._active:
            cursor = self._source.cursor(self._cursor_name)
            self._in_flight.clear()
            self._confirmed = self._sent = cursor
            with self._lock:
                self._cursor = cursor
                self._active = True
            log.info("this replica forwards the audit trail to syslog now, from event %d", cursor)
        elif not held and self._active:
            self._transport.close()
            self._in_flight.clear()
            with self._lock:
                self._active = False
            log.warning("another replica holds the syslog forwarder's lease: this one stops forwarding")
        if not held and not self._closing:
            self._sleep(lease.poll_s)
        return held

    def _round(self) -> None:
        if self._lease is not None and not self._leased(self._lease):
            return
        if self._in_flight:
            self._confirm()
        unacked = sum(1 for batch in self._in_flight if batch.acked_at is None)
        if unacked < MAX_UNACKED_BATCHES and not (self._closing and self._sent >= self._drain_target):
            events = self._source.events_after(self._sent, self._settings.batch_size)
            if events:
                self._send(events)
                return
        if self._in_flight:
            self._sleep(IN_FLIGHT_POLL_S)
        elif self._closing:
            self._sleep(IN_FLIGHT_POLL_S)  # caught up; _done() ends the loop once the cursor is written
        else:
            self._source.wait_for_events(self._sent, IDLE_POLL_S)

    def _send(self, events: Sequence[SyslogEvent]) -> None:
        messages = [
            format_message(event, settings=self._settings, hostname=self._hostname, procid=self._procid)
            for event in events
        ]
        self._transport.send(messages)
        self._in_flight.append(_Batch(events[-1].seq))
        self._sent = events[-1].seq

    def _confirm(self) -> None:
        now = time.monotonic()
        if self._transport.delivered():
            for batch in self._in_flight:
                if batch.acked_at is None:
                    batch.acked_at = now
        while self._in_flight:
            acked_at = self._in_flight[0].acked_at
            if acked_at is None or now - acked_at < self._settle_s:
                break
            self._confirmed = self._in_flight.pop(0).last_seq
        write_due = not self._in_flight or self._closing or now - self._cursor_written_at >= CURSOR_WRITE_EVERY_S
        if self._confirmed > self._cursor and write_due:
            self._write_cursor(now)

    def _write_cursor(self, now: float) -> None:
        self._source.advance_cursor(self._cursor_name, self._confirmed)
        self._cursor_written_at = now
        with self._lock:
            self._cursor = self._confirmed
            self._last_success = time.time()
            if self._failures:
                log.info("syslog forwarding to %s resumed after %d failures", self._transport.target, self._failures)
            self._failures = 0
            self._last_error = None

    def _failed(self, exc: Exception) -> None:
        """Forget what is in flight: it is sent again from the last delivered event."""
        self._transport.close()
        self._in_flight.clear()
        self._sent = self._confirmed
        if isinstance(exc, SyslogUnavailable):
            message = exc.message
            log.warning("%s; %d events wait in the outbox", message, self.lag())
        else:
            message = f"forwarding failed ({type(exc).__name__})"
            log.exception("syslog forwarding to %s failed", self._transport.target)
        with self._lock:
            self._failures += 1
            self._last_error = message
            self._last_error_time = time.time()
        if self._confirmed > self._cursor:
            try:
                self._write_cursor(time.monotonic())
            except Exception:  # the store itself may be what failed; the next round tries again
                log.debug("could not write the syslog cursor", exc_info=True)

    def _sleep(self, seconds: float) -> None:
        if self._closing:
            seconds = min(seconds, max(0.0, self._drain_until - time.monotonic()))
        if self._wake.wait(seconds):
            self._wake.clear()  # close() only cuts the wait in progress short; later ones keep their length
