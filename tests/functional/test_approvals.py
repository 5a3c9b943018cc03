"""Issue 20, item 1 (and the CLI and JSON API of item 4): model-use approvals.

Through the real apps (console JSON API for requests and decisions, the image API for the
enforcement) on a real state database, SQLite and the local PostgreSQL: the four-eyes
walkthrough with a quorum of two, each refusal with its code and `approval.refused` event,
expiry, exhaustion, revocation, the grant headers, and concurrent approvals making one grant.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from tests.common.cli import ZguardCli
from tests.common.databases import BACKENDS
from tests.common.factories import make_settings
from tests.functional.test_auth import Deploy, Deployment, backend, database, deploy
from zguard.errors import AlreadyDecided, RequestDecided
from zguard.services.approvals import ApprovalService, Caller
from zguard.store.models import ApprovalGrant, ApprovalRequest

FIXTURES = (backend, database, deploy)  # used by name as fixtures
pytestmark = pytest.mark.anyio
backends = pytest.mark.parametrize("backend", BACKENDS, indirect=True)
API = "/console/api/approvals"
GENERATE = "/v1/images/generations"
SMALL = {"prompt": "a lighthouse at dusk", "size": "64x64", "n": 1}


class Team:
    """A deployment with a requester, two approvers and a plain generator, each with a token."""

    def __init__(self, d: Deployment) -> None:
        self.d = d
        store = d.store
        store.create_principal("rita", "user", roles=["generator", "approver"])  # may approve, never her own
        store.create_principal("alice", "user", roles=["approver"])
        store.create_principal("bob", "user", roles=["approver"])
        store.create_principal("gus", "user", roles=["generator"])
        self.tokens = {name: d.issue(name) for name in ("rita", "alice", "bob", "gus")}

    def auth(self, name: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.tokens[name]}"}

    def events(self, kind: str) -> list[Any]:
        return [e for e in self.d.audit.events if e.type == kind]

    def refusals(self) -> list[str | None]:
        return [e.code for e in self.events("approval.refused")]

    @property
    def service(self) -> ApprovalService:
        service = self.d.runtime.services.approvals
        assert service is not None
        return service


def team(deploy: Deploy, tmp_path: Path, **approvals: Any) -> Team:
    settings = make_settings(
        tmp_path / "state",
        api_auth={"enabled": True},
        generation={"min_side": 16},
        console={"totp_required_roles": []},
        approvals=approvals,
    )
    return Team(deploy(settings))


async def model_id(api: httpx.AsyncClient, t: Team) -> tuple[str, str | None]:
    card = (await api.get("/v1/models", headers=t.auth("gus"))).json()["data"][0]
    return card["id"], card["manifest"]


def ask(model: str, **overrides: Any) -> dict[str, Any]:
    body = {
        "model": model,
        "purpose": "marketing visuals for the Q1 campaign",
        "business_unit": "retail",
        "data_classification": "internal",
        "ticket": "CHG-1042",
        "quota_per_day": 2,
        "quota_total": 3,
        "validity_days": 30,
    }
    return {**body, **overrides}


def error_code(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    code: str = body["error"]["code"]
    return code


@backends
async def test_four_eyes_walkthrough_with_a_quorum_of_two(deploy: Deploy, tmp_path: Path) -> None:
    t = team(deploy, tmp_path, quorum=2)
    async with t.d.api() as api, t.d.console() as console:
        model, _digest = await model_id(api, t)
        resp = await console.post(API, json=ask(model), headers=t.auth("rita"))
        assert resp.status_code == 201, resp.text
        request = resp.json()
        assert (request["status"], request["quorum"], request["requester"]) == ("pending", 2, "rita")
        rid = request["id"]

        # The requester holds approvals:decide, and still may not decide on her own request.
        assert (
            error_code(await console.post(f"{API}/{rid}/approve", json={}, headers=t.auth("rita")), 403)
            == "self_approval"
        )
        # A generator without approvals:decide is refused before the service.
        assert (
            error_code(await console.post(f"{API}/{rid}/approve", json={}, headers=t.auth("gus")), 403)
            == "permission_denied"
        )

        first = await console.post(f"{API}/{rid}/approve", json={"comment": "fine"}, headers=t.auth("alice"))
        assert first.status_code == 200, first.text
        assert first.json()["grant"] is None
        assert first.json()["request"]["status"] == "pending"
        again = await console.post(f"{API}/{rid}/approve", json={}, headers=t.auth("alice"))
        assert error_code(again, 409) == "already_decided"

        second = await console.post(f"{API}/{rid}/approve", json={}, headers=t.auth("bob"))
        assert second.status_code == 200, second.text
        grant = second.json()["grant"]
        assert grant["status"] == "active"
        assert grant["principal"] == "rita"
        assert (grant["quota_per_day"], grant["quota_total"]) == (2, 3)
        assert [d["decider"] for d in second.json()["request"]["decisions"]] == ["alice", "bob"]

        late = await console.post(f"{API}/{rid}/reject", json={"comment": "too late"}, headers=t.auth("rita"))
        assert error_code(late, 403) == "self_approval"
        t.d.store.create_principal("carl", "user", roles=["approver"])
        carl = {"authorization": f"Bearer {t.d.issue('carl')}"}
        assert error_code(await console.post(f"{API}/{rid}/approve", json={}, headers=carl), 409) == "request_decided"

        mine = (await console.get(f"{API}/mine", headers=t.auth("rita"))).json()
        assert [g["id"] for g in mine["grants"]] == [grant["id"]]
        inbox = (await console.get(API, params={"status": "approved"}, headers=t.auth("alice"))).json()
        assert [r["id"] for r in inbox["data"]] == [rid]

    assert len(t.events("approval.requested")) == 1
    assert [e.principal for e in t.events("approval.decided")] == ["alice", "bob"]
    granted = t.events("approval.granted")
    assert len(granted) == 1
    assert granted[0].detail["approvers"] == "alice,bob"
    assert t.refusals() == ["self_approval", "already_decided", "self_approval", "request_decided"]


@backends
async def test_each_refusal_has_its_code_and_an_event(deploy: Deploy, tmp_path: Path) -> None:
    t = team(deploy, tmp_path, max_validity_days=30, max_images_per_day=10, max_images_total=100)
    async with t.d.api() as api, t.d.console() as console:
        model, _ = await model_id(api, t)
        post = console.post
        assert error_code(await post(API, json=ask("other-model"), headers=t.auth("rita")), 400) == "unknown_model"
        over = ask(model, validity_days=31)
        assert error_code(await post(API, json=over, headers=t.auth("rita")), 400) == "validity_over_maximum"
        over = ask(model, quota_per_day=11, quota_total=50)
        assert error_code(await post(API, json=over, headers=t.auth("rita")), 400) == "quota_over_maximum"
        over = ask(model, quota_per_day=5, quota_total=101)
        assert error_code(await post(API, json=over, headers=t.auth("rita")), 400) == "quota_over_maximum"
        # An approver without images:generate cannot ask.
        assert error_code(await post(API, json=ask(model), headers=t.auth("alice")), 403) == "permission_denied"

        rid = (await post(API, json=ask(model), headers=t.auth("rita"))).json()["id"]
        assert (
            error_code(await post(f"{API}/{rid}/reject", json={}, headers=t.auth("alice")), 400) == "comment_required"
        )
        blank = await post(f"{API}/{rid}/reject", json={"comment": "  "}, headers=t.auth("alice"))
        assert error_code(blank, 400) == "comment_required"
        assert (
            error_code(await post(f"{API}/9999/approve", json={}, headers=t.auth("alice")), 404) == "approval_not_found"
        )
        rejected = await post(f"{API}/{rid}/reject", json={"comment": "no business case"}, headers=t.auth("alice"))
        assert rejected.status_code == 200
        assert rejected.json()["request"]["status"] == "rejected"
        assert error_code(await post(f"{API}/{rid}/approve", json={}, headers=t.auth("bob")), 409) == "request_decided"
        unknown = await post(f"{API}/grants/9999/revoke", json={"reason": "x"}, headers=t.auth("alice"))
        assert error_code(unknown, 404) == "approval_not_found"
    assert t.refusals() == [
        "unknown_model",
        "validity_over_maximum",
        "quota_over_maximum",
        "quota_over_maximum",
        "comment_required",
        "comment_required",
        "approval_not_found",
        "request_decided",
        "approval_not_found",
    ]
    rejected_events = t.events("approval.rejected")
    assert len(rejected_events) == 1
    assert rejected_events[0].detail["comment"] == "no business case"
    assert not t.events("approval.granted")


@backends
async def test_enforcement_headers_quota_exhaustion_and_revocation(deploy: Deploy, tmp_path: Path) -> None:
    t = team(deploy, tmp_path, required=True)
    async with t.d.api() as api, t.d.console() as console:
        model, _ = await model_id(api, t)
        refused = await api.post(GENERATE, json=SMALL, headers=t.auth("rita"))
        assert error_code(refused, 403) == "approval_required"
        assert "zguard approvals request" in refused.json()["error"]["message"]
        assert "/console/api/approvals" in refused.json()["error"]["message"]

        rid = (await console.post(API, json=ask(model), headers=t.auth("rita"))).json()["id"]
        grant = (await console.post(f"{API}/{rid}/approve", json={}, headers=t.auth("alice"))).json()["grant"]

        one = await api.post(GENERATE, json=SMALL, headers=t.auth("rita"))
        assert one.status_code == 200, one.text
        assert one.headers["x-zguard-grant"] == str(grant["id"])
        assert (one.headers["x-zguard-grant-remaining-today"], one.headers["x-zguard-grant-remaining-total"]) == (
            "1",
            "2",
        )
        two = await api.post(GENERATE, json=SMALL, headers=t.auth("rita"))
        assert (two.headers["x-zguard-grant-remaining-today"], two.headers["x-zguard-grant-remaining-total"]) == (
            "0",
            "1",
        )
        today = await api.post(GENERATE, json=SMALL, headers=t.auth("rita"))
        assert error_code(today, 429) == "grant_quota_exceeded"
        assert 0 < int(today.headers["retry-after"]) <= 86_401
        # Somebody else's grant is not hers: gus has none.
        assert error_code(await api.post(GENERATE, json=SMALL, headers=t.auth("gus")), 403) == "approval_required"
        assert t.service.store.get_grant(grant["id"]).used_total == 2

        # Exhaustion: a grant of 2 in all, spent in one request of n=2; the next is refused.
        t.d.store.create_principal("gwen", "user", roles=["generator"])
        gwen = {"authorization": f"Bearer {t.d.issue('gwen')}"}
        small = ask(model, quota_per_day=2, quota_total=2)
        rid2 = (await console.post(API, json=small, headers=gwen)).json()["id"]
        grant2 = (await console.post(f"{API}/{rid2}/approve", json={}, headers=t.auth("bob"))).json()["grant"]
        over = await api.post(GENERATE, json={**SMALL, "n": 3}, headers=gwen)
        assert error_code(over, 403) == "grant_exhausted"
        assert (await api.post(GENERATE, json={**SMALL, "n": 2}, headers=gwen)).status_code == 200
        spent = await api.post(GENERATE, json=SMALL, headers=gwen)
        assert error_code(spent, 403) == "grant_exhausted"
        assert t.service.store.get_grant(grant2["id"]).status == "exhausted"
        assert [e.detail["grant"] for e in t.events("approval.exhausted")] == [grant2["id"]]

        # Revocation: needs its reason, ends the grant at once (the cache follows auth_version).
        no_reason = await console.post(
            f"{API}/grants/{grant['id']}/revoke", json={"reason": " "}, headers=t.auth("bob")
        )
        assert error_code(no_reason, 400) == "comment_required"
        revoked = await console.post(
            f"{API}/grants/{grant['id']}/revoke", json={"reason": "left the team"}, headers=t.auth("bob")
        )
        assert revoked.status_code == 200
        assert revoked.json()["status"] == "revoked"
        assert revoked.json()["revoked_by"] == "bob"
        assert error_code(await api.post(GENERATE, json=SMALL, headers=t.auth("rita")), 403) == "approval_required"
        twice = await console.post(
            f"{API}/grants/{grant['id']}/revoke", json={"reason": "again"}, headers=t.auth("bob")
        )
        assert error_code(twice, 409) == "grant_not_active"
    revocations = t.events("approval.revoked")
    assert len(revocations) == 1
    assert revocations[0].detail["reason"] == "left the team"
    generations = [e for e in t.d.audit.events if e.type.startswith("generation.") or e.code == "approval_required"]
    assert any(e.code == "approval_required" for e in generations)


@backends
async def test_requests_and_grants_expire_by_themselves(deploy: Deploy, tmp_path: Path) -> None:
    t = team(deploy, tmp_path, required=True)
    past = datetime.now(UTC) - timedelta(minutes=1)
    async with t.d.api() as api, t.d.console() as console:
        model, _ = await model_id(api, t)
        stale = (await console.post(API, json=ask(model), headers=t.auth("rita"))).json()["id"]
        with t.service.store.engine.begin() as conn:
            conn.execute(update(ApprovalRequest).where(ApprovalRequest.id == stale).values(expires_at=past))
        assert (
            error_code(await console.post(f"{API}/{stale}/approve", json={}, headers=t.auth("alice")), 409)
            == "request_expired"
        )
        listed = (await console.get(API, params={"status": "expired"}, headers=t.auth("alice"))).json()["data"]
        assert [r["id"] for r in listed] == [stale]

        rid = (await console.post(API, json=ask(model), headers=t.auth("rita"))).json()["id"]
        grant = (await console.post(f"{API}/{rid}/approve", json={}, headers=t.auth("alice"))).json()["grant"]
        with t.service.store.engine.begin() as conn:
            conn.execute(update(ApprovalGrant).where(ApprovalGrant.id == grant["id"]).values(expires_at=past))
        expired = await api.post(GENERATE, json=SMALL, headers=t.auth("rita"))
        assert error_code(expired, 403) == "approval_required"
        assert t.service.store.get_grant(grant["id"]).status == "expired"
    kinds = [
        e.detail.get("request") if "grant" not in e.detail else ("grant", e.detail["grant"])
        for e in t.events("approval.expired")
    ]
    assert kinds == [stale, ("grant", grant["id"])]
    assert t.refusals() == ["request_expired"]


@pytest.mark.parametrize("backend", [BACKENDS[1]], indirect=True)
@pytest.mark.parametrize("quorum", [1, 2])
def test_concurrent_approvals_make_exactly_one_grant(deploy: Deploy, tmp_path: Path, quorum: int) -> None:
    """Two approvers completing the quorum at the same instant, on PostgreSQL: one grant."""
    t = team(deploy, tmp_path, quorum=quorum)
    service = t.service
    model_key = service.served_key()
    rita = Caller("rita", frozenset({"generator", "approver"}))
    from zguard.services.approvals import RequestForm

    for _round in range(5):
        rid = service.request(rita, RequestForm(model_key, "purpose", "retail", "internal", 1, 1, 1)).id
        if quorum == 2:  # one approval in, the two racing for the second
            service.decide(Caller("bob", frozenset({"approver"})), rid, "approve")
            racers = ["alice", "carol"]
        else:
            racers = ["alice", "bob"]
        barrier = threading.Barrier(len(racers))
        results: list[object] = []

        def approve(
            name: str, rid: int = rid, barrier: threading.Barrier = barrier, results: list[object] = results
        ) -> None:
            barrier.wait()
            try:
                results.append(service.decide(Caller(name, frozenset({"approver"})), rid, "approve").grant)
            except (RequestDecided, AlreadyDecided) as refused:
                results.append(refused)

        threads = [threading.Thread(target=approve, args=(name,)) for name in racers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        grants = [g for g in service.store.list_grants() if g.request_id == rid]
        assert len(grants) == 1
        made = [r for r in results if r is not None and not isinstance(r, Exception)]
        assert len(made) == 1
        assert [type(r) for r in results if isinstance(r, Exception)] == [RequestDecided]


def test_cli_walkthrough(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`zguard approvals request|approve|reject|list|revoke` on the default SQLite store."""
    state = tmp_path / "state"
    config = tmp_path / "zguard.yaml"
    config.write_text(
        f"state_dir: {state}\nintegrity:\n  allow_root: true\napprovals:\n  quorum: 1\n  max_validity_days: 60\n",
        encoding="utf-8",
    )
    cli = ZguardCli(config, capsys)
    cli.ok("db", "upgrade")
    cli.ok("user", "add", "rita", "--role", "generator", "--service")
    cli.ok("user", "add", "alice", "--role", "approver", "--service")
    model = cli.settings.model.id
    asked = ["approvals", "request", "--as", "rita", "--model", model, "--purpose", "campaign", "--business-unit", "retail",
             "--classification", "internal", "--per-day", "5", "--total", "50"]  # fmt: skip
    code, _out, err = cli(*asked, "--days", "61")
    assert code == 2
    assert "validity_over_maximum" in err
    assert "fix:" in err
    out = cli.ok(*asked, "--days", "30")
    assert "approval request 1: pending" in out
    code, _out, err = cli("approvals", "approve", "1", "--as", "rita")
    assert code == 2
    assert "(permission_denied)" in err
    code, _out, err = cli("approvals", "reject", "1", "--as", "alice")
    assert code == 2
    assert "(comment_required)" in err
    assert "grant 1 for rita" in cli.ok("approvals", "approve", "1", "--as", "alice")
    listing = cli.ok("approvals", "list")
    assert "approved" in listing
    assert "alice:approve" in listing
    assert "revoked" in cli.ok("approvals", "revoke", "1", "--as", "alice", "--reason", "project ended")
    import json

    document = json.loads(cli.ok("approvals", "list", "--json"))
    assert document["grants"][0]["status"] == "revoked"
    assert document["grants"][0]["reason"] == "project ended"


@pytest.mark.integration
async def test_two_replicas_share_one_quota_on_redis(database: Any) -> None:
    """Two processes' services on one Redis (`rate_limits.storage`) charge one grant's counters."""
    from tests.common.redis_server import redis_key_prefix, require_redis
    from zguard.audit.memory import MemoryAuditSink
    from zguard.config.approvals import ApprovalSettings
    from zguard.services.counters import CounterStorage
    from zguard.store.approvals import ApprovalStore

    url = require_redis()
    registry = make_settings(Path("unused")).role_registry()
    settings = ApprovalSettings(required=True)
    with redis_key_prefix() as prefix:
        replicas = [
            ApprovalService(
                settings,
                ApprovalStore(database.store.engine),
                registry,
                audit=MemoryAuditSink(),
                counters=CounterStorage(url, key_prefix=prefix),
                served=lambda: ("z-image-turbo", None),
                version=database.store.auth_version,
            )
            for _ in range(2)
        ]
        try:
            await _share_one_quota(*replicas)
        finally:
            for replica in replicas:  # `limits` offers no close: its redis-py client's, before the loop ends
                await replica._counters.storage.bridge.storage.aclose()  # type: ignore[attr-defined]


async def _share_one_quota(first: ApprovalService, second: ApprovalService) -> None:
    from zguard.errors import GrantExhausted, GrantQuotaExceeded
    from zguard.services.approvals import RequestForm

    rid = first.request(
        Caller("rita", frozenset({"generator"})),
        RequestForm("z-image-turbo", "campaign", "retail", "internal", 3, 4, 10),
    ).id
    first.decide(Caller("alice", frozenset({"approver"})), rid, "approve")
    assert (await first.charge("rita", 2)).remaining_today == 1
    assert (await second.charge("rita", 1)).remaining_today == 0  # the other replica saw the 2
    with pytest.raises(GrantQuotaExceeded):
        await first.charge("rita", 1)
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    usage = await second.charge("rita", 1, now=tomorrow)
    assert (usage.remaining_today, usage.remaining_total) == (2, 0)
    with pytest.raises(GrantExhausted):
        await first.charge("rita", 1, now=tomorrow)


async def test_the_console_generate_api_is_enforced_too(deploy: Deploy, tmp_path: Path) -> None:
    """One generation sequence for both listeners: the console's JSON twin needs the grant too."""
    t = team(deploy, tmp_path, required=True)
    async with t.d.api() as api, t.d.console() as console:
        model, _ = await model_id(api, t)
        refused = await console.post("/console/api/generate", json=SMALL, headers=t.auth("rita"))
        assert error_code(refused, 403) == "approval_required"
        rid = (await console.post(API, json=ask(model), headers=t.auth("rita"))).json()["id"]
        await console.post(f"{API}/{rid}/approve", json={}, headers=t.auth("alice"))
        done = await console.post("/console/api/generate", json=SMALL, headers=t.auth("rita"))
        assert done.status_code == 200, done.text
        assert done.headers["x-zguard-grant-remaining-total"] == "2"
