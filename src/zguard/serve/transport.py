"""Transport limits: what each listener enforces on bytes and sockets before the app sees a request.

`guarded_protocol(guard)` is the HTTP protocol class `listener_config` hands uvicorn. It enforces
a listener's `TransportSettings`: request line + header bytes and header count (431), a deadline
for the headers (408, or a quiet close when nothing was sent), a deadline and a longest pause for
the body (408), the listener's and each client address's connection caps (zguard.serve.connections;
503 `too_many_connections`), and the keep-alive timeout (uvicorn's own timer). What it refuses is
answered in the one error shape (zguard.app.errors.error_response) with an `X-Request-ID`, the
listener's security headers and `Connection: close`, and reported to `guard.on_refused`
(zguard.serve.refusals records it in the audit trail, bounded per client address).

Decisions written here:
- Parser: httptools (llhttp), what uvicorn picks when it is installed and what zguard already
  ran; h11 is pure Python and costs more CPU per request. Neither bounds what we need: llhttp has
  no header size or count limit, and httptools joins a header value arriving in many reads by
  repeated `bytes +=`, so a 256 MiB value cost time quadratic in its size on the event loop.
  uvicorn's h11 limit (`h11_max_incomplete_event_size`) answers 400, not 431, in its own shape.
  So we subclass uvicorn's `HttpToolsProtocol` and count bytes in `data_received` *before* the
  parser sees them: while a request's headers are incomplete at most `max_header_bytes` are fed;
  if the headers are still incomplete after that, the request gets 431 and nothing more is
  parsed. The `on_url` / `on_header` callbacks count exactly as well (field bytes and the number
  of fields), which also covers a request that begins in the middle of a read (pipelining).
- Deadlines are per connection timers on the event loop (one `call_later` handle at a time).
  The header deadline starts when the connection opens (first request) or at a request's first
  byte (later ones; between requests uvicorn's keep-alive timer applies). A connection that sent
  nothing is closed quietly at the deadline, as at keep-alive expiry: browsers open speculative
  connections they never use, and that is not an attack worth an audit event. The body's pause
  timer is re-checked lazily (`on_body` only stores the time), and time during which the server
  itself stopped reading (flow control: the app has not taken the body yet) or has not yet sent
  the `100 Continue` a client asked for does not count.
- Connection caps are enforced in `connection_made`, i.e. after accept(): the kernel and asyncio
  give no hook before it. A refused connection costs one small write and a close, and holds its
  descriptor for a loop iteration (or the linger below). The listener cap gives way to the
  connection that has waited longest with no request in progress, so held-open sockets cannot
  lock legitimate clients out (see zguard.serve.connections). TLS connections count from the end
  of the handshake (asyncio calls `connection_made` only then); the handshake itself is bounded
  by asyncio's 60 s `ssl_handshake_timeout`.
- After a refusal the connection half-closes and reads (and drops) up to `LINGER_MAX_BYTES` for
  `LINGER_S` before closing, so a client still sending (a 1 MiB header) reads the answer instead
  of a TCP reset; refused newcomers linger only `MAX_LINGERING_REFUSED` at a time per listener.
- WebSockets are off (`ws="none"`): an `Upgrade` request is answered as plain HTTP by the app,
  so it is audited and gets the usual headers, and the connection closes after the answer.
- A refusal's recording fails open: the connection was refused either way and nothing was served.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.utils import get_remote_addr
from uvicorn.server import ServerState

from zguard.app.errors import error_response
from zguard.app.middleware.request_context import API_SECURITY_HEADERS, CONSOLE_SECURITY_HEADERS
from zguard.config import Settings, TransportSettings
from zguard.errors import (
    MalformedRequest,
    RequestHeaderFieldsTooLarge,
    RequestTimeout,
    TooManyConnections,
    ZguardError,
)
from zguard.security.netacl import NetworkAllowlist, parse_address
from zguard.serve.connections import ConnectionTable

log = logging.getLogger("zguard.serve.transport")
Phase = Literal["idle", "headers", "body"]
CONNECTIONS_RETRY_AFTER_S = 1
FIELD_OVERHEAD = 4  # ": " and CRLF around each header field, as the client sent them
LINGER_S = 1.0  # after a refusal, how long the rest of the request is read and dropped ...
LINGER_MAX_BYTES = 64 * 1024  # ... and how much of it, before the connection is closed
DEADLINE_JITTER = 0.1
MAX_LINGERING_REFUSED = 64  # refused newcomers lingering at once per listener; beyond, closed at once


@dataclass(frozen=True)
class Refusal:
    """One connection or request the listener refused before the app saw it. `status` is None
    when the connection was closed without an answer; `phase` is where it was refused:
    `connect`, `headers` or `body`."""

    listener: str
    client: str | None
    status: int | None
    code: str
    request_id: str | None
    phase: str


RefusalSink = Callable[[Refusal], None]


def _log_refusal(refusal: Refusal) -> None:
    log.debug("%s listener refused %s: %s (%s)", refusal.listener, refusal.client, refusal.code, refusal.phase)


@dataclass(frozen=True)
class TransportGuard:
    """What one listener's protocol layer enforces and whom it tells. `zguard serve` passes its
    audit-trail recorder as `on_refused`; left out (tests, benchmarks), refusals are only logged
    at debug level."""

    listener: str
    limits: TransportSettings = field(default_factory=TransportSettings)
    headers: Mapping[str, str] = field(default_factory=lambda: dict(API_SECURITY_HEADERS))
    trusted_proxies: NetworkAllowlist = field(default_factory=lambda: NetworkAllowlist(()))
    on_refused: RefusalSink = _log_refusal


def refusal_bytes(
    error: ZguardError, request_id: str, headers: Mapping[str, str], default_headers: list[tuple[bytes, bytes]]
) -> bytes:
    """A whole HTTP/1.1 response for `error`: the app's error shape and headers, then close."""
    response = error_response(error)
    lines = [STATUS_LINE[error.status]]
    extra = [
        *default_headers,
        *response.raw_headers,
        (b"x-request-id", request_id.encode("ascii")),
        *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()),
        (b"server", b"zguard"),
        (b"connection", b"close"),
    ]
    lines.extend(name + b": " + value + b"\r\n" for name, value in extra)
    lines.append(b"\r\n")
    lines.append(bytes(response.body))
    return b"".join(lines)


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the protocol answers `_pending`."""


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with zguard's transport limits; one subclass per listener
    (`guarded_protocol`) carries the listener's guard and connection table."""

    guard: ClassVar[TransportGuard]
    table: ClassVar[ConnectionTable[GuardedHttpProtocol]]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = self.guard.limits
        self._phase: Phase = "idle"
        self._timer: asyncio.TimerHandle | None = None
        self._fed_header_bytes = 0  # bytes fed to the parser while this request's headers were incomplete
        self._field_bytes = 0  # request target + header fields, as parsed
        self._fields = 0
        self._pending: ZguardError | None = None
        self._body_deadline = 0.0
        self._last_body = 0.0
        self._admitted = False
        self._peer: str | None = None
        self._lingering = False
        self._lingering_refused = False
        self._lingered_bytes = 0

    # --- connections ----------------------------------------------------------------------

    # asyncio declares BaseTransport; uvicorn's protocol (like ours) needs a Transport.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peer = get_remote_addr(transport)
        address = parse_address(peer[0]) if peer is not None else None
        self._peer = str(address) if address is not None else (peer[0] if peer is not None else None)
        admission = self.table.admit(self, self._peer)
        if not admission.admitted:
            self.transport, self.client = transport, peer
            reason = (
                "too many connections from your address; close idle ones and retry"
                if admission.refused_because == "client_full"
                else "too many connections to this listener; retry later"
            )
            self._refuse(TooManyConnections(reason, retry_after=CONNECTIONS_RETRY_AFTER_S), "connect")
            return
        self._admitted = True
        if admission.evicted is not None:
            admission.evicted.give_way()
        super().connection_made(transport)
        self._arm(self._header_deadline(), self._headers_late)

    def give_way(self) -> None:
        """Closed to make room for a newcomer (already released from the table)."""
        self._admitted = False
        self._cancel_timer()
        if not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._lingering_refused:
            self._lingering_refused = False
            self.table.lingering -= 1
        if self._admitted:
            self._admitted = False
            self.table.release(self)
        super().connection_lost(exc)

    # --- bytes in ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._lingered_bytes += len(data)
            if self._lingered_bytes > LINGER_MAX_BYTES:
                self.transport.close()
            return
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        while data:
            if self._phase == "idle":
                self._start_request()
            room = self.limits.max_header_bytes - self._fed_header_bytes
            if self._phase != "headers" or len(data) <= room:
                if self._phase == "headers":
                    self._fed_header_bytes += len(data)
                self._feed(data)
                return
            self._fed_header_bytes += room
            head, data = data[:room], data[room:]
            if not self._feed(head):
                return
            if self._phase == "headers":
                self._refuse(self._headers_too_large(), "headers")
                return
            # The headers ended inside the allowance: the rest is body, or the next request.

    def _feed(self, data: bytes) -> bool:
        """Parse `data`; False when the connection was refused or no more is to be read."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # ws="none": the app answers the request as plain HTTP and the connection closes after
            # it (on_headers_complete); whatever the client sent after the request is not read.
            return False
        except httptools.HttpParserError:
            self._refuse(self._pending or MalformedRequest("the request is not valid HTTP/1.1"), self._phase)
            return False
        return True

    def _start_request(self) -> None:
        self._phase = "headers"
        self._fed_header_bytes = self._field_bytes = self._fields = 0
        self._pending = None
        if self._timer is None:
            self._arm(self._header_deadline(), self._headers_late)

    # --- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase != "headers":  # a pipelined request beginning inside an earlier read
            self._start_request()

    def on_url(self, url: bytes) -> None:
        self._count_field_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > self.limits.max_headers:
            self._pending = RequestHeaderFieldsTooLarge(
                f"too many header fields; this listener accepts at most {self.limits.max_headers}"
            )
            raise _Refused
        self._count_field_bytes(len(name) + len(value) + FIELD_OVERHEAD)
        super().on_header(name, value)

    def _count_field_bytes(self, size: int) -> None:
        self._field_bytes += size
        if self._field_bytes > self.limits.max_header_bytes:
            self._pending = self._headers_too_large()
            raise _Refused

    def _headers_too_large(self) -> RequestHeaderFieldsTooLarge:
        return RequestHeaderFieldsTooLarge(
            f"request line and headers too large; this listener accepts at most {self.limits.max_header_bytes} bytes"
        )

    def on_headers_complete(self) -> None:
        self._cancel_timer()
        self.table.busy(self)
        super().on_headers_complete()
        self._phase = "body"
        now = self.loop.time()
        self._last_body, self._body_deadline = now, now + self.limits.body_timeout_s
        self._arm(min(self.limits.body_idle_timeout_s, self.limits.body_timeout_s), self._body_late)
        if self.parser.should_upgrade() and self.cycle is not None:
            self.cycle.keep_alive = False  # no protocol switch: answer, then close

    def on_body(self, body: bytes) -> None:
        self._last_body = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._cancel_timer()
        self._phase = "idle"
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._admitted and self._phase != "body" and (self.cycle is None or self.cycle.response_complete):
            self.table.idle(self)

    def _unsupported_upgrade_warning(self) -> None:
        """Nothing to warn about: an upgrade request is answered as plain HTTP, on purpose."""

    # --- deadlines ---------------------------------------------------------------------------

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _header_deadline(self) -> float:
        """The header timeout, up to `DEADLINE_JITTER` shorter: sockets opened together (a flood
        of idle ones) then do not all expire, and reconnect, in one turn of the event loop."""
        return self.limits.header_timeout_s * (1 - DEADLINE_JITTER * random.random())  # noqa: S311  # jitter, not a secret

    def _headers_late(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._phase == "idle":  # nothing sent since the connection opened: close quietly
            self.transport.close()
            return
        self._refuse(
            RequestTimeout(f"the request headers did not arrive within {self.limits.header_timeout_s:g} s"), "headers"
        )

    def _body_late(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self._phase != "body":
            return
        if self.cycle is not None and self.cycle.response_complete:
            self.transport.close()  # answered already (e.g. 413): the rest of the body is not wanted
            return
        now = self.loop.time()
        idle, total = self.limits.body_idle_timeout_s, self.limits.body_timeout_s
        waiting_for_us = self.flow.read_paused or (self.cycle is not None and self.cycle.waiting_for_100_continue)
        if waiting_for_us:  # the server is not reading, or has not said "100 Continue": not the client's time
            self._last_body = now
            self._body_deadline += idle
            self._arm(idle, self._body_late)
            return
        next_check = min(self._last_body + idle, self._body_deadline)
        if now < next_check:
            self._arm(next_check - now, self._body_late)
            return
        why = "paused longer than" if now < self._body_deadline else "did not arrive within"
        limit = idle if now < self._body_deadline else total
        self._refuse(RequestTimeout(f"the request body {why} {limit:g} s"), "body")

    # --- refusing --------------------------------------------------------------------------

    def _linger(self, *, counted: bool) -> None:
        """Close after the answer, reading (and dropping) what the client is still sending for a
        moment first: closing with unread bytes sends a TCP reset, which can destroy the answer
        before the client reads it (a client still sending a 1 MiB header would see only "reset")."""
        self._lingering = True
        if counted:  # a refused newcomer: not in the table, so bounded here
            self._lingering_refused = True
            self.table.lingering += 1
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the answer is complete: the client sees end of stream
        self._arm(LINGER_S, self.transport.close)

    def _refuse(self, error: ZguardError, phase: str) -> None:
        """Answer `error` (unless a response already started), close, and report the refusal."""
        self._cancel_timer()
        if self._lingering or self.transport.is_closing():
            return
        cycle = self.cycle
        in_progress = cycle is not None and not cycle.response_complete
        # A response already on the wire cannot be followed by another: the connection just ends.
        answered = not (in_progress and cycle is not None and cycle.response_started)
        if in_progress and cycle is not None:
            cycle.disconnected = True  # the app's receive() sees a disconnect; its sends are dropped
            cycle.message_event.set()
        request_id = uuid.uuid4().hex if answered else None
        status = error.status if answered else None
        if request_id is not None:
            self.transport.write(
                refusal_bytes(error, request_id, self.guard.headers, self.server_state.default_headers)
            )
        if request_id is not None and (phase != "connect" or self.table.lingering < MAX_LINGERING_REFUSED):
            self._linger(counted=phase == "connect")
        else:
            self.transport.close()
        refusal = Refusal(self.guard.listener, self._peer, status, error.code, request_id, phase)
        try:
            self.guard.on_refused(refusal)
        except Exception:  # recording fails open (module docstring); the refusal stands
            log.exception("could not report a refused connection on the %s listener", self.guard.listener)


def guarded_protocol(guard: TransportGuard) -> type[GuardedHttpProtocol]:
    """A protocol class for one listener: `guard`'s limits and a connection table of its own."""
    limits = guard.limits
    proxies = guard.trusted_proxies
    table: ConnectionTable[GuardedHttpProtocol] = ConnectionTable(
        limits.max_connections, limits.max_connections_per_client, exempt=proxies.allows
    )

    class ListenerProtocol(GuardedHttpProtocol):
        pass

    ListenerProtocol.guard, ListenerProtocol.table = guard, table
    ListenerProtocol.__qualname__ = ListenerProtocol.__name__ = f"GuardedHttpProtocol[{guard.listener}]"
    return ListenerProtocol


def listener_guards(settings: Settings, on_refused: RefusalSink) -> dict[str, TransportGuard]:
    """Each listener's guard under `settings`, with the security headers its app sets."""
    proxies = NetworkAllowlist.from_entries(settings.trusted_proxies)
    return {
        "api": TransportGuard("api", settings.api.transport, API_SECURITY_HEADERS, proxies, on_refused),
        "console": TransportGuard("console", settings.console.transport, CONSOLE_SECURITY_HEADERS, proxies, on_refused),
    }
