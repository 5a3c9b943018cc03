"""Factories for settings, runtimes and clients."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path
from typing import Any

import httpx

from zguard.app.api import create_api_app
from zguard.app.console import create_console_app
from zguard.audit import AuditSink
from zguard.audit.memory import MemoryAuditSink
from zguard.audit.prompts import PromptCapture
from zguard.config import Settings
from zguard.engine import ImageEngine
from zguard.provenance.marking import ProvenanceMarker
from zguard.security.keys import KEY_BYTES
from zguard.serve.wiring import Runtime, build_auth, build_runtime
from zguard.services.auth import AuthService
from zguard.services.ratelimit import RateLimitService
from zguard.services.readiness import ModelState
from zguard.store.principals import PrincipalStore


def make_settings(state_dir: Path, **sections: dict[str, Any] | Any) -> Settings:
    """Settings with `state_dir` and section overrides, e.g. generation={"max_queue": 0}.

    Authentication is off (the loopback-only local mode) unless `api_auth` is given: tests of
    other features act as the local generator; tests of access control pass `api_auth`.
    """
    data: dict[str, Any] = {
        "state_dir": str(state_dir),
        "api_auth": {"enabled": False},
        "integrity": {"allow_root": True},  # CI runs as root; test_storage shows the refusal
    }
    data.update(sections)
    return Settings.model_validate(data)


def build_test_auth(
    settings: Settings,
    store: PrincipalStore | None = None,
    token_key: bytes | None = None,
    audit: AuditSink | None = None,
) -> AuthService:
    """`build_auth` with test defaults: no store, a throwaway token key, an in-memory sink."""
    return build_auth(settings, store, token_key or secrets.token_bytes(KEY_BYTES), audit or MemoryAuditSink())


def build_test_runtime(
    settings: Settings,
    engine: ImageEngine,
    auth: AuthService | None = None,
    rate_limits: RateLimitService | None = None,
    *,
    audit: AuditSink | None = None,
    prompts: PromptCapture | None = None,
    provenance: ProvenanceMarker | None = None,
) -> Runtime:
    """`build_runtime` with the conveniences production wiring must not have: one in-memory sink
    (the given services' when they have one), HMAC prompt fingerprints and provenance marks under
    throwaway keys, and the configured users only (no store)."""
    if audit is None:
        given = auth or rate_limits
        audit = given.audit if given is not None else MemoryAuditSink()
    return build_runtime(
        settings,
        engine,
        auth=auth or build_test_auth(settings, audit=audit),
        audit=audit,
        prompts=prompts or PromptCapture("hmac", hmac_key=secrets.token_bytes(KEY_BYTES)),
        provenance=provenance or ProvenanceMarker.ephemeral(settings.provenance),
        rate_limits=rate_limits,
    )


def ready_runtime(
    settings: Settings, engine: ImageEngine, auth: AuthService | None = None, audit: AuditSink | None = None
) -> Runtime:
    runtime = build_test_runtime(settings, engine, auth, audit=audit)
    runtime.services.readiness.set(ModelState.READY)
    return runtime


LOOPBACK_PEER = ("127.0.0.1", 50000)


def api_client(settings: Settings, runtime: Runtime, peer: tuple[str, int] = LOOPBACK_PEER) -> httpx.AsyncClient:
    """An in-process client of the API app; `peer` is the TCP peer address the app sees."""
    app = create_api_app(settings, runtime.services)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=peer), base_url="http://zguard.test")


async def post_generation(settings: Settings, runtime: Runtime, request: dict[str, Any]) -> httpx.Response:
    """One `POST /v1/images/generations` through the API app, then the runtime's worker stopped."""
    try:
        async with api_client(settings, runtime) as api:
            return await api.post("/v1/images/generations", json=request)
    finally:
        runtime.worker.stop(timeout=10)


def console_client(settings: Settings, runtime: Runtime, peer: tuple[str, int] = LOOPBACK_PEER) -> httpx.AsyncClient:
    """An in-process client of the console app; `peer` is the TCP peer address the app sees."""
    app = create_console_app(settings, runtime.services)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=peer), base_url="http://console.test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
