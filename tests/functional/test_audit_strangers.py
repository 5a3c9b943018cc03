"""Strangers cannot bloat the audit trail (issue 14, observations 3 and 7), through the real apps.

A stranger chooses what reaches an event (a Basic username, a path) and how many refusals to
cause. Every stored event is bounded (`zguard.audit.bounds`), and past
`audit.unauthenticated_events_per_minute` refusals from one address are counted in one
`audit.suppressed` event a minute (`zguard.audit.strangers`) and answered without waiting for a
commit. A request whose handler raises is recorded as the 500 `internal_error` its client got.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.common.audit import audit_trail, sqlite_url
from tests.common.engines import GatedEngine
from tests.common.factories import api_client, build_test_runtime, make_settings, ready_runtime
from tests.common.polling import wait_until_async
from tests.functional.test_errors import GENERATIONS, FailingEngine, assert_error
from zguard.audit import AuditEvent
from zguard.audit.memory import MemoryAuditSink
from zguard.audit.prompts import PromptCapture
from zguard.audit.store import StoredEvent
from zguard.audit.strangers import SUMMARY_TYPE, StrangerRefusals
from zguard.audit.trail import AuditTrail
from zguard.security.tokens import new_token, token_digest
from zguard.serve.wiring import Runtime, build_auth
from zguard.services.readiness import ModelState
from zguard.store.principals import PrincipalStore

pytestmark = pytest.mark.anyio

AUTH_ERROR = "authentication_error"
HUGE_USER = "u" * 262_144  # 256 KiB: the red team's username
ATTACKER = ("127.0.0.77", 40000)  # inside the default allowlist (loopback): refused by authentication
MARKER = re.compile(r"…\[\+\d+ chars sha256:[0-9a-f]{8}\]$")


def basic(username: str) -> dict[str, str]:
    """Basic credentials of `username` with a wrong password."""
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:guess".encode()).decode()}


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[AuditTrail]:
    with audit_trail(sqlite_url(tmp_path), tmp_path / "keys") as t:
        yield t


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def stored_bytes(events: list[StoredEvent]) -> int:
    """What the events cost in the store: their bodies (what was hashed) and the other columns."""
    return sum(len(e.body.encode()) + len(e.hash) + len(e.prev_hash) + len(e.event_id) + 200 for e in events)


def auth_runtime(tmp_path: Path, trail: AuditTrail, **audit: Any) -> Runtime:
    settings = make_settings(tmp_path / "state", api_auth={"enabled": True}, audit=audit)
    return ready_runtime(settings, GatedEngine(), build_auth(settings, None, b"t" * 32, audit=trail), audit=trail)


def with_strangers(runtime: Runtime, strangers: StrangerRefusals) -> Runtime:
    runtime.services = dataclasses.replace(runtime.services, strangers=strangers)
    return runtime


async def test_a_256_kib_username_is_stored_bounded_also_after_the_lockout(tmp_path: Path, trail: AuditTrail) -> None:
    runtime = auth_runtime(tmp_path, trail, unauthenticated_events_per_minute=1_000)  # every refusal its own event
    settings = make_settings(tmp_path / "state", api_auth={"enabled": True})
    try:
        async with api_client(settings, runtime, peer=ATTACKER) as api:
            statuses = [(await api.get("/v1/models", headers=basic(HUGE_USER))).status_code for _ in range(8)]
    finally:
        runtime.worker.stop(timeout=10)
    assert set(statuses) == {401, 429}, statuses  # locked out after the failures per user and address
    events = [e for e in trail.store.iter_events() if e.type == "http.request"]
    assert len(events) == 8
    for event in events:
        body = json.loads(event.body)
        assert len(event.body.encode()) < 2_048, len(event.body)
        assert len(body["principal"]) <= 256
        assert MARKER.search(body["principal"])
        assert body["principal"].startswith("uuuu")
    assert {json.loads(e.body)["code"] for e in events} == {"invalid_api_key", "too_many_failed_logins"}


async def test_200_strangers_requests_add_kilobytes_not_50_mib(tmp_path: Path, trail: AuditTrail) -> None:
    clock = Clock(1_795_000_010.0)
    runtime = with_strangers(auth_runtime(tmp_path, trail), StrangerRefusals(60, 600, clock=clock))
    settings = make_settings(tmp_path / "state", api_auth={"enabled": True})
    before = trail.store.head_seq()
    try:
        async with api_client(settings, runtime, peer=ATTACKER) as api:
            for _ in range(200):
                resp = await api.get("/v1/models", headers=basic(HUGE_USER))
                assert resp.status_code in (401, 429)
            clock.now += 60  # the next minute: its first refusal brings the summary of this one
            await api.get("/v1/models", headers=basic(HUGE_USER))
            await wait_until_async(
                lambda: any(e.type == SUMMARY_TYPE for e in trail.store.iter_events(after=before)),
                timeout=10,
                what="the summary of the suppressed refusals",
            )
    finally:
        runtime.worker.stop(timeout=10)
    added = list(trail.store.iter_events(after=before))
    assert stored_bytes(added) < 128 * 1024, stored_bytes(added)  # was 200 × 256 KiB = 50 MiB
    requests = [e for e in added if e.type == "http.request"]
    assert len(requests) == 60 + 1
    (summary,) = [json.loads(e.body) for e in added if e.type == SUMMARY_TYPE]
    assert summary["client"] == ATTACKER[0]
    assert summary["detail"]["suppressed"] == 140
    assert summary["detail"]["recorded"] == 60


async def test_a_401_flood_past_n_a_minute_is_one_summary_with_the_count(tmp_path: Path, trail: AuditTrail) -> None:
    minute = 1_795_000_020.0  # a clock minute's start
    clock = Clock(minute + 59.8)  # the minute ends 0.2 s in: the middleware's timer writes the summary
    runtime = with_strangers(auth_runtime(tmp_path, trail), StrangerRefusals(5, 600, clock=clock))
    settings = make_settings(tmp_path / "state", api_auth={"enabled": True})
    bad = {"Authorization": "Bearer zg_nonsense"}
    try:
        async with api_client(settings, runtime, peer=ATTACKER) as api, api_client(settings, runtime) as office:
            for _ in range(25):
                assert_error(await api.get("/v1/models", headers=bad), 401, "invalid_api_key", error_type=AUTH_ERROR)
            assert_error(await api.get("/nowhere"), 401, "missing_credentials", error_type=AUTH_ERROR)
            assert (await office.get("/v1/models", headers=bad)).status_code == 401  # another address: its own 5
            clock.now = minute + 61
            await wait_until_async(
                lambda: any(e.type == SUMMARY_TYPE for e in trail.store.iter_events()),
                timeout=10,
                what="the timer to write the minute's summary",
            )
    finally:
        runtime.worker.stop(timeout=10)
    bodies = [json.loads(e.body) for e in trail.store.iter_events()]
    recorded = [b for b in bodies if b["type"] == "http.request" and b["client"] == ATTACKER[0]]
    assert len(recorded) == 5
    assert all(b["code"] == "invalid_api_key" for b in recorded)
    assert [b["client"] for b in bodies if b["type"] == "http.request"].count("127.0.0.1") == 1
    (summary,) = [b for b in bodies if b["type"] == SUMMARY_TYPE]
    assert (summary["listener"], summary["client"], summary["outcome"]) == ("api", ATTACKER[0], "denied")
    detail = summary["detail"]
    assert (detail["suppressed"], detail["recorded"], detail["limit"]) == (21, 5, 5)
    assert (detail["code.invalid_api_key"], detail["code.missing_credentials"]) == (20, 1)
    assert detail["window_start"].endswith(":00.000Z")
    assert runtime.services.metrics.render().count('status="401"') == 2  # /metrics still counts every one
    assert (
        'zguard_requests_total{listener="api",status="401",code="invalid_api_key"} 26'
        in runtime.services.metrics.render()
    )


class StallingSink(MemoryAuditSink):
    """Records until `stall` is set; then every commit waits (a store that hangs)."""

    def __init__(self) -> None:
        super().__init__()
        self.stall = asyncio.Event()
        self.release = asyncio.Event()

    async def record(self, event: AuditEvent) -> AuditEvent:
        if self.stall.is_set():
            await self.release.wait()
        return await super().record(event)


async def test_suppressed_refusals_are_answered_without_waiting_for_a_commit(tmp_path: Path) -> None:
    sink = StallingSink()
    settings = make_settings(tmp_path / "state", api_auth={"enabled": True})
    runtime = build_test_runtime(settings, GatedEngine(), build_auth(settings, None, b"t" * 32, audit=sink), audit=sink)
    runtime.services.readiness.set(ModelState.READY)
    with_strangers(runtime, StrangerRefusals(1, 600))
    bad = {"Authorization": "Bearer zg_nonsense"}
    try:
        async with api_client(settings, runtime, peer=ATTACKER) as api:
            assert (await api.get("/v1/models", headers=bad)).status_code == 401  # recorded
            sink.stall.set()
            for _ in range(20):  # counted: answered at once though the store hangs
                resp = await asyncio.wait_for(api.get("/v1/models", headers=bad), 5)
                assert resp.status_code == 401
            sink.release.set()
    finally:
        runtime.worker.stop(timeout=10)
    assert runtime.services.strangers.pending == 20


async def test_an_auditors_page_stays_small_after_a_flood(tmp_path: Path, trail: AuditTrail) -> None:
    settings = make_settings(
        tmp_path / "state",
        api_auth={"enabled": True, "failed_logins_per_address": "3/minute"},  # then 429s: fewer bcrypt runs
        audit={"unauthenticated_events_per_minute": 1_000},
    )
    store = PrincipalStore(trail.store.engine)
    store.create_principal("auditor1", "service", roles=["auditor"])
    token = new_token()
    key = b"t" * 32
    store.add_token("auditor1", token_hash=token_digest(token.plaintext, key), prefix=token.display_prefix)
    runtime = ready_runtime(settings, GatedEngine(), build_auth(settings, store, key, audit=trail), audit=trail)
    try:
        async with api_client(settings, runtime, peer=ATTACKER) as api, api_client(settings, runtime) as office:
            for i in range(50):
                await api.get("/v1/models", headers=basic(f"{i}{HUGE_USER}"))
            page = await office.get("/v1/audit/events?limit=50", headers={"Authorization": f"Bearer {token.plaintext}"})
    finally:
        runtime.worker.stop(timeout=10)
    assert page.status_code == 200, page.text[:500]
    assert len(page.json()["data"]) == 50
    assert len(page.content) < 50 * 2_048, len(page.content)  # was 50 × 256 KiB = 12.5 MiB


async def test_an_authenticated_callers_refusals_are_each_recorded(tmp_path: Path, trail: AuditTrail) -> None:
    settings = make_settings(tmp_path / "state", api_auth={"enabled": True})
    store = PrincipalStore(trail.store.engine)
    store.create_principal("gen1", "service", roles=["generator"])
    token = new_token()
    key = b"t" * 32
    store.add_token("gen1", token_hash=token_digest(token.plaintext, key), prefix=token.display_prefix)
    runtime = ready_runtime(settings, GatedEngine(), build_auth(settings, store, key, audit=trail), audit=trail)
    with_strangers(runtime, StrangerRefusals(1, 1))
    headers = {"Authorization": f"Bearer {token.plaintext}"}
    try:
        async with api_client(settings, runtime, peer=ATTACKER) as api:
            statuses = [(await api.get("/nowhere", headers=headers)).status_code for _ in range(3)]
            statuses += [(await api.get("/v1/audit/events", headers=headers)).status_code for _ in range(3)]
    finally:
        runtime.worker.stop(timeout=10)
    assert statuses == [404] * 3 + [403] * 3
    requests = [json.loads(e.body) for e in trail.store.iter_events() if e.type == "http.request"]
    assert [b["code"] for b in requests] == ["not_found"] * 3 + ["permission_denied"] * 3
    assert runtime.services.strangers.pending == 0


async def test_a_handler_that_raises_is_recorded_as_500_internal_error(tmp_path: Path, trail: AuditTrail) -> None:
    settings = make_settings(tmp_path / "state", generation={"min_side": 16})
    runtime = build_test_runtime(settings, FailingEngine(), audit=trail, prompts=PromptCapture("none"))
    runtime.services.readiness.set(ModelState.READY)
    try:
        async with api_client(settings, runtime) as api:
            resp = await api.post(GENERATIONS, json={"prompt": "x", "size": "64x64"})
    finally:
        runtime.worker.stop(timeout=10)
    assert_error(resp, 500, "internal_error")
    request_id = resp.headers["x-request-id"]
    (event,) = [
        json.loads(e.body)
        for e in trail.store.iter_events()
        if json.loads(e.body)["request_id"] == request_id and e.type != "generation.accepted"
    ]
    assert event["http"]["status"] == 500
    assert (event["outcome"], event["code"]) == ("failed", "internal_error")
    assert "secret internal detail" not in json.dumps(event)
    metrics = runtime.services.metrics.render()
    assert 'zguard_requests_total{listener="api",status="500",code="internal_error"} 1' in metrics
    assert 'status="none"' not in metrics


def test_counts_still_held_at_shutdown_are_written_before_the_stop(tmp_path: Path, trail: AuditTrail) -> None:
    from zguard.serve.lifecycle import close_audit

    strangers = StrangerRefusals(2, 600)
    for _ in range(7):
        strangers.admit("console", "127.0.0.77", "invalid_api_key")
    close_audit(make_settings(tmp_path / "state"), trail, None, 0, strangers.drain())
    types = [e.type for e in trail.store.iter_events()]
    assert types[-3:] == [SUMMARY_TYPE, "server.stopped", "audit.checkpoint"]
    summary = json.loads(next(e.body for e in trail.store.iter_events() if e.type == SUMMARY_TYPE))
    assert (summary["listener"], summary["detail"]["suppressed"]) == ("console", 5)
