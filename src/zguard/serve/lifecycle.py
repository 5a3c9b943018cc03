"""`zguard serve`: one process, one engine, two listeners.

Start-up order: validate settings and refuse unsafe ones, bind both sockets (so a port clash is
reported before any model work), start serving (`/healthz` answers, `/readyz` says loading),
load the model and warm it up in the worker thread, then report ready. SIGTERM/SIGINT stop
both listeners from accepting, let in-flight requests finish within the grace period, and exit 0.
What runs is built by `zguard.serve.wiring`; how each listener listens is `zguard.serve.listeners`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import uvicorn

from zguard import state_paths
from zguard.app.api import create_api_app
from zguard.app.console import create_console_app
from zguard.audit import AuditEvent, AuditSink, DetailValue, Outcome
from zguard.audit.forwarder import Forwarder
from zguard.audit.notifications.outbox import Notifier
from zguard.audit.notifications.setup import close_notifiers, serve_notifiers, start_notifiers
from zguard.audit.retention import RetentionJob
from zguard.audit.setup import AuditHealth, open_audit_store, prompt_capture, start_forwarder
from zguard.audit.trail import AuditTrail
from zguard.config import Settings
from zguard.engine import GenerationJob, ImageEngine
from zguard.errors import EXIT_UNAVAILABLE, ConfigError
from zguard.integrity.manifest import ManifestError
from zguard.provenance.marking import ProvenanceMarker
from zguard.serve.isolation import ProcessIsolation, SweepReport
from zguard.serve.listeners import Listener, bind, check_safe, example_call, listener_config, listener_tls
from zguard.serve.model_change import check_loaded, check_model_change
from zguard.serve.open_files import ensure_open_files
from zguard.serve.pidfile import StateLock
from zguard.serve.recertification import start_recertification
from zguard.serve.refusals import RefusalRecorder
from zguard.serve.transport import listener_guards
from zguard.serve.wiring import (
    DEMO_WARNING,
    Runtime,
    build_auth,
    build_runtime,
    configured_engine,
    issue_demo_token,
    open_store,
    prepare_state_dir,
    retire_demo_account,
)
from zguard.services.admin import identity_collisions, load_token_key
from zguard.services.auth import AuthService
from zguard.services.prompt_policy import PolicyHolder, ReloadOnSignal
from zguard.services.readiness import ModelState, Readiness
from zguard.services.replicas import ReplicaStatus

if TYPE_CHECKING:
    from zguard.ops.host_checks import SettingsFile
    from zguard.store.principals import PrincipalStore

log = logging.getLogger("zguard.serve.lifecycle")


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
            "replica": settings.serve.resolved_replica_id(settings.api.port),
            **(detail or {}),
        },
    )


def serve_policy_reloads(loop: asyncio.AbstractEventLoop, runtime: Runtime, audit: AuditSink) -> None:
    """SIGHUP re-reads the banned-term lists (zguard.services.prompt_policy); `zguard policy
    reload` finds the pid to signal in the state directory's lock file (zguard.serve.pidfile)."""
    if runtime.policy is not None:
        loop.add_signal_handler(signal.SIGHUP, ReloadOnSignal(runtime.policy, audit))


EXIT_MODEL_FAILED = EXIT_UNAVAILABLE  # the model did not load or warm up
DUPLICATE_SIGNAL_S = 1.0  # a second stop signal within this is the first one delivered twice


async def load_and_warm_up(runtime: Runtime, settings: Settings, approved_manifest: str | None = None) -> bool:
    """Load and warm up the model; False (and state FAILED) when either fails, or when the loaded
    manifest is not `approved_manifest` (model.change_approval_required, zguard.serve.model_change)."""
    services = runtime.services
    started = time.perf_counter()
    try:
        await asyncio.wrap_future(runtime.worker.submit(services.engine.load))
        check_loaded(approved_manifest, services.engine.info.manifest)
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
    # What start-up built (torch, the pipeline, both apps) lives as long as the process: out of the
    # cyclic collector's way, whose full passes over it stalled every request ~0.5 s while a
    # connection flood churned objects (bench/bench_edge_abuse.py).
    gc.collect()
    gc.freeze()
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


def start_outboxes(settings: Settings, audit: AuditTrail) -> tuple[Forwarder | None, list[Notifier]]:
    """What reads the trail after its durable cursors, started: the syslog forwarder and the
    approval notifiers (zguard.audit.notifications). The notifiers' secret files are read first,
    so a bad one refuses the start before either runs."""
    notifiers = serve_notifiers(settings, audit.store, audit)
    forwarder = start_forwarder(settings, audit.store)
    start_notifiers(notifiers)
    return forwarder, notifiers


def close_audit(
    settings: Settings,
    audit: AuditTrail,
    forwarder: Forwarder | None,
    exit_code: int,
    suppressed: Sequence[AuditEvent] = (),
    *,
    notifiers: Sequence[Notifier] = (),
) -> None:
    """Stop the notifiers (a failure to send is still recorded), record the counts of suppressed
    refusals not yet written (`StrangerRefusals.drain`) and the stop, write the closing
    checkpoint, and give syslog a moment to take the rest."""
    close_notifiers(notifiers)
    for event in suppressed:
        try:
            audit.emit(event)
        except Exception:
            log.exception("could not record suppressed refusals in the audit trail: %s", dict(event.detail))
    try:
        audit.emit(lifecycle_event("server.stopped", settings, detail={"exit_code": exit_code}))
    except Exception:
        log.exception("could not record the server's stop in the audit trail")
    audit.close()
    if forwarder is not None and not forwarder.close(timeout=settings.audit.syslog.timeout_s):
        log.warning("audit events not yet delivered to syslog are sent after the next start (the outbox keeps them)")


# --- host checks and zero persistence (zguard.ops.host_checks, zguard.serve.isolation) ----------


def check_host(settings: Settings, source: SettingsFile | None = None) -> None:
    """Refuse to start on the FAILs of zguard.ops.host_checks's list (the one `config check`,
    `doctor` and `scan` run: root, state directory, settings and key files, model files, encrypted
    storage), `source` being the settings file read; log its warnings."""
    from zguard.ops.host_checks import Host, refuse_unsafe_host, tighten_state_dir

    host = Host.current()
    prepare_state_dir(settings.state_dir)
    if tighten_state_dir(settings.state_dir, host.who):
        log.warning("state_dir %s was open to other accounts; set to mode 0700", settings.state_dir)
    for finding in refuse_unsafe_host(settings, host, source):
        log.warning("%s", finding.line())


async def serve(settings: Settings, engine: ImageEngine | None = None, source: SettingsFile | None = None) -> int:
    """`_serve` inside the private runtime directory, with core dumps off (zguard.serve.isolation)."""
    from zguard.serve.isolation import harden_process

    check_safe(settings)
    check_host(settings, source)
    ensure_open_files(settings)  # enough descriptors for the connection caps (zguard.serve.open_files)
    # Before anything in state_dir is touched: a second server must change nothing of the first's.
    lock = StateLock.acquire(settings.state_dir)
    try:
        harden_process()  # core dumps off, not dumpable: prompts and images in memory stay there
        isolation = ProcessIsolation(settings).start()  # before the engine imports torch
        try:
            return await _serve(settings, engine, isolation)
        finally:
            isolation.close()
    finally:
        lock.release()


# --- end of host checks and zero persistence ---------------------------------------------------


def check_principals(settings: Settings, store: PrincipalStore) -> None:
    """One namespace of principals: two that authenticate as one name (a settings-file user and
    a stored one, or two that differ only in case) defeat separation of duties; refuse to start."""
    configured = [user.username for user in settings.api_auth.users]
    if collisions := identity_collisions(configured, [p.name for p in store.list_principals()]):
        raise ConfigError(collisions)


def settle_demo_account(settings: Settings, store: PrincipalStore, token_key: bytes, audit: AuditSink) -> None:
    """The demo model zguard builds itself (no `model.path`) gets the `demo` account and its token
    on the first start; a real model disables that account. Decided by the settings, never by a
    marker file in the model directory."""
    if settings.model.path is None:
        issue_demo_token(settings, store, token_key)
    else:
        retire_demo_account(store, audit)


def listeners(
    settings: Settings, runtime: Runtime, tls: dict[str, ssl.SSLContext | None], audit: AuditSink, grace: float
) -> dict[str, Listener]:
    """Both listeners, each with its app and its transport guard (refusals before the app are
    audited, a bounded number per address)."""
    guards = listener_guards(settings, RefusalRecorder(audit))
    apps = {
        "api": create_api_app(settings, runtime.services),
        "console": create_console_app(settings, runtime.services),
    }
    return {name: Listener(listener_config(app, grace, tls[name], guards[name])) for name, app in apps.items()}


def stop_on_signals(loop: asyncio.AbstractEventLoop, signals: StopSignals) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, signals, signum)


def stop_work(runtime: Runtime, signals: StopSignals, sockets: dict[str, socket.socket]) -> None:
    """Let in-flight generations finish within what is left of the grace period; close the sockets."""
    if not runtime.worker.stop(timeout=signals.remaining_s()) and runtime.admission.running:
        log.warning("a generation was still running after the grace period; exiting anyway")
    for sock in sockets.values():
        sock.close()
    if isinstance(auth := runtime.services.auth, AuthService):
        auth.close()  # the directory's pooled connections


def log_listening(sockets: dict[str, socket.socket], tls: dict[str, ssl.SSLContext | None]) -> None:
    for name, sock in sockets.items():
        host, port = sock.getsockname()[:2]
        scheme = "https" if tls[name] is not None else "http"
        log.info("%s listening on %s://%s:%d", name, scheme, host if ":" not in host else f"[{host}]", port)


def sweep_event(settings: Settings, report: SweepReport) -> AuditEvent:
    """`runtime.swept`: what a sweep of the runtime directory removed (names hashed, never shown)."""
    detail: dict[str, DetailValue] = {
        "reason": report.reason,
        "removed": report.removed,
        "bytes": report.bytes,
        "files": " ".join(report.listed()),
    }
    return lifecycle_event("runtime.swept", settings, detail=detail)


class PeriodicJobs:
    """What runs on a timer beside the listeners, started here and stopped at shutdown: the audit
    retention (daily: archive, then delete, past retention) and the re-certification check
    (deadlines and the schedule, zguard.serve.recertification)."""

    def __init__(self, settings: Settings, audit: AuditTrail, runtime: Runtime) -> None:
        self.retention = RetentionJob(audit.store, settings, audit=audit)
        self.retention.start()
        governance = runtime.services.governance
        replica: dict[str, DetailValue] = {"replica": settings.serve.resolved_replica_id(settings.api.port)}
        self.recertification = start_recertification(
            None if governance is None else lambda: governance.campaigns.run_due(replica),  # which replica acted
            settings.approvals.recertification_check_interval_s,
        )

    def stop(self) -> None:
        self.retention.stop()
        if self.recertification is not None:
            self.recertification.stop()


async def _warm_identity(runtime: Runtime) -> None:
    """The IdP's discovery document read at start, not at the first sign-in (failures: logged, retried then)."""
    if runtime.services.oidc is not None:
        await runtime.services.oidc.warm()


async def run_listeners(
    servers: dict[str, Listener], sockets: dict[str, socket.socket], replica: ReplicaStatus | None
) -> None:
    """Serve until both listeners stop; meanwhile the lists' digest is published and compared
    with the other replicas' (with Redis counters, zguard.services.replicas)."""
    if replica is not None:
        replica.start()
    try:
        await asyncio.gather(*(server.serve(sockets=[sockets[name]]) for name, server in servers.items()))
    finally:
        if replica is not None:
            await replica.stop()


async def _serve(
    settings: Settings, engine: ImageEngine | None = None, isolation: ProcessIsolation | None = None
) -> int:
    tls = {"api": listener_tls(settings.api, "api"), "console": listener_tls(settings.console, "console")}
    sockets = {"api": bind(settings.api, "api"), "console": bind(settings.console, "console")}
    if engine is None:
        engine = configured_engine(settings)
    store = open_store(settings)
    check_principals(settings, store)
    token_key = load_token_key(state_paths.token_key_file(settings))
    audit = AuditTrail(open_audit_store(settings, store.engine))
    approved_manifest = check_model_change(settings, audit.store, audit)  # four eyes on model changes
    # What can refuse the start (a list, a key file) is read before `server.started` is recorded.
    policy = PolicyHolder.from_settings(settings)  # a list that cannot be loaded stops the start (fail closed)
    provenance = ProvenanceMarker.from_settings(settings)
    prompts = prompt_capture(settings)
    auth = build_auth(settings, store, token_key, audit)
    audit.emit(lifecycle_event("server.started", settings, detail={"pid": os.getpid()}))
    if isolation is not None:  # the start sweep's report, and every later one, into the trail
        isolation.attach(lambda report: audit.emit(sweep_event(settings, report)))
    forwarder, notifiers = start_outboxes(settings, audit)
    runtime = build_runtime(
        settings,
        engine,
        auth=auth,
        audit=audit,
        prompts=prompts,
        provenance=provenance,
        policy=policy,
        audit_health=AuditHealth(audit, forwarder, notifiers),
    )
    jobs = PeriodicJobs(settings, audit, runtime)  # audit retention, re-certification deadlines
    settle_demo_account(settings, store, token_key, audit)
    grace = settings.generation.shutdown_grace_s
    servers = listeners(settings, runtime, tls, audit, grace)
    signals = StopSignals(list(servers.values()), runtime.services.readiness, grace)
    loop = asyncio.get_running_loop()
    stop_on_signals(loop, signals)
    serve_policy_reloads(loop, runtime, audit)
    exit_code = 0

    async def start_model() -> None:
        nonlocal exit_code
        loaded = await load_and_warm_up(runtime, settings, approved_manifest)
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

    warm = asyncio.gather(start_model(), _warm_identity(runtime))
    log_listening(sockets, tls)
    try:
        await run_listeners(servers, sockets, runtime.services.replica)
    finally:
        warm.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # a second signal now ends us at once
            loop.remove_signal_handler(signum)
        stop_work(runtime, signals, sockets)
        jobs.stop()
        if isolation is not None:
            isolation.sweep("stop")  # while the trail is open, so what it removes is recorded
        close_audit(settings, audit, forwarder, exit_code, runtime.services.strangers.drain(), notifiers=notifiers)
    log.info("stopped (pid %d, exit %d)", os.getpid(), exit_code)
    return exit_code
