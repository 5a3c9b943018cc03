"""The two listeners of `zguard serve`: which addresses are safe to serve on, their sockets,
TLS contexts and uvicorn configuration (tests and benchmarks listen the same way). What each
listener enforces on bytes and sockets is `zguard.serve.transport`."""

from __future__ import annotations

import contextlib
import math
import socket
import ssl
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import uvicorn

from zguard.config import ENV_PREFIX, ListenerSettings, Settings
from zguard.errors import ConfigError

if TYPE_CHECKING:
    from zguard.serve.transport import TransportGuard

LISTEN_BACKLOG = 2048  # the kernel's queue of connections waiting for accept()
# asyncio accepts up to its `backlog` connections per wake-up, then sets each up in the next turns
# of the loop: 2048 at once stalled other clients' requests for ~0.5 s under a reconnect flood.
# So uvicorn gets this smaller batch, and `Listener` puts the kernel's queue back to LISTEN_BACKLOG.
ACCEPT_BATCH = 64


class Listener(uvicorn.Server):
    """A uvicorn server that leaves signal handling to `serve()` (two servers, one process)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for sock in sockets or ():
            sock.listen(LISTEN_BACKLOG)  # asyncio's listen(ACCEPT_BATCH) shortened the kernel's queue


def listener_config(
    app: Any, grace_s: float, tls: ssl.SSLContext | None = None, guard: TransportGuard | None = None
) -> uvicorn.Config:
    """How zguard runs uvicorn for each listener (also used by tests and benchmarks); HTTPS with `tls`.
    `guard`: the listener's transport limits and refusal recorder; `serve` passes its own, without
    one the default limits apply and refusals are only logged (zguard.serve.transport)."""
    from zguard.serve.transport import TransportGuard, guarded_protocol

    guard = guard or TransportGuard(listener="api")
    return uvicorn.Config(
        app,
        http=guarded_protocol(guard),
        ws="none",  # an Upgrade request is answered by the app as plain HTTP (and audited)
        backlog=ACCEPT_BATCH,
        lifespan="off",
        log_config=None,  # zguard's logging setup applies
        access_log=False,  # requests are recorded by zguard itself, without prompts
        server_header=False,
        # zguard reads X-Forwarded-For itself, from `trusted_proxies` only (app/netacl.py); uvicorn's
        # own handling would trust any loopback peer and replace the TCP peer address before we see it.
        proxy_headers=False,
        timeout_graceful_shutdown=math.ceil(grace_s),
        timeout_keep_alive=guard.limits.keep_alive_timeout_s,
        ssl_context_factory=None if tls is None else (lambda _config, _default: tls),
    )


def listener_tls(listener: ListenerSettings, name: str) -> ssl.SSLContext | None:
    """The listener's TLS context (None: plain HTTP); ConfigError naming the key when unusable."""
    from zguard.security.tls import TlsError, server_context

    if listener.tls_cert_file is None or listener.tls_key_file is None:
        return None
    client_ca = getattr(listener, "tls_client_ca_file", None)
    try:
        return server_context(listener.tls_cert_file, listener.tls_key_file, client_ca)
    except TlsError as exc:
        raise ConfigError([f"{name}.{exc.setting}: {exc.message}"]) from None


def _listener_problems(name: str, listener: ListenerSettings, auth_enabled: bool) -> list[str]:
    """Why `listener` is unsafe to serve, one line per rule broken (empty when it is safe)."""
    if listener.is_loopback:
        return []
    problems = []
    if not auth_enabled:
        problems.append(
            f"{name}.host: {listener.host} is not a loopback address while api_auth.enabled is false; "
            f"set api_auth.enabled: true or bind {name}.host to 127.0.0.1"
        )
    if not listener.allow:
        problems.append(
            f"{name}.allow: empty while {name}.host {listener.host} is reachable from the network; "
            f"list the networks that may call the {name} listener, e.g. {name}.allow: [10.20.0.0/16] "
            f"(or {ENV_PREFIX}{name.upper()}__ALLOW='[\"10.20.0.0/16\"]')"
        )
    return problems


def check_safe(settings: Settings) -> None:
    """Refuse configurations this build cannot serve safely, naming every problem and its fix."""
    problems = [
        problem
        for name, listener in (("api", settings.api), ("console", settings.console))
        for problem in _listener_problems(name, listener, settings.api_auth.enabled)
    ]
    if problems:
        raise ConfigError(problems)


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket as zguard serves on (benchmarks use it too); raises OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says TCP; without it Nagle and delayed ACKs add ~40 ms per keep-alive request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


def bind(listener: ListenerSettings, name: str) -> socket.socket:
    try:
        return listen_socket(listener.host, listener.port)
    except OSError as exc:
        raise ConfigError(
            [f"{name}.port: cannot listen on {listener.host}:{listener.port} ({exc.strerror}); choose a free port"]
        ) from None


def example_call(settings: Settings) -> str:
    host = settings.api.host if ":" not in settings.api.host else f"[{settings.api.host}]"
    api = "https" if settings.api.tls_cert_file else "http"
    console = "https" if settings.console.tls_cert_file else "http"
    return (
        f"curl -s {api}://{host}:{settings.api.port}/v1/images/generations -H 'Content-Type: application/json' "
        + ("--cert <client.pem> --key <client-key.pem> " if settings.api.tls_client_ca_file else "")
        + ("-H 'Authorization: Bearer <your zguard API key>' " if settings.api_auth.enabled else "")
        + f'-d \'{{"prompt": "a lighthouse at dawn", "size": "256x256"}}\'  '
        f"(console: {console}://{settings.console.host}:{settings.console.port}/)"
    )
