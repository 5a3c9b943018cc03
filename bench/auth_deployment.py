"""The deployment under test of bench_auth.py: settings, state database, principals and tokens, the
audit trail, and the services and API app as ``zguard serve`` wires them (see bench_auth.py's
docstring for the method)."""

from __future__ import annotations

import base64
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from zguard.app.api import create_api_app
from zguard.audit import AuditSink
from zguard.audit.setup import open_audit_store, prompt_capture
from zguard.audit.trail import AuditTrail
from zguard.audit.verify import verify_store
from zguard.config import Settings
from zguard.engine import GenerationJob, ModelInfo
from zguard.provenance.marking import ProvenanceMarker
from zguard.security.keys import KEY_BYTES
from zguard.security.tokens import new_token, token_digest
from zguard.serve.wiring import build_auth, build_runtime
from zguard.services.auth import AuthService
from zguard.services.readiness import ModelState
from zguard.store import migrate
from zguard.store.database import create_store_engine
from zguard.store.principals import PrincipalStore

USER, PASSWORD = "designer01", "correct horse battery staple"
HAS_RATE_LIMITS = (
    importlib.util.find_spec("zguard.services.ratelimit") is not None and "rate_limits" in Settings.model_fields
)
GENEROUS_RATE = "1000000/day"  # counted on every request, never exhausted during the run
LIMITED = "limited"  # a principal allowed one request a day: every later one is a 429


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class NullEngine:
    """No model: nothing in this benchmark reaches generation."""

    info = ModelInfo(id="z-image-turbo", demo=True, device="cpu", dtype="float32")

    def load(self) -> None:
        pass

    def generate(self, job: GenerationJob, should_stop: Callable[[], bool]) -> list[Any]:
        raise RuntimeError("the auth benchmark never generates")


@dataclass
class Deployment:
    settings: Settings
    store: PrincipalStore
    auth: AuthService
    rate_limits: Any  # RateLimitService, when it exists
    tokens: dict[str, str]
    password_hash: str
    key: bytes
    audit: AuditSink


def deploy(work_dir: Path, password_hash: str) -> Deployment:
    data: dict[str, Any] = {
        "state_dir": str(work_dir / "state"),
        "api_auth": {"enabled": True, "users": [{"username": USER, "password": password_hash}]},
        "trusted_proxies": ["127.0.0.1"],
    }
    if HAS_RATE_LIMITS:
        data["rate_limit"] = GENEROUS_RATE
        data["rate_limits"] = {"per_principal": {LIMITED: "1/day"}}
    settings = Settings.model_validate(data)
    engine = create_store_engine(URL.create("sqlite", database=str(work_dir / "state" / "zguard.db")))
    migrate.upgrade(engine)
    store = PrincipalStore(engine)
    trail = AuditTrail(open_audit_store(settings, engine))  # as `zguard serve` opens it
    key = os.urandom(KEY_BYTES)
    tokens = {}
    for name, roles in (("bench-service", ["generator"]), ("watcher", ["viewer"]), (LIMITED, ["viewer"])):
        store.create_principal(name, "service", roles=roles)
        token = new_token()
        store.add_token(name, token_hash=token_digest(token.plaintext, key), prefix=token.display_prefix)
        tokens[name] = token.plaintext
    auth = build_auth(settings, store, key, audit=trail)
    rate_limits = None
    if HAS_RATE_LIMITS:
        from zguard.services.ratelimit import RateLimitService

        rate_limits = RateLimitService.from_settings(settings, trail)
    return Deployment(settings, store, auth, rate_limits, tokens, password_hash, key, trail)


def audit_summary(trail: AuditTrail) -> dict[str, Any]:
    """Close the trail (final checkpoint) and say what it holds: every request of the run is in it."""
    trail.close()
    report = verify_store(trail.store, trail.store.signer.public_key if trail.store.signer else None)
    return {
        "sink": "AuditTrail over open_audit_store (SQLite file in the temporary state dir, WAL, "
        "synchronous=FULL, group commit), as zguard serve",
        "events_committed": trail.store.count(),
        "write_failures": trail.failures,
        "chain_verifies": report.ok,
    }


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


class DiscardAuditSink:
    def emit(self, event: Any) -> None:
        pass

    async def record(self, event: Any) -> None:
        pass


def without_audit(d: Deployment) -> Deployment:
    """The same deployment with audit events discarded: what the access checks cost by themselves."""
    sink = DiscardAuditSink()
    auth = build_auth(d.settings, d.store, d.key, audit=sink)
    rate_limits = None
    if d.rate_limits is not None:
        from zguard.services.ratelimit import RateLimitService

        rate_limits = RateLimitService.from_settings(d.settings, sink)
    return Deployment(d.settings, d.store, auth, rate_limits, d.tokens, d.password_hash, d.key, sink)


def api_app(d: Deployment, rate_limits: Any) -> tuple[Any, Any]:
    """The API app over `d`'s services and the durable trail, as `zguard serve` wires them; and its runtime."""
    runtime = build_runtime(
        d.settings,
        NullEngine(),
        auth=d.auth,
        audit=d.audit,
        prompts=prompt_capture(d.settings),
        provenance=ProvenanceMarker.ephemeral(d.settings.provenance),  # no image is made: the keys do not matter
        rate_limits=rate_limits,
    )
    runtime.services.readiness.set(ModelState.READY)
    return create_api_app(d.settings, runtime.services), runtime
