"""Receivers of zguard's notifications on 127.0.0.1, started by the test that needs them.

`WebhookReceiver`: an `http.server` thread that checks each POST the way a bank's receiver
would (docs/governance.md): the timestamp is recent, the `X-Zguard-Signature` HMAC matches,
and the body's `event_id` is the header's. It can answer the first `fail_first` calls with 503
(or any status) to prove retries, and keeps every verified delivery plus the unique events by id
(the deduplication a receiver does).

`SmtpSink`: aiosmtpd's `Controller` on a free loopback port, keeping every message it is handed:
plain SMTP (zguard allows `security: plain` only to loopback), STARTTLS (required before MAIL)
or implicit TLS with the test PKI's server certificate, optionally requiring AUTH with one
login and password (with STARTTLS: aiosmtpd offers AUTH only after it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.common.factories import free_port
from tests.common.pki import Pki

MAX_SKEW_S = 300
HOST = "127.0.0.1"


@dataclass
class Delivery:
    event_id: str
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class WebhookState:
    key: bytes
    fail_first: int = 0
    fail_status: int = 503
    status: int = 204
    calls: int = 0
    refused: list[str] = field(default_factory=list)  # why a call failed verification
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def unique(self) -> dict[str, Delivery]:
        """The deliveries by event id: what a receiver that drops repeats keeps."""
        with self.lock:
            return {d.event_id: d for d in self.deliveries}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        with state.lock:
            state.calls += 1
            failing = state.calls <= state.fail_first
        if failing:
            self._answer(state.fail_status)
            return
        problem = verify(state.key, self.headers.get("X-Zguard-Timestamp"), self.headers.get("X-Zguard-Signature"), raw)
        body = json.loads(raw) if problem is None else {}
        if problem is None and body.get("event_id") != self.headers.get("X-Zguard-Event-Id"):
            problem = "event id header and body differ"
        with state.lock:
            if problem is not None:
                state.refused.append(problem)
            else:
                state.deliveries.append(Delivery(body["event_id"], body, dict(self.headers.items())))
        self._answer(401 if problem is not None else state.status)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test asserts on `state`."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: WebhookState) -> None:
        super().__init__((HOST, 0), _Handler)
        self.state = state


def verify(key: bytes, timestamp: str | None, signature: str | None, body: bytes) -> str | None:
    """What a receiver checks; None when the call is genuine, else why not."""
    if timestamp is None or not timestamp.isdigit() or abs(time.time() - int(timestamp)) > MAX_SKEW_S:
        return "timestamp missing or not recent"
    expected = "sha256=" + hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    if signature is None or not hmac.compare_digest(expected, signature):
        return "signature does not match"
    return None


@contextmanager
def webhook_receiver(key: bytes, pki: Pki | None = None, **state: Any) -> Iterator[tuple[str, WebhookState]]:
    """(URL, state) of a receiver on a free loopback port, for the `with` block; HTTPS with the
    test PKI's server certificate when `pki` is given."""
    shared = WebhookState(key, **state)
    server = _Server(shared)
    if pki is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        scheme = "https" if pki is not None else "http"
        yield f"{scheme}://{HOST}:{server.server_address[1]}/hooks/zguard?tenant=bank", shared
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class _Keep:
    def __init__(self) -> None:
        self.messages: list[tuple[Envelope, Message]] = []
        self.tls: list[bool] = []  # per message: whether its session was encrypted
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        with self.lock:
            self.messages.append((envelope, message_from_bytes(content)))
            # session.ssl is set by STARTTLS only; with implicit TLS the transport itself is TLS
            transport = server.transport
            tls = transport is not None and transport.get_extra_info("ssl_object") is not None
            self.tls.append(session.ssl is not None or tls)
        return "250 OK"


def _one_login(login: str, password: str) -> Any:
    def check(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.login == login.encode() and data.password == password.encode()
        return AuthResult(success=ok, handled=False)  # unhandled: aiosmtpd answers 535 itself

    return check


@dataclass
class SmtpSink:
    port: int
    keep: _Keep

    @property
    def messages(self) -> list[tuple[Envelope, Message]]:
        with self.keep.lock:
            return list(self.keep.messages)

    @property
    def encrypted(self) -> list[bool]:
        with self.keep.lock:
            return list(self.keep.tls)


@contextmanager
def smtp_sink(
    security: Literal["plain", "starttls", "tls"] = "plain",
    pki: Pki | None = None,
    login: tuple[str, str] | None = None,
) -> Iterator[SmtpSink]:
    keep = _Keep()
    port = free_port()
    options: dict[str, Any] = {}
    if security != "plain":
        assert pki is not None, "TLS needs the test PKI"
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        options = (
            {"tls_context": context, "require_starttls": True} if security == "starttls" else {"ssl_context": context}
        )
    if login is not None:
        options |= {"authenticator": _one_login(*login), "auth_required": True}
    controller = Controller(keep, hostname=HOST, port=port, **options)
    controller.start()
    try:
        yield SmtpSink(port, keep)
    finally:
        controller.stop()
