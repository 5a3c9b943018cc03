"""`zguard serve`: one process, one engine, two listeners.

Start-up order: validate settings and refuse unsafe ones, bind both sockets (so a port clash is
reported before any model work), start serving (`/healthz` answers, `/readyz` says loading),
load the model and warm it up in the worker thread, then report ready. SIGTERM/SIGINT stop
both listeners from accepting, let in-flight requests finish within the grace period, and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy.exc import SQLAlchemyError

from zguard.app.api import create_api_app
from zguard.app.console import create_console_app
from zguard.app.context import Services
from zguard.audit import AuditEvent, AuditSink, DetailValue, MemoryAuditSink, Outcome
from zguard.audit.forwarder import Forwarder
from zguard.audit.prompts import PromptCapture
from zguard.audit.retention import RetentionJob
from zguard.audit.setup import open_audit_store, prompt_capture, start_forwarder
from zguard.audit.trail import AuditTrail
from zguard.config import ENV_PREFIX, ListenerSettings, Settings
from zguard.engine import GenerationJob, ImageEngine
from zguard.engine.admission import AdmissionQueue, WorkerThread
from zguard.errors import ConfigError
from zguard.integrity.manifest import ManifestError
from zguard.pidfile import remove_pid_file, write_pid_file
from zguard.policy.holder import PolicyHolder, ReloadOnSignal
from zguard.provenance.marking import ProvenanceMarker
from zguard.security.keys import KEY_BYTES
from zguard.security.tokens import new_token, token_digest
from zguard.services.admin import load_token_key, token_key_path
from zguard.services.auth import AuthService
from zguard.services.images import ImageService
from zguard.services.ratelimit import RateLimitService
from zguard.services.readiness import ModelState, Readiness
from zguard.store import migrate
from zguard.store.database import create_store_engine, database_url
from zguard.store.errors import SchemaNotCurrent
from zguard.store.principals import PrincipalStore

log = logging.getLogger("zguard.server")
DEMO_WARNING = (
    "SERVING THE DEMO MODEL: random weights, every image is noise. "
    "Set model.path (or ZGUARD_MODEL__PATH) to the Z-Image-Turbo directory to serve real images."
)


class _Listener(uvicorn.Server):
    """A uvicorn server that leaves signal handling to `serve()` (two servers, one process)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listener_config(app: Any, grace_s: float, tls: ssl.SSLContext | None = None) -> uvicorn.Config:
    """How zguard runs uvicorn for each listener (also used by tests and benchmarks); HTTPS with `tls`."""
    return uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,  # zguard's logging setup applies
        access_log=False,  # requests are recorded by zguard itself, without prompts
        server_header=False,
        # zguard reads X-Forwarded-For itself, from `trusted_proxies` only (app/netacl.py); uvicorn's
        # own handling would trust any loopback peer and replace the TCP peer address before we see it.
        proxy_headers=False,
        timeout_graceful_shutdown=math.ceil(grace_s),
        timeout_keep_alive=5,
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


def prepare_state_dir(state_dir: Path) -> Path:
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return state_dir


def resolve_model_dir(settings: Settings) -> tuple[Path, bool]:
    """(model directory, is demo). Cheap: the demo model itself is built by the engine's load()."""
    from zguard.engine.demo import is_demo_model

    if settings.model.path is not None:
        path = settings.model.path
        if not (path / "model_index.json").is_file():
            raise ConfigError(
                [f"model.path: {path} has no model_index.json; point it at a diffusers-format Z-Image directory"]
            )
        return path, is_demo_model(path)
    return prepare_state_dir(settings.state_dir) / "demo-model", True


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
    sock.listen(2048)
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


@dataclass
class Runtime:
    """What `serve` wires together; tests build one around their own engine."""

    services: Services
    admission: AdmissionQueue
    worker: WorkerThread
    policy: PolicyHolder | None = None


def open_store(settings: Settings) -> PrincipalStore:
    """The state store, at the schema this build needs.

    The embedded default (SQLite in `state_dir`, no `database.url`) is created and migrated on
    first start, so `make serve` needs no extra step. A configured database is never changed by
    `serve`: schema changes are an operator's decision (`zguard init` / `zguard db upgrade`).
    """
    embedded = settings.database.url is None
    if embedded:
        prepare_state_dir(settings.state_dir)
    engine = create_store_engine(database_url(settings))
    try:
        if embedded and migrate.current_revision(engine) is None:
            log.info("creating the state database in %s", settings.state_dir)
            migrate.upgrade(engine)
        migrate.check_schema_current(engine)
    except SchemaNotCurrent as exc:
        raise ConfigError([f"database: {exc.message}"]) from None
    except SQLAlchemyError as exc:
        raise ConfigError(
            [f"database.url: cannot open the state database ({type(exc).__name__}); check the URL and that it is up"]
        ) from None
    return PrincipalStore(engine)


DEMO_PRINCIPAL = "demo"


DEMO_TOKEN_FILE = "demo-token"  # noqa: S105 - a file name, not a secret


def issue_demo_token(settings: Settings, store: PrincipalStore, token_key: bytes) -> None:
    """On the demo model's first start: a `demo` service account (generator, viewer) and its token.

    On a terminal (`make serve`) the token is printed once with a ready-to-paste command. Anywhere
    else stdout may be a log (systemd sends it to the journal), so the token goes to the file
    `state_dir/demo-token` (mode 0600) instead and only that path is logged.
    """
    if store.get_principal(DEMO_PRINCIPAL) is not None or not settings.api_auth.enabled:
        return
    store.create_principal(DEMO_PRINCIPAL, "service", roles=["generator", "viewer"])
    issued = new_token()
    store.add_token(
        DEMO_PRINCIPAL, token_hash=token_digest(issued.plaintext, token_key), prefix=issued.display_prefix, label="demo"
    )
    if not sys.stdout.isatty():
        path = prepare_state_dir(settings.state_dir) / DEMO_TOKEN_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(issued.plaintext + "\n")
        log.warning("a demo API token (service account 'demo') was written to %s (mode 0600)", path)
        return
    host = settings.api.host if ":" not in settings.api.host else f"[{settings.api.host}]"
    print(
        "\n  A demo API token for the service account 'demo' (roles generator, viewer), shown only this once:\n\n"
        f"    {issued.plaintext}\n\n"
        f"  curl -s http://{host}:{settings.api.port}/v1/images/generations "
        f"-H 'Authorization: Bearer {issued.plaintext}' -H 'Content-Type: application/json' "
        """-d '{"prompt": "a lighthouse at dawn", "size": "256x256"}'\n""",
        flush=True,
    )


def build_auth(
    settings: Settings, store: PrincipalStore | None, token_key: bytes, audit: AuditSink | None = None
) -> AuthService:
    return AuthService(
        settings.api_auth, settings.role_registry(), store=store, token_key=token_key, audit=audit or MemoryAuditSink()
    )


def build_runtime(
    settings: Settings,
    engine: ImageEngine,
    auth: AuthService | None = None,
    rate_limits: RateLimitService | None = None,
    *,
    audit: AuditSink | None = None,
    prompts: PromptCapture | None = None,
    provenance: ProvenanceMarker | None = None,
) -> Runtime:
    """Wire the services around one audit sink (default: in memory, for tests; `serve` passes the
    durable trail). Without `prompts`: HMAC fingerprints under a throwaway key.
    Without `auth`: configured users only, under a throwaway token key.
    Without `rate_limits`: the configured limits. Without `provenance`: marks under throwaway keys."""
    if audit is None:  # one sink for everything: the given services', else a new one
        given = auth or rate_limits
        audit = given.audit if given is not None else MemoryAuditSink()
    worker = WorkerThread()
    admission = AdmissionQueue(settings.generation.max_queue, worker)
    readiness = Readiness()
    policy = PolicyHolder.from_settings(settings)  # a list that cannot be loaded stops the start (fail closed)
    provenance = provenance or ProvenanceMarker.ephemeral(settings.provenance)
    images = ImageService(settings.generation, engine, admission, readiness, policy=policy, provenance=provenance)
    services = Services(
        engine=engine,
        images=images,
        admission=admission,
        auth=auth or build_auth(settings, None, secrets.token_bytes(KEY_BYTES), audit),
        audit=audit,
        readiness=readiness,
        started_at=int(time.time()),
        rate_limits=rate_limits or RateLimitService.from_settings(settings, audit),
        prompts=prompts or PromptCapture("hmac", hmac_key=secrets.token_bytes(KEY_BYTES)),
        policy=policy,
    )
    return Runtime(services=services, admission=admission, worker=worker, policy=policy)


def lifecycle_event(
    kind: str,
    settings: Settings,
    *,
    outcome: Outcome = "done",
    model: str | None = None,
    manifest: str | None = None,
    detail: dict[str, DetailValue] | None = None,
) -> AuditEvent:
    return AuditEvent(
        type=kind,
        outcome=outcome,
        principal="zguard",
        model=model or settings.model.id,
        manifest=manifest,
        detail={
            "api": f"{settings.api.host}:{settings.api.port}",
            "console": f"{settings.console.host}:{settings.console.port}",
            **(detail or {}),
        },
    )


def serve_policy_reloads(loop: asyncio.AbstractEventLoop, runtime: Runtime, audit: AuditSink, state_dir: Path) -> Path:
    """SIGHUP re-reads the banned-term lists (zguard.policy.holder); the pid file it writes tells
    `zguard policy reload` where to send the signal. Returns the pid file's path."""
    if runtime.policy is not None:
        loop.add_signal_handler(signal.SIGHUP, ReloadOnSignal(runtime.policy, audit))
    return write_pid_file(state_dir)


EXIT_MODEL_FAILED = 3
DUPLICATE_SIGNAL_S = 1.0  # a second stop signal within this is the first one delivered twice


async def load_and_warm_up(runtime: Runtime, settings: Settings) -> bool:
    """Load and warm up the model; False (and state FAILED) when either fails."""
    services = runtime.services
    started = time.perf_counter()
    try:
        await asyncio.wrap_future(runtime.worker.submit(services.engine.load))
        if settings.model.warmup:
            services.readiness.set(ModelState.WARMING_UP)
            side = services.images.default_size
            job = GenerationJob(prompt="warm-up", negative_prompt=None, width=side[0], height=side[1], steps=1, seed=0)
            await runtime.admission.run(lambda stop: services.engine.generate(job, stop))
    except ManifestError as exc:  # fail closed: the files are not the pinned ones
        services.readiness.set(ModelState.FAILED)
        log.error("model load or warm-up failed: the model files were refused, nothing loaded: %s", exc.message)
        return False
    except Exception as exc:  # any failure here means the model cannot be served
        services.readiness.set(ModelState.FAILED)
        log.error(
            "model load or warm-up failed: %s: %s", type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG)
        )
        return False
    services.readiness.set(ModelState.READY)
    log.info("ready in %.2f s", time.perf_counter() - started)
    log.info("try: %s", example_call(settings))
    if services.engine.info.demo:
        log.warning(DEMO_WARNING)
    return True


class StopSignals:
    """SIGTERM/SIGINT for `serve`: the first stops accepting and lets in-flight work finish within
    the grace period; a second, a second or more later, closes connections at once. One arriving
    sooner is the first delivered twice (make, timeout and terminals signal the whole group)."""

    def __init__(
        self,
        servers: list[uvicorn.Server],
        readiness: Readiness,
        grace_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._servers = servers
        self._readiness = readiness
        self._grace_s = grace_s
        self._first: float | None = None
        self._deadline: float | None = None

    def __call__(self, signum: int) -> None:
        now = self._clock()
        name = signal.Signals(signum).name
        if self._first is None:
            self._first, self._deadline = now, now + self._grace_s
            log.info(
                "received %s: no new connections; finishing in-flight requests (grace %.0f s)", name, self._grace_s
            )
            self._readiness.set(ModelState.STOPPING)
            self.stop_serving()
        elif now >= self._first + DUPLICATE_SIGNAL_S:
            log.warning("received %s again: closing connections now", name)
            self._deadline = now
            for server in self._servers:
                server.force_exit = True

    def stop_serving(self) -> None:
        for server in self._servers:
            server.should_exit = True

    def remaining_s(self) -> float:
        """Grace left for in-flight work (all of it when no signal came)."""
        return self._grace_s if self._deadline is None else max(0.0, self._deadline - self._clock())


def configured_engine(settings: Settings) -> ImageEngine:
    """The Z-Image pipeline of `model.path`, or the demo model (built on first load)."""
    from zguard.engine.pipeline import DiffusersEngine

    model_dir, demo = resolve_model_dir(settings)
    if demo:
        log.warning(DEMO_WARNING)
    return DiffusersEngine(
        model_dir,
        model_id=settings.model.id,
        device=settings.model.device,
        demo=demo,
        build_demo=settings.model.path is None,
        manifest_required=settings.model.manifest_required,
        manifest_public_key=settings.model.manifest_public_key,
    )


def close_audit(settings: Settings, audit: AuditTrail, forwarder: Forwarder | None, exit_code: int) -> None:
    """Record the stop, write the closing checkpoint, and give syslog a moment to take the rest."""
    try:
        audit.emit(lifecycle_event("server.stopped", settings, detail={"exit_code": exit_code}))
    except Exception:
        log.exception("could not record the server's stop in the audit trail")
    audit.close()
    if forwarder is not None and not forwarder.close(timeout=settings.audit.syslog.timeout_s):
        log.warning("audit events not yet delivered to syslog are sent after the next start (the outbox keeps them)")


# --- host checks and zero persistence (zguard.integrity.storage, zguard.isolation) ----------


def check_host(settings: Settings) -> None:
    """Refuse to start on the host problems of zguard.integrity.storage (root, state directory,
    secret files, writable or unencrypted model storage); log its warnings."""
    from zguard.integrity.storage import Identity, startup_problems, tighten_state_dir

    who = Identity.current()
    prepare_state_dir(settings.state_dir)
    if tighten_state_dir(settings.state_dir, who):
        log.warning("state_dir %s was open to other accounts; set to mode 0700", settings.state_dir)
    model_dir, demo = resolve_model_dir(settings)
    refusals, warnings = startup_problems(settings, model_dir, demo=demo, who=who)
    for finding in warnings:
        log.warning("%s%s", finding.message, f"; fix: {finding.fix}" if finding.fix else "")
    if refusals:
        raise ConfigError(refusals)


async def serve(settings: Settings, engine: ImageEngine | None = None) -> int:
    """`_serve` inside the private runtime directory, with core dumps off (zguard.isolation)."""
    from zguard.isolation import ProcessIsolation, harden_process

    check_safe(settings)
    check_host(settings)
    harden_process()  # core dumps off, not dumpable: prompts and images in memory stay there
    isolation = ProcessIsolation(settings).start()  # before the engine imports torch
    try:
        return await _serve(settings, engine)
    finally:
        isolation.close()


# --- end of host checks and zero persistence ---------------------------------------------------


async def _serve(settings: Settings, engine: ImageEngine | None = None) -> int:
    tls = {"api": listener_tls(settings.api, "api"), "console": listener_tls(settings.console, "console")}
    sockets = {"api": bind(settings.api, "api"), "console": bind(settings.console, "console")}
    if engine is None:
        engine = configured_engine(settings)
    store = open_store(settings)
    token_key = load_token_key(token_key_path(settings))
    audit = AuditTrail(open_audit_store(settings, store.engine))
    runtime = build_runtime(
        settings,
        engine,
        build_auth(settings, store, token_key, audit),
        audit=audit,
        prompts=prompt_capture(settings),
        provenance=ProvenanceMarker.from_settings(settings),
    )
    audit.emit(lifecycle_event("server.started", settings, detail={"pid": os.getpid()}))
    forwarder = start_forwarder(settings, audit.store)
    runtime.services.audit_health.trail, runtime.services.audit_health.forwarder = audit, forwarder
    retention = RetentionJob(audit.store, settings, audit=audit)  # daily: archive, then delete, past retention
    retention.start()
    if engine.info.demo:
        issue_demo_token(settings, store, token_key)
    grace = settings.generation.shutdown_grace_s
    servers = {
        "api": _Listener(listener_config(create_api_app(settings, runtime.services), grace, tls["api"])),
        "console": _Listener(listener_config(create_console_app(settings, runtime.services), grace, tls["console"])),
    }
    signals = StopSignals(list(servers.values()), runtime.services.readiness, grace)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, signals, signum)
    pid_file = serve_policy_reloads(loop, runtime, audit, settings.state_dir)
    exit_code = 0

    async def start_model() -> None:
        nonlocal exit_code
        loaded = await load_and_warm_up(runtime, settings)
        info = runtime.services.engine.info
        await audit.record(
            lifecycle_event(
                "model.loaded" if loaded else "model.load_failed",
                settings,
                outcome="done" if loaded else "failed",
                model=info.id,
                manifest=info.manifest,
                detail={"demo": info.demo, "device": info.device, "dtype": info.dtype},
            )
        )
        if not loaded:
            # Fail closed: a process that cannot serve its model exits, so the supervisor sees it.
            exit_code = EXIT_MODEL_FAILED
            signals.stop_serving()

    warm = asyncio.create_task(start_model())
    for name, sock in sockets.items():
        host, port = sock.getsockname()[:2]
        scheme = "https" if tls[name] is not None else "http"
        log.info("%s listening on %s://%s:%d", name, scheme, host if ":" not in host else f"[{host}]", port)
    try:
        await asyncio.gather(*(server.serve(sockets=[sockets[name]]) for name, server in servers.items()))
    finally:
        warm.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        remove_pid_file(pid_file)
        if not runtime.worker.stop(timeout=signals.remaining_s()) and runtime.admission.running:
            log.warning("a generation was still running after the grace period; exiting anyway")
        for sock in sockets.values():
            sock.close()
        retention.stop()
        close_audit(settings, audit, forwarder, exit_code)
    log.info("stopped (pid %d, exit %d)", os.getpid(), exit_code)
    return exit_code
