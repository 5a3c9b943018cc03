"""`Notifier`: one channel fed from the audit store after its durable cursor (see the package doc)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from zguard.audit import AuditEvent, AuditSink
from zguard.audit.forwarder import IDLE_POLL_S, OutboxSource, backoff_delay
from zguard.audit.notifications.channels import Channel, Undelivered
from zguard.audit.notifications.message import Notice
from zguard.config.notifications import event_selected

CURSOR_PREFIX: Final = "notify-"
FAILED_EVENT: Final = "notification.failed"
BATCH: Final = 200  # events read per round; most are not selected and only move the cursor
CURSOR_WRITE_EVERY_S: Final = 1.0  # how often the cursor follows unselected events; a sent one moves it at once
REASON_MAX_CHARS: Final = 300

log = logging.getLogger("zguard.audit.notifications")


class SenderLease(Protocol):
    """One sender among replicas (`zguard.store.leases.Lease`)."""

    def keep(self) -> bool:
        """Take or renew the lease when due; whether this process may send now."""

    def release(self) -> None:
        """Give it up at a clean stop, so another replica takes over at once."""


class NotifySource(OutboxSource, Protocol):
    """The audit store as a notifier reads it: the outbox, and which cursors exist at all."""

    def cursors(self) -> dict[str, int]:
        """Every durable cursor by name."""


@dataclass(frozen=True)
class NotifierStatus:
    """What `/readyz/detail` shows of one channel."""

    channel: str
    target: str
    running: bool
    active: bool  # whether this replica sends now (it holds the lease, or there is none)
    cursor: int
    lag: int  # events stored after the cursor, selected or not
    sent: int  # since start
    failed: int  # recorded as notification.failed since start
    last_error: str | None


class Notifier:
    """Sends the selected events of `source` through `channel`, from a thread: `start()`, `close()`."""

    def __init__(
        self,
        source: NotifySource,
        channel: Channel,
        audit: AuditSink,
        *,
        events: Sequence[str],
        max_attempts: int,
        max_backoff_s: float,
        lease: SenderLease | None = None,
    ) -> None:
        """`lease`: send only while holding it (several replicas on one store); None: always."""
        self._source = source
        self._channel = channel
        self._audit = audit
        self._events = tuple(events)
        self._max_attempts = max_attempts
        self._max_backoff_s = max_backoff_s
        self._lease = lease
        self.cursor_name = CURSOR_PREFIX + channel.name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._cursor = 0
        self._position = 0
        self._cursor_written_at = 0.0
        self._sent = 0
        self._failed = 0
        self._store_failures = 0
        self._last_error: str | None = None
        self._held = False  # whether this process held the lease at the last look

    # -- the caller's side -------------------------------------------------------------------

    def start(self) -> None:
        """Resume from the durable cursor; on the very first start, from the trail's head."""
        if self._thread is not None:
            raise RuntimeError("the notifier is already started")
        if self.cursor_name not in self._source.cursors():
            head = self._source.head_seq()
            self._source.advance_cursor(self.cursor_name, head)
            log.info(
                "%s notifications start after audit event %d (earlier events are not sent)", self._channel.name, head
            )
        self._cursor = self._position = self._source.cursor(self.cursor_name)
        self._thread = threading.Thread(target=self._run, name=f"zguard-notify-{self._channel.name}", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the notice in flight (a retry wait is cut short); what is left is sent after the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the %s notifier did not stop within %.0f s", self._channel.name, timeout)
        if self._lease is not None:
            self._lease.release()

    def status(self) -> NotifierStatus:
        head = self._source.head_seq()
        with self._lock:
            return NotifierStatus(
                channel=self._channel.name,
                target=self._channel.target,
                running=self._thread is not None and self._thread.is_alive(),
                active=self._lease is None or self._held,
                cursor=self._cursor,
                lag=max(0, head - self._cursor),
                sent=self._sent,
                failed=self._failed,
                last_error=self._last_error,
            )

    # -- the notifier's thread ---------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._sending():
                    self._stop.wait(IDLE_POLL_S * 5)  # another replica sends; look again later
                    continue
                if not self._round():
                    self._source.wait_for_events(self._position, IDLE_POLL_S)
                self._store_failures = 0
            except Exception as exc:
                self._store_failures += 1
                self._note_error(f"the audit store failed ({type(exc).__name__})")
                log.warning("%s notifications paused: %s", self._channel.name, self._last_error, exc_info=True)
                self._position = self._cursor  # from the last durable point: a repeat, never a gap
                self._stop.wait(backoff_delay(self._store_failures, self._max_backoff_s))

    def _round(self) -> bool:
        """Handle the next batch; False when there was nothing after the position."""
        events = self._source.events_after(self._position, BATCH)
        for event in events:
            if self._stop.is_set():
                break
            if event_selected(self._events, event.type):
                if not self._sending():
                    return True  # the lease was lost: the new holder sends from the durable cursor
                if not self._deliver(Notice.from_body(event.body)):
                    break  # stopping mid-retry: this event is sent after the next start
                self._position = event.seq
                self._write_cursor()
            else:
                self._position = event.seq
        if self._position > self._cursor and (
            not events or time.monotonic() - self._cursor_written_at >= CURSOR_WRITE_EVERY_S
        ):
            self._write_cursor()
        return bool(events)

    def _sending(self) -> bool:
        """Whether this process sends now; on taking the lease over, resume from the durable cursor
        (what the previous holder sent and recorded is not sent again)."""
        if self._lease is None:
            return True
        held = self._lease.keep()
        if held and not self._held:
            cursor = self._source.cursor(self.cursor_name)
            with self._lock:
                self._cursor = cursor
            self._position = cursor
        self._held = held
        return held

    def _deliver(self, notice: Notice) -> bool:
        """Send, retrying; True once it is sent or its failure recorded, False when stopping first."""
        for attempt in range(1, self._max_attempts + 1):
            try:
                self._channel.send(notice)
            except Undelivered as exc:
                self._note_error(exc.message)
                if not exc.retry or attempt == self._max_attempts:
                    self._record_failure(notice, exc, attempt)
                    return True
                wait = max(backoff_delay(attempt, self._max_backoff_s), exc.retry_after_s or 0.0)
                log.info(
                    "%s notification of event %d: %s; try %d of %d in %.1f s",
                    self._channel.name,
                    notice.seq,
                    exc.message,
                    attempt + 1,
                    self._max_attempts,
                    wait,
                )
                if self._stop.wait(wait):
                    return False
            else:
                with self._lock:
                    self._sent += 1
                    self._last_error = None
                return True
        return True  # max_attempts >= 1: not reached

    def _record_failure(self, notice: Notice, exc: Undelivered, attempts: int) -> None:
        reason = exc.message[:REASON_MAX_CHARS]
        self._audit.emit(  # raises when the trail is down: the event is kept and tried again (fail closed)
            AuditEvent(
                type=FAILED_EVENT,
                outcome="failed",
                principal="zguard",
                detail={
                    "channel": self._channel.name,
                    "target": self._channel.target,
                    "event_id": notice.event_id,
                    "event_seq": notice.seq,
                    "event_type": notice.type,
                    "attempts": attempts,
                    "reason": reason,
                },
            )
        )
        with self._lock:
            self._failed += 1
        log.warning(
            "%s notification of audit event %d (%s) failed after %d tries: %s; recorded as %s, going on",
            self._channel.name,
            notice.seq,
            notice.type,
            attempts,
            reason,
            FAILED_EVENT,
        )

    def _write_cursor(self) -> None:
        self._source.advance_cursor(self.cursor_name, self._position)
        self._cursor_written_at = time.monotonic()
        with self._lock:
            self._cursor = self._position

    def _note_error(self, message: str) -> None:
        with self._lock:
            self._last_error = message
