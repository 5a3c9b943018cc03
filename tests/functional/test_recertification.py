"""Issue 20, items 3 and 5: quarterly access re-certification, and the grant report of `zguard scan`.

On a real state database (SQLite, and the local PostgreSQL for the service walkthrough): a
campaign over two grants, one confirmed and one not; the deadline passing revokes the
unconfirmed one ("not re-certified") on the next read; the refusals with their codes and
`approval.refused` events; the signed export verifying, and failing after one changed byte
(zguard's check and openssl's). Then the CLI end to end, and the scan's grant findings.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.common.cli import ZguardCli
from tests.common.databases import BACKENDS, database_url_for
from tests.common.factories import make_settings
from tests.functional.test_scan import codes, scan, write_config
from zguard.audit.memory import MemoryAuditSink
from zguard.config.loader import load_settings
from zguard.errors import ZguardError
from zguard.services.approvals import Caller
from zguard.services.recertification import NOT_RECERTIFIED, RecertificationService, sign_export, verify_export
from zguard.store import migrate
from zguard.store.approvals import ApprovalStore, NewRequest
from zguard.store.database import create_store_engine, database_url
from zguard.store.recertification import RecertificationStore

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now


def grant(store: ApprovalStore, requester: str, approver: str, *, days: int = 90) -> int:
    new = NewRequest(requester=requester, requester_id=None, model_id="zimage", model_digest="sha256:" + "ab" * 32,
                     purpose="statements", business_unit="retail", ticket=None, data_classification="internal",
                     quota_per_day=5, quota_total=50, validity_days=days, quorum=1)  # fmt: skip
    request = store.create_request(new, ttl=timedelta(days=7))
    outcome = store.decide(request.id, decider=approver, decider_id=None, decision="approve", comment=None)
    assert outcome.grant is not None
    return outcome.grant.id


@dataclass
class Campaigns:
    service: RecertificationService
    grants: ApprovalStore
    audit: MemoryAuditSink
    clock: Clock
    people: dict[str, Caller] = field(default_factory=dict)

    def refused(self, action: Any, code: str) -> None:
        with pytest.raises(ZguardError) as caught:
            action()
        assert caught.value.code == code
        assert self.audit.events[-1].type == "approval.refused"
        assert self.audit.events[-1].code == code

    def events(self, kind: str) -> list[Any]:
        return [e for e in self.audit.events if e.type == kind]


@pytest.fixture(params=BACKENDS)
def campaigns(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Campaigns]:
    (tmp_path / "state").mkdir(mode=0o700)
    with database_url_for(request.param, tmp_path) as url:
        engine = create_store_engine(url)
        try:
            migrate.upgrade(engine)
            clock = Clock()
            audit = MemoryAuditSink()
            grants = ApprovalStore(engine, clock=clock)
            registry = make_settings(tmp_path / "state").role_registry()
            service = RecertificationService(RecertificationStore(engine, clock=clock), grants, registry, audit=audit)
            people = {
                "rita": Caller("rita", frozenset({"generator", "approver"})),  # holds a grant, may decide others'
                "gus": Caller("gus", frozenset({"generator"})),
                "alice": Caller("alice", frozenset({"approver"})),
                "bob": Caller("bob", frozenset({"approver"})),
            }
            yield Campaigns(service, grants, audit, clock, people)
        finally:
            engine.dispose()


def test_a_campaign_confirms_one_grant_and_the_deadline_revokes_the_other(campaigns: Campaigns) -> None:  # noqa: PLR0915 - one walkthrough
    c, who = campaigns, campaigns.people
    rita_grant = grant(c.grants, "rita", "alice")
    gus_grant = grant(c.grants, "gus", "bob")
    deadline = START + timedelta(days=14)

    c.refused(lambda: c.service.open(who["gus"], "2026Q4", deadline), "permission_denied")
    c.refused(lambda: c.service.open(who["alice"], "2026Q5", deadline), "invalid_value")
    campaign = c.service.open(who["alice"], "2026Q4", deadline)
    assert [(i.grant_id, i.principal, i.approvers) for i in campaign.items] == [
        (rita_grant, "rita", ("alice",)),
        (gus_grant, "gus", ("bob",)),
    ]
    opened = c.events("approval.campaign_opened")[-1]
    assert opened.detail["grants"] == f"{rita_grant},{gus_grant}"
    assert opened.detail["asked"] == "alice,bob"
    c.refused(lambda: c.service.open(who["bob"], "2026Q4", deadline), "campaign_exists")

    # Who may not confirm: no approvals:decide, or the grant's own principal (in any spelling).
    c.refused(lambda: c.service.confirm(who["gus"], campaign.id, gus_grant), "permission_denied")
    c.refused(lambda: c.service.confirm(who["rita"], campaign.id, rita_grant), "own_grant_recertification")
    c.refused(
        lambda: c.service.confirm(Caller("RITA", frozenset({"approver"})), campaign.id, rita_grant),
        "own_grant_recertification",
    )
    c.refused(lambda: c.service.confirm(who["bob"], campaign.id, 999), "approval_not_found")

    c.clock.now = START + timedelta(days=3)
    after = c.service.confirm(who["bob"], campaign.id, rita_grant, "still needed for statements")
    item = after.item(rita_grant)
    assert item is not None
    assert (item.decision, item.decider, item.decided_at) == ("confirmed", "bob", c.clock.now)
    assert c.events("approval.confirmed")[-1].detail["grant"] == rita_grant
    c.refused(lambda: c.service.confirm(who["alice"], campaign.id, rita_grant), "already_decided")

    # Nothing happens before the deadline; the first read after it closes the campaign.
    c.clock.now = deadline - timedelta(seconds=1)
    assert c.service.get(campaign.id).status == "open"
    assert c.grants.get_grant(gus_grant).status == "active"
    c.clock.now = deadline
    closed = c.service.get(campaign.id)
    assert closed.status == "closed"
    revoked = c.grants.get_grant(gus_grant)
    assert (revoked.status, revoked.reason) == ("revoked", NOT_RECERTIFIED)
    assert c.grants.get_grant(rita_grant).status == "active"
    lapsed = closed.item(gus_grant)
    assert lapsed is not None
    assert lapsed.decision == "lapsed"
    closing = c.events("approval.campaign_closed")
    assert len(closing) == 1
    assert (closing[0].detail["confirmed"], closing[0].detail["lapsed"], closing[0].detail["by_deadline"]) == (
        1,
        1,
        True,
    )
    assert [e.detail["grant"] for e in c.events("approval.revoked")] == [gus_grant]
    c.refused(lambda: c.service.confirm(who["alice"], campaign.id, gus_grant), "campaign_closed")
    c.refused(lambda: c.service.close(who["alice"], campaign.id), "campaign_closed")
    c.service.get(campaign.id)
    assert len(c.events("approval.campaign_closed")) == 1  # closed once

    # The evidence: every grant, its decision, decider and time; signed, and a changed byte fails.
    document = c.service.export(who["alice"], campaign.id, "json")
    evidence = json.loads(document)
    assert [(g["grant"], g["decision"], g["decider"], g["grant_status"]) for g in evidence["grants"]] == [
        (rita_grant, "confirmed", "bob", "active"),
        (gus_grant, "lapsed", "zguard (deadline passed)", "revoked"),
    ]
    assert evidence["grants"][0]["decided_at"] == (START + timedelta(days=3)).isoformat()
    key = Ed25519PrivateKey.generate()
    signature = sign_export(document, key)
    assert verify_export(document, signature, key.public_key())
    changed = bytearray(document)
    changed[document.index(b"confirmed")] ^= 0x01
    assert not verify_export(bytes(changed), signature, key.public_key())
    rows = list(csv.DictReader(io.StringIO(c.service.export(None, campaign.id, "csv").decode())))
    assert [(r["grant"], r["decision"], r["comment"]) for r in rows] == [
        (str(rita_grant), "confirmed", "still needed for statements"),
        (str(gus_grant), "lapsed", NOT_RECERTIFIED),
    ]
    assert len(c.events("approval.campaign_exported")) == 2


def test_a_revocation_in_the_campaign_and_the_close_on_demand(campaigns: Campaigns) -> None:
    c, who = campaigns, campaigns.people
    first, second = grant(c.grants, "gus", "alice"), grant(c.grants, "rita", "alice")
    campaign = c.service.open(who["alice"], "2027Q1")
    assert campaign.deadline == datetime(2027, 4, 1, tzinfo=UTC)  # the quarter's end by default
    c.refused(lambda: c.service.revoke(who["alice"], campaign.id, first, "  "), "comment_required")
    c.service.revoke(who["alice"], campaign.id, first, "left the team")
    assert c.grants.get_grant(first).status == "revoked"
    c.refused(lambda: c.service.close(who["gus"], campaign.id), "permission_denied")
    closed = c.service.close(who["bob"], campaign.id)
    assert (closed.status, closed.closed_by) == ("closed", "bob")
    decisions = {i.grant_id: (i.decision, i.decider) for i in closed.items}
    assert decisions == {first: ("revoked", "alice"), second: ("lapsed", "bob")}
    assert c.grants.get_grant(second).reason == NOT_RECERTIFIED
    assert c.events("approval.campaign_closed")[-1].detail["by_deadline"] is False


def test_cli_walkthrough_with_a_signed_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "zguard.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nintegrity:\n  allow_root: true\napprovals:\n  quorum: 1\n")
    cli = ZguardCli(config, capsys)
    cli.ok("db", "upgrade")
    for name, role in (("rita", "generator"), ("gus", "generator"), ("alice", "approver"), ("bob", "approver")):
        cli.ok("user", "add", name, "--role", role, "--service")
    model = cli.settings.model.id
    for who in ("rita", "gus"):
        cli.ok("approvals", "request", "--as", who, "--model", model, "--purpose", "statements", "--business-unit",
               "retail", "--classification", "internal", "--per-day", "5", "--total", "50", "--days", "30")  # fmt: skip
    cli.ok("approvals", "approve", "1", "--as", "alice")
    cli.ok("approvals", "approve", "2", "--as", "bob")

    opened = cli.ok("approvals", "recertify", "--quarter", "2026Q4", "--as", "alice", "--deadline", "2099-12-31")
    assert "campaign 1 (2026Q4): open, 0 of 2 grant(s) decided, deadline 2100-01-01 00:00 UTC" in opened
    assert "grant 1 of rita: asked alice" in opened
    assert "(campaign_exists)" in cli.refused("approvals", "recertify", "--quarter", "2026Q4", "--as", "bob")
    assert "(invalid_value)" in cli.refused("approvals", "recertify", "--quarter", "2026Q4", "--as", "bob",
                                            "--deadline", "31.12.2099")  # fmt: skip
    assert "(permission_denied)" in cli.refused("approvals", "confirm", "2", "--campaign", "1", "--as", "gus")
    assert "confirmed" in cli.ok("approvals", "confirm", "1", "--campaign", "1", "--as", "bob")
    assert "(already_decided)" in cli.refused("approvals", "confirm", "1", "--campaign", "1", "--as", "alice")
    shown = cli.ok("approvals", "campaign", "1")
    assert "1 of 2 grant(s) decided" in shown
    closed = cli.ok("approvals", "recertify", "--close", "1", "--as", "alice")
    assert "closed" in closed
    assert "(campaign_closed)" in cli.refused("approvals", "confirm", "2", "--campaign", "1", "--as", "alice")
    grants = json.loads(cli.ok("approvals", "list", "--json"))["grants"]
    assert [(g["id"], g["status"], g["reason"]) for g in grants] == [
        (1, "active", None),
        (2, "revoked", NOT_RECERTIFIED),
    ]

    evidence = tmp_path / "q4.csv"
    out = cli.ok("approvals", "campaign", "1", "--export", "csv", "--output", str(evidence))
    assert "key id" in out
    rows = list(csv.DictReader(io.StringIO(evidence.read_text())))
    assert [(r["grant"], r["principal"], r["decision"], r["decider"]) for r in rows] == [
        ("1", "rita", "confirmed", "bob"),
        ("2", "gus", "lapsed", "alice"),
    ]
    assert "signature good" in cli.ok("approvals", "verify-export", str(evidence))
    public = tmp_path / "audit.pub"
    public.write_text(cli.ok("audit", "public-key"))
    assert "signature good" in cli.ok("approvals", "verify-export", str(evidence), "--public-key", str(public))
    openssl = shutil.which("openssl")
    verify = [str(openssl), "pkeyutl", "-verify", "-pubin", "-inkey", str(public), "-rawin", "-in", str(evidence),
              "-sigfile", f"{evidence}.sig"]  # fmt: skip
    if openssl:
        assert subprocess.run(verify, capture_output=True, check=False).returncode == 0
    data = bytearray(evidence.read_bytes())
    data[data.index(b"confirmed")] ^= 0x20  # "Confirmed"
    evidence.write_bytes(bytes(data))
    code, out, _err = cli("approvals", "verify-export", str(evidence))
    assert code == 1
    assert "does NOT verify" in out
    if openssl:
        assert subprocess.run(verify, capture_output=True, check=False).returncode != 0

    # A revocation recorded in a campaign.
    cli.ok("approvals", "recertify", "--quarter", "2027Q1", "--as", "alice")
    revoked = cli.ok("approvals", "revoke", "1", "--campaign", "2", "--as", "alice", "--reason", "left")
    assert "grant 1 of rita: revoked (campaign 2)" in revoked
    assert "revoked" in cli.ok("approvals", "campaign", "2")


def test_scan_lists_active_grants_and_the_unused_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    engine = create_store_engine(database_url(load_settings(config, environ={})))
    now = datetime.now(UTC)
    try:
        old = ApprovalStore(engine, clock=lambda: now - timedelta(days=40))
        idle = grant(old, "dora", "alice")  # granted 40 days ago, never used
        used = grant(old, "erin", "alice")
        ApprovalStore(engine).record_use(used, 12)  # used today: not idle (zguard.ops.grant_review)
        fresh = grant(ApprovalStore(engine), "finn", "alice")  # today, unused: not yet a finding
        gone = grant(ApprovalStore(engine), "gail", "alice")
        ApprovalStore(engine).close_grant(gone, "revoked", by="alice", reason="test")
    finally:
        engine.dispose()

    _code, report = scan(config, capsys)
    found = codes(report)
    assert found["grant_active"] == [f"grant {idle} (dora)", f"grant {used} (erin)", f"grant {fresh} (finn)"]
    assert found["grant_unused"] == [f"grant {idle} (dora)"]
    erin = next(f for f in report["findings"] if f["code"] == "grant_active" and "erin" in f["subject"])
    assert erin["message"].startswith("12 of 50 images used (24%), 5 a day")
    assert erin["severity"] == "info"
    unused = next(f for f in report["findings"] if f["code"] == "grant_unused")
    assert unused["severity"] == "low"
    assert f"zguard approvals revoke {idle}" in unused["fix"]


def test_a_close_interrupted_before_the_revocations_is_finished_on_the_next_read(campaigns: Campaigns) -> None:
    c, who = campaigns, campaigns.people
    left = grant(c.grants, "gus", "alice")
    campaign = c.service.open(who["alice"], "2026Q4", START + timedelta(days=1))
    assert c.service.store.close(campaign.id, closed_by="alice")  # the process died right after this
    assert c.grants.get_grant(left).status == "active"
    item = c.service.get(campaign.id).item(left)
    assert item is not None
    assert (item.decision, item.decider) == ("lapsed", "alice")
    assert c.grants.get_grant(left).reason == NOT_RECERTIFIED
    assert [e.detail["grant"] for e in c.events("approval.revoked")] == [left]
