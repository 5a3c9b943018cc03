"""Sending syslog messages: UDP (RFC 5426), TCP with octet counting (RFC 6587), TLS (RFC 5425).

Every transport raises `SyslogUnavailable` when the collector cannot take a message, so the
forwarder keeps the events in its outbox and retries; the next `send` opens a new connection.

Plain TCP and TLS syslog have no acknowledgement: `sendall` returning only means the bytes are in
the local kernel. `delivered()` is the strongest check available without one: the connection is
still open (no FIN or RST from the collector) and the collector's host has acknowledged every byte
(Linux `SIOCOUTQ` is 0). The forwarder asks it before it moves its cursor, and waits a little
longer still (see `zguard.audit.forwarder`), so a collector that goes down takes nothing with it.
UDP has no such check: a datagram is gone once sent, so UDP is at-most-once and loses messages
while the collector is down, or when a batch (`batch_size` datagrams sent back to back) overflows
its receive buffer (imudp's `rcvbufSize`); use TCP or TLS where every event must arrive.
"""

from __future__ import annotations

import fcntl
import select
import socket
import ssl
import struct
import termios
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, Protocol

from zguard.errors import EXIT_UNAVAILABLE, OperatorError

if TYPE_CHECKING:
    from zguard.config import SyslogSettings

# RFC 5426 asks receivers to take 2048 bytes and allows more; rsyslog takes 8 KiB by default.
# Longer messages are cut (at a UTF-8 boundary): the header and structured data stay whole, the
# JSON body loses its end. TCP and TLS never cut.
UDP_MAX_BYTES: Final = 8192
_SIOCOUTQ: Final = getattr(termios, "TIOCOUTQ", None)  # Linux: bytes not yet acknowledged by the peer


class SyslogUnavailable(OperatorError):
    """The collector did not take the messages; `target` says which one (`tcp://host:port`)."""

    code = "syslog_unavailable"
    exit_code = EXIT_UNAVAILABLE
    fix = "check the collector in audit.syslog is up and reachable; the forwarder retries from its cursor"

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"syslog collector {target} unavailable: {reason}", detail=reason)
        self.target = target
        self.reason = reason


class SyslogTransport(Protocol):
    """One way to the collector. Not thread-safe: one forwarder thread uses it."""

    target: str

    def send(self, messages: Sequence[bytes]) -> None:
        """Hand every message to the collector, in order, or raise `SyslogUnavailable`."""

    def delivered(self) -> bool:
        """True when everything sent so far has reached the collector's host and the connection is
        still open; False while bytes are in flight; raises `SyslogUnavailable` when the collector
        closed the connection or has not acknowledged anything for longer than the timeout."""

    def close(self) -> None: ...


def _reason(exc: BaseException) -> str:
    # Our words and the OS's, never a peer-supplied string.
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate rejected ({exc.verify_message})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({type(exc).__name__})"
    return type(exc).__name__


def octet_counted(messages: Sequence[bytes]) -> bytes:
    """RFC 6587 3.4.1 framing: `MSG-LEN SP SYSLOG-MSG` for each message."""
    return b"".join(b"%d %s" % (len(message), message) for message in messages)


def cut_utf8(data: bytes, limit: int) -> bytes:
    """At most `limit` bytes of `data`, never ending inside a UTF-8 sequence."""
    if len(data) <= limit:
        return data
    end = limit
    while end > 0 and (data[end] & 0xC0) == 0x80:  # a continuation byte: back up to its start
        end -= 1
    return data[:end]


class UdpTransport:
    """One datagram per message. A refused port (ICMP) raises on the next send; loss does not."""

    def __init__(self, host: str, port: int, *, timeout: float) -> None:
        self.target = f"udp://{host}:{port}"
        self._address = (host, port)
        self._timeout = timeout
        self._sock: socket.socket | None = None

    def send(self, messages: Sequence[bytes]) -> None:
        try:
            if self._sock is None:
                family, kind, proto, _, address = socket.getaddrinfo(*self._address, type=socket.SOCK_DGRAM)[0]
                sock = socket.socket(family, kind, proto)
                sock.settimeout(self._timeout)
                sock.connect(address)  # connected, so ICMP port-unreachable comes back as an error
                self._sock = sock
            for message in messages:
                self._sock.send(cut_utf8(message, UDP_MAX_BYTES))
        except OSError as exc:
            self.close()
            raise SyslogUnavailable(self.target, _reason(exc)) from exc

    def delivered(self) -> bool:
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class TcpTransport:
    """RFC 6587 octet-counted frames over one TCP connection, reopened after a failure."""

    scheme = "tcp"

    def __init__(self, host: str, port: int, *, timeout: float) -> None:
        self.target = f"{self.scheme}://{host}:{port}"
        self._host = host
        self._port = port
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._unacked_since: float | None = None

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self._host, self._port), timeout=self._timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return sock

    def send(self, messages: Sequence[bytes]) -> None:
        try:
            if self._sock is None:
                self._sock = self._connect()
                self._unacked_since = None
            self._sock.sendall(octet_counted(messages))
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self.close()
            raise SyslogUnavailable(self.target, _reason(exc)) from exc

    def delivered(self) -> bool:
        sock = self._sock
        if sock is None:
            return True
        try:
            self._check_open(sock)
            unacked = _unacknowledged_bytes(sock)
        except OSError as exc:
            self.close()
            raise SyslogUnavailable(self.target, _reason(exc)) from exc
        now = time.monotonic()
        if unacked == 0:
            self._unacked_since = None
            return True
        if self._unacked_since is None:
            self._unacked_since = now
        elif now - self._unacked_since > self._timeout:
            self.close()
            raise SyslogUnavailable(self.target, f"{unacked} bytes unacknowledged for {self._timeout:g} s")
        return False

    def _check_open(self, sock: socket.socket) -> None:
        """Raise when the collector closed its end. A syslog collector sends nothing, so anything
        readable is the end of the connection (or, over TLS, a session ticket to read past)."""
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return
        sock.settimeout(0)
        try:
            data = sock.recv(4096)
        except (ssl.SSLWantReadError, BlockingIOError):
            return
        finally:
            sock.settimeout(self._timeout)
        if not data:
            raise ConnectionAbortedError(0, "closed by the collector")

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


class TlsTransport(TcpTransport):
    """RFC 5425: octet-counted frames over TLS. The collector's certificate must chain to the
    configured CAs and carry `server_name`; there is no switch to turn either check off."""

    scheme = "tls"

    def __init__(self, host: str, port: int, *, timeout: float, context: ssl.SSLContext, server_name: str) -> None:
        if context.verify_mode != ssl.CERT_REQUIRED or not context.check_hostname:
            raise ValueError("a syslog TLS context must verify the certificate and the host name")
        super().__init__(host, port, timeout=timeout)
        self._context = context
        self._server_name = server_name

    def _connect(self) -> socket.socket:
        sock = super()._connect()
        try:
            return self._context.wrap_socket(sock, server_hostname=self._server_name)
        except BaseException:
            sock.close()
            raise


def _unacknowledged_bytes(sock: socket.socket) -> int:
    if _SIOCOUTQ is None:  # not Linux: trust the kernel's send buffer
        return 0
    (count,) = struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))
    return int(count)


def tls_context(settings: SyslogSettings) -> ssl.SSLContext:
    """Verification always on: `ca_file` or the system CAs; TLS 1.2 at least; client cert if set."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(settings.ca_file) if settings.ca_file else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.cert_file is not None:
        context.load_cert_chain(settings.cert_file, settings.key_file)
    return context


def open_transport(settings: SyslogSettings) -> SyslogTransport:
    """The transport `settings.transport` names; it connects on its first send."""
    timeout = settings.timeout_s
    if settings.transport == "udp":
        return UdpTransport(settings.host, settings.port, timeout=timeout)
    if settings.transport == "tcp":
        return TcpTransport(settings.host, settings.port, timeout=timeout)
    if settings.transport == "tls":
        return TlsTransport(
            settings.host,
            settings.port,
            timeout=timeout,
            context=tls_context(settings),
            server_name=settings.server_name or settings.host,
        )
    raise ValueError(f"syslog transport {settings.transport!r} sends nothing")
