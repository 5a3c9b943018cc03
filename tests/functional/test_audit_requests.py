"""Every request either listener answers is one committed audit event; generations add an
`accepted` event before GPU work; a failing audit store refuses the request (503)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.common.audit import audit_trail, sqlite_url
from tests.common.engines import GatedEngine
from tests.common.factories import api_client, build_test_runtime, console_client, make_settings, ready_runtime
from zguard.audit.prompts import PromptCapture, load_x25519_private, load_x25519_public, open_sealed, write_keypair
from zguard.audit.trail import AuditTrail
from zguard.audit.verify import verify_store
from zguard.engine.pipeline import DiffusersEngine
from zguard.serve.wiring import Runtime, build_auth

PROMPT = "zebra-striped lighthouse 斑马灯塔-canary-7f3a"
GENERATE = {"prompt": PROMPT, "size": "64x64", "num_inference_steps": 2, "seed": 7}
HMAC_KEY = b"k" * 32
pytestmark = pytest.mark.anyio


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[AuditTrail]:
    with audit_trail(sqlite_url(tmp_path), tmp_path / "keys") as t:
        yield t


def database_bytes(directory: Path) -> bytes:
    """The SQLite file and its WAL and shared-memory files, raw."""
    return b"".join(p.read_bytes() for p in directory.glob("zguard.db*"))


def _bodies(trail: AuditTrail) -> list[dict[str, Any]]:
    return [json.loads(e.body) for e in trail.store.iter_events()]


def _runtime(
    tmp_path: Path, engine: Any, trail: AuditTrail, capture: PromptCapture | None = None, **sections: Any
) -> Runtime:
    settings = make_settings(tmp_path / "state", generation={"min_side": 16}, **sections)
    return ready_runtime_with(settings, engine, trail, capture or PromptCapture("hmac", hmac_key=HMAC_KEY))


def ready_runtime_with(settings: Any, engine: Any, trail: AuditTrail, capture: PromptCapture) -> Runtime:
    from zguard.services.readiness import ModelState

    runtime = build_test_runtime(settings, engine, audit=trail, prompts=capture)
    runtime.services.readiness.set(ModelState.READY)
    return runtime


async def test_generation_records_accepted_then_completed_with_its_metadata(
    tmp_path: Path, demo_engine: DiffusersEngine, trail: AuditTrail
) -> None:
    runtime = _runtime(tmp_path, demo_engine, trail)
    try:
        async with api_client(runtime_settings(runtime, tmp_path), runtime) as api:
            resp = await api.post("/v1/images/generations", json=GENERATE)
        assert resp.status_code == 200, resp.text
    finally:
        runtime.worker.stop(timeout=10)
    request_id = resp.headers["x-request-id"]
    events = [e for e in _bodies(trail) if e["request_id"] == request_id]
    assert [e["type"] for e in events] == ["generation.accepted", "generation.completed"]
    accepted, completed = events
    assert accepted["seq"] < completed["seq"]
    assert completed["outcome"] == "done"
    assert completed["http"] == {"method": "POST", "path": "/v1/images/generations", "status": 200}
    assert completed["generation"] == {"size": "64x64", "steps": 2, "seed": 7, "n": 1, "output_format": "png"}
    assert completed["model"] == "z-image-turbo"
    assert completed["principal"] == "local"
    assert completed["latency_ms"] > 0
    expected = hmac.new(HMAC_KEY, PROMPT.encode(), hashlib.sha256).hexdigest()
    assert completed["prompt"] == {"capture": "hmac", "prompt_len": len(PROMPT), "prompt_hmac": expected}
    delivered = base64.b64decode(resp.json()["data"][0]["b64_json"])
    [image] = completed["images"]
    assert re.fullmatch(r"[0-9a-f]{16}", image.pop("watermark_id"))
    assert image == {"sha256": hashlib.sha256(delivered).hexdigest(), "bytes": len(delivered)}
    assert verify_store(trail.store, None).ok


def runtime_settings(runtime: Runtime, tmp_path: Path) -> Any:
    return make_settings(tmp_path / "state", generation={"min_side": 16})


@pytest.mark.parametrize("mode", ["hmac", "none"])
async def test_prompt_never_reaches_the_database_file(
    tmp_path: Path, demo_engine: DiffusersEngine, trail: AuditTrail, mode: str
) -> None:
    capture = PromptCapture("hmac", hmac_key=HMAC_KEY) if mode == "hmac" else PromptCapture("none")
    runtime = _runtime(tmp_path, demo_engine, trail, capture)
    try:
        async with api_client(runtime_settings(runtime, tmp_path), runtime) as api:
            for _ in range(2):
                assert (await api.post("/v1/images/generations", json=GENERATE)).status_code == 200
    finally:
        runtime.worker.stop(timeout=10)
    raw = database_bytes(tmp_path)
    assert b"generation.completed" in raw  # the events are there...
    for needle in (PROMPT, "zebra-striped", "canary-7f3a", "斑马灯塔"):
        for encoding in ("utf-8", "utf-16-le", "utf-16-be"):
            assert needle.encode(encoding) not in raw, f"{needle!r} ({encoding}) found in the database"
    assert json.dumps(PROMPT).encode() not in raw  # nor JSON-escaped


async def test_encrypted_capture_opens_only_with_the_auditors_key(
    tmp_path: Path, demo_engine: DiffusersEngine, trail: AuditTrail
) -> None:
    private, public = write_keypair(tmp_path / "auditor")
    runtime = _runtime(tmp_path, demo_engine, trail, PromptCapture("encrypted", recipient=load_x25519_public(public)))
    try:
        async with api_client(runtime_settings(runtime, tmp_path), runtime) as api:
            assert (await api.post("/v1/images/generations", json=GENERATE)).status_code == 200
    finally:
        runtime.worker.stop(timeout=10)
    completed = next(e for e in _bodies(trail) if e["type"] == "generation.completed")
    assert open_sealed(completed["prompt"]["prompt_sealed"], load_x25519_private(private)) == PROMPT
    raw = database_bytes(tmp_path)
    assert PROMPT.encode() not in raw


async def test_every_request_is_one_event_refusals_included(tmp_path: Path, trail: AuditTrail) -> None:
    settings = make_settings(
        tmp_path / "state",
        api={"allow": ["127.0.0.0/8"]},
        api_auth={"enabled": True},
        generation={"min_side": 16},
    )
    runtime = ready_runtime_with(settings, GatedEngine(), trail, PromptCapture("none"))
    runtime.services.readiness.set(runtime.services.readiness.state)
    try:
        async with (
            api_client(settings, runtime) as api,
            api_client(settings, runtime, peer=("203.0.113.9", 4000)) as outsider,
            console_client(settings, runtime) as console,
        ):
            statuses = [
                (await api.get("/healthz")).status_code,
                (await api.get("/nowhere")).status_code,
                (await api.get("/v1/models")).status_code,
                (await api.get("/v1/models", headers={"Authorization": "Bearer zg_nonsense"})).status_code,
                (await outsider.get("/healthz")).status_code,
                (await console.get("/healthz")).status_code,
            ]
    finally:
        runtime.worker.stop(timeout=10)
    assert statuses == [200, 401, 401, 401, 403, 200]  # a stranger's 404 is a 401: routes stay unmapped
    events = [e for e in _bodies(trail) if e["type"] == "http.request"]
    assert len(events) == len(statuses)  # one each, no more
    summary = [(e["listener"], e["http"]["path"], e["outcome"], e["code"]) for e in events]
    assert summary == [
        ("api", "/healthz", "allowed", None),
        ("api", "/nowhere", "denied", "missing_credentials"),
        ("api", "/v1/models", "denied", "missing_credentials"),
        ("api", "/v1/models", "denied", "invalid_api_key"),
        ("api", "/healthz", "denied", "ip_not_allowed"),
        ("console", "/healthz", "allowed", None),
    ]
    assert events[4]["client"] == "203.0.113.9"
    assert "zg_nonsense" not in json.dumps(events)


async def test_unwritable_audit_store_refuses_with_503_and_runs_nothing(tmp_path: Path, trail: AuditTrail) -> None:
    engine = GatedEngine()
    runtime = _runtime(tmp_path, engine, trail)
    with trail.store.engine.begin() as conn:
        conn.execute(text("DROP TABLE audit_events"))
    try:
        async with api_client(runtime_settings(runtime, tmp_path), runtime) as api:
            resp = await api.post("/v1/images/generations", json=GENERATE)
            health = await api.get("/healthz")
    finally:
        runtime.worker.stop(timeout=10)
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "audit_unavailable"
    assert resp.headers["retry-after"]
    assert health.status_code == 503  # nothing is answered unrecorded
    assert engine.started == []


async def test_auditors_read_the_trail_over_the_api_with_cursor_pages(tmp_path: Path, trail: AuditTrail) -> None:
    from tests.functional.test_auth import bearer  # the suite's helpers
    from zguard.security.tokens import new_token, token_digest
    from zguard.store.principals import PrincipalStore

    settings = make_settings(tmp_path / "state", api_auth={"enabled": True}, generation={"min_side": 16})
    store = PrincipalStore(trail.store.engine)
    key = b"t" * 32
    tokens = {}
    for name, role in (("auditor1", "auditor"), ("gen1", "generator")):
        store.create_principal(name, "service", roles=[role])
        token = new_token()
        store.add_token(name, token_hash=token_digest(token.plaintext, key), prefix=token.display_prefix)
        tokens[name] = token.plaintext
    runtime = ready_runtime(settings, GatedEngine(), build_auth(settings, store, key, audit=trail))
    try:
        async with api_client(settings, runtime) as api:
            for _ in range(5):
                await api.get("/healthz")
            denied = await api.get("/v1/audit/events", headers=bearer(tokens["gen1"]))
            first = await api.get("/v1/audit/events?limit=3&type=http.request", headers=bearer(tokens["auditor1"]))
            cursor = first.json()["next_after"]
            second = await api.get(
                f"/v1/audit/events?limit=3&type=http.request&after={cursor}", headers=bearer(tokens["auditor1"])
            )
            bad = await api.get("/v1/audit/events?since=yesterday", headers=bearer(tokens["auditor1"]))
    finally:
        runtime.worker.stop(timeout=10)
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "permission_denied"
    assert first.status_code == 200, first.text
    page1, page2 = first.json()["data"], second.json()["data"]
    assert len(page1) == 3
    assert page2
    assert page1[-1]["seq"] < page2[0]["seq"]
    assert all(e["type"] == "http.request" and len(e["hash"]) == 64 for e in page1 + page2)
    assert bad.status_code == 400
    # the auditor's reads are themselves in the trail
    assert any(e["principal"] == "auditor1" and e["http"]["path"] == "/v1/audit/events" for e in _bodies(trail))


async def test_admins_see_the_audit_head_and_forwarding_state(tmp_path: Path, trail: AuditTrail) -> None:
    from zguard.audit.setup import AuditHealth

    runtime = _runtime(tmp_path, GatedEngine(), trail)
    runtime.services.audit_health.trail = trail
    try:
        async with console_client(runtime_settings(runtime, tmp_path), runtime) as console:
            await console.get("/healthz")
            resp = await console.get("/readyz/detail")
    finally:
        runtime.worker.stop(timeout=10)
    assert resp.status_code == 200, resp.text
    audit = resp.json()["audit"]
    assert audit["head_seq"] >= 1
    assert audit["write_failures"] == 0
    assert audit["forwarding"] == {"transport": "off"}
    assert AuditHealth().snapshot() == {"store": "none"}
