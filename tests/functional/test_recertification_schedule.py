"""Issue 20, item 3 continued: re-certification deadlines that act by themselves, and scheduled campaigns.

On a real state database (SQLite and the local PostgreSQL) with a controlled clock: `run_due`
closes a campaign past its deadline without anybody reading it and revokes what nobody
confirmed, once, whoever runs it; the revoked grant then refuses a generation
(`approval_required`) through the real API; the quarterly schedule opens exactly one campaign
per quarter, run twice or by two replicas racing on PostgreSQL, with its deadline capped at the
quarter's end; `zguard approvals recertify --due` does the same from cron.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import URL, Engine, select

from tests.common.cli import ZguardCli
from tests.common.databases import BACKENDS, database_url_for
from tests.common.factories import make_settings
from tests.common.polling import wait_until
from tests.common.servers import ZguardProcess
from tests.functional.test_approvals import API, GENERATE, SMALL, ask, error_code, model_id, team
from tests.functional.test_auth import Deploy, backend, database, deploy
from tests.functional.test_recertification import START, Clock, grant
from zguard.audit.memory import MemoryAuditSink
from zguard.config.loader import load_settings
from zguard.security.rbac import RoleRegistry
from zguard.services.approvals import Caller
from zguard.services.recertification import (
    DEADLINE_CLOSER,
    NOT_RECERTIFIED,
    SCHEDULE_OPENER,
    DueReport,
    RecertificationService,
    Schedule,
    quarter_of,
)
from zguard.store import migrate
from zguard.store.approvals import ApprovalStore
from zguard.store.database import create_store_engine, database_url
from zguard.store.models import AuditEventRow
from zguard.store.recertification import CampaignRecord, RecertificationStore

FIXTURES = (backend, database, deploy)  # used by name as fixtures
ALICE = Caller("alice", frozenset({"approver"}))
BOB = Caller("bob", frozenset({"approver"}))


@dataclass
class Replicas:
    """Two services (two engines, as two replicas) on one database, one clock and one trail."""

    engines: tuple[Engine, Engine]
    registry: RoleRegistry
    clock: Clock
    audit: MemoryAuditSink

    def service(self, schedule: Schedule = "off", *, replica: int = 0, days: int = 21) -> RecertificationService:
        engine = self.engines[replica]
        return RecertificationService(
            RecertificationStore(engine, clock=self.clock),
            ApprovalStore(engine, clock=self.clock),
            self.registry,
            audit=self.audit,
            schedule=schedule,
            schedule_days=days,
        )

    @property
    def grants(self) -> ApprovalStore:
        return ApprovalStore(self.engines[0], clock=self.clock)

    def events(self, kind: str) -> list[Any]:
        return [e for e in self.audit.events if e.type == kind]


@pytest.fixture(params=BACKENDS)
def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Replicas]:
    (tmp_path / "state").mkdir(mode=0o700)
    with database_url_for(request.param, tmp_path) as url:
        first, second = create_store_engine(url), create_store_engine(url)
        try:
            migrate.upgrade(first)
            registry = make_settings(tmp_path / "state").role_registry()
            yield Replicas((first, second), registry, Clock(), MemoryAuditSink())
        finally:
            first.dispose()
            second.dispose()


def test_the_deadline_closes_the_campaign_without_any_read(replicas: Replicas) -> None:
    r = replicas
    kept, left = grant(r.grants, "rita", "alice"), grant(r.grants, "gus", "bob")
    service = r.service()
    deadline = START + timedelta(days=14)
    campaign = service.open(ALICE, "2026Q4", deadline)
    assert r.events("approval.campaign_opened")[-1].detail["trigger"] == "manual"
    service.confirm(BOB, campaign.id, kept)

    r.clock.now = deadline - timedelta(seconds=1)
    assert service.run_due() == DueReport()
    assert r.grants.get_grant(left).status == "active"

    r.clock.now = deadline
    report = service.run_due({"os_uid": 1234})  # as `recertify --due` records its OS account
    assert report.opened is None  # no schedule
    assert [(c.id, c.status, c.closed_by) for c in report.closed] == [(campaign.id, "closed", DEADLINE_CLOSER)]
    decisions = {i.grant_id: (i.decision, i.decider) for i in report.closed[0].items}
    assert decisions == {kept: ("confirmed", "bob"), left: ("lapsed", DEADLINE_CLOSER)}
    revoked = r.grants.get_grant(left)
    assert (revoked.status, revoked.reason, revoked.revoked_by) == ("revoked", NOT_RECERTIFIED, DEADLINE_CLOSER)
    assert r.grants.get_grant(kept).status == "active"
    closing = r.events("approval.campaign_closed")
    assert [(e.principal, e.roles, e.detail["by_deadline"], e.detail["lapsed"]) for e in closing] == [
        (DEADLINE_CLOSER, (), True, 1)
    ]
    assert closing[0].detail["os_uid"] == 1234
    assert [(e.principal, e.detail["grant"], e.detail["campaign"]) for e in r.events("approval.revoked")] == [
        (DEADLINE_CLOSER, left, campaign.id)
    ]

    # Again, and from the other replica: nothing left to do, nothing recorded twice.
    assert service.run_due() == DueReport()
    assert r.service(replica=1).run_due() == DueReport()
    assert len(r.events("approval.campaign_closed")) == 1
    assert len(r.events("approval.revoked")) == 1


def test_an_interrupted_close_is_finished_by_the_check(replicas: Replicas) -> None:
    r = replicas
    left = grant(r.grants, "gus", "alice")
    service = r.service()
    campaign = service.open(ALICE, "2026Q4", START + timedelta(days=1))
    assert service.store.close(campaign.id, closed_by=DEADLINE_CLOSER)  # the process died right after this
    report = service.run_due()
    assert report.closed == ()  # closed before, by the one that died
    assert r.grants.get_grant(left).reason == NOT_RECERTIFIED
    item = service.store.get(campaign.id).item(left)
    assert item is not None
    assert item.decision == "lapsed"
    assert service.run_due() == DueReport()
    assert len(r.events("approval.revoked")) == 1


def test_the_quarterly_schedule_opens_one_campaign_per_quarter(replicas: Replicas) -> None:
    r = replicas
    first = grant(r.grants, "rita", "alice")
    assert r.service("off").run_due() == DueReport()  # no schedule: nothing opened
    assert r.service().store.list_campaigns() == []

    service = r.service("quarterly")
    opened = service.run_due({"os_uid": 1234}).opened
    assert opened is not None
    assert (opened.quarter, opened.opened_by, opened.status) == ("2026Q4", SCHEDULE_OPENER, "open")
    assert opened.deadline == START + timedelta(days=21)  # 21 days, within the quarter
    assert [(i.grant_id, i.approvers) for i in opened.items] == [(first, ("alice",))]
    event = r.events("approval.campaign_opened")[-1]
    assert event.detail["os_uid"] == 1234
    assert (event.principal, event.detail["trigger"], event.detail["grants"]) == (
        SCHEDULE_OPENER,
        "schedule",
        str(first),
    )
    # Run twice, and by the other replica: still one campaign for the quarter.
    assert service.run_due().opened is None
    assert r.service("quarterly", replica=1).run_due().opened is None
    assert [c.quarter for c in service.store.list_campaigns()] == ["2026Q4"]
    assert len(r.events("approval.campaign_opened")) == 1

    # Its deadline passes: the check closes it and revokes the unconfirmed grant; no new quarter yet.
    r.clock.now = opened.deadline
    report = service.run_due()
    assert [c.quarter for c in report.closed] == ["2026Q4"]
    assert report.opened is None
    assert r.grants.get_grant(first).status == "revoked"

    # The server was down for most of the next quarter: its campaign opens late, deadline capped.
    second = grant(r.grants, "gus", "bob")
    r.clock.now = datetime(2027, 3, 20, 12, 0, tzinfo=UTC)
    late = service.run_due().opened
    assert late is not None
    assert late.quarter == "2027Q1"
    assert late.deadline == datetime(2027, 4, 1, tzinfo=UTC)  # not 2027-04-10: the quarter ends first
    assert [i.grant_id for i in late.items] == [second]
    assert [c.quarter for c in service.store.list_campaigns()] == ["2026Q4", "2027Q1"]


def test_a_quarter_opened_by_hand_is_not_opened_again_by_the_schedule(replicas: Replicas) -> None:
    r = replicas
    r.service().open(BOB, "2026Q4")
    assert r.service("quarterly").run_due() == DueReport()
    assert [c.opened_by for c in r.service().store.list_campaigns()] == ["bob"]


@pytest.mark.parametrize("replicas", [BACKENDS[1]], indirect=True)
def test_two_replicas_racing_open_one_campaign_and_revoke_once(replicas: Replicas) -> None:
    """On PostgreSQL: both replicas check at the same instant, at the quarter's start and at the deadline."""
    r = replicas
    left = [grant(r.grants, f"user{n}", "alice") for n in range(3)]
    services = [r.service("quarterly", replica=n) for n in (0, 1)]

    def race() -> list[DueReport]:
        barrier = threading.Barrier(2)
        reports: list[DueReport] = [DueReport(), DueReport()]

        def run(n: int) -> None:
            barrier.wait()
            reports[n] = services[n].run_due()

        threads = [threading.Thread(target=run, args=(n,)) for n in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return reports

    opened = [report.opened for report in race() if report.opened is not None]
    assert len(opened) == 1
    assert [c.quarter for c in services[0].store.list_campaigns()] == ["2026Q4"]
    assert len(r.events("approval.campaign_opened")) == 1
    assert not r.events("approval.refused")  # losing the race is not a refusal

    r.clock.now = opened[0].deadline
    closed = [c for report in race() for c in report.closed]
    assert len(closed) == 1
    assert len(r.events("approval.campaign_closed")) == 1
    assert sorted(e.detail["grant"] for e in r.events("approval.revoked")) == left
    assert {r.grants.get_grant(g).reason for g in left} == {NOT_RECERTIFIED}
    campaign = services[1].store.get(opened[0].id)
    assert {i.decision for i in campaign.items} == {"lapsed"}


@pytest.mark.anyio
async def test_a_grant_revoked_at_the_deadline_refuses_generation(deploy: Deploy, tmp_path: Path) -> None:
    t = team(deploy, tmp_path, required=True)
    engine = t.service.store.engine
    clock = Clock(datetime.now(UTC))
    service = RecertificationService(
        RecertificationStore(engine, clock=clock),
        ApprovalStore(engine),
        make_settings(tmp_path / "state").role_registry(),
        audit=t.d.audit,
    )
    async with t.d.api() as api, t.d.console() as console:
        model, _ = await model_id(api, t)
        rid = (await console.post(API, json=ask(model), headers=t.auth("rita"))).json()["id"]
        granted = (await console.post(f"{API}/{rid}/approve", json={}, headers=t.auth("alice"))).json()["grant"]
        assert (await api.post(GENERATE, json=SMALL, headers=t.auth("rita"))).status_code == 200
        campaign = service.open(ALICE, quarter_of(clock.now), clock.now + timedelta(days=1))
        assert [i.grant_id for i in campaign.items] == [granted["id"]]
        clock.now += timedelta(days=1)
        assert [c.id for c in service.run_due().closed] == [campaign.id]
        refused = await api.post(GENERATE, json=SMALL, headers=t.auth("rita"))
        assert error_code(refused, 403) == "approval_required"
    assert t.service.store.get_grant(granted["id"]).reason == NOT_RECERTIFIED


def test_cli_due_closes_and_opens_as_the_system(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "zguard.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\nintegrity:\n  allow_root: true\n"
        "approvals:\n  recertification_schedule: quarterly\n  recertification_days: 10\n"
    )
    cli = ZguardCli(config, capsys)
    cli.ok("db", "upgrade")
    for name, role in (("gus", "generator"), ("alice", "approver")):
        cli.ok("user", "add", name, "--role", role, "--service")
    cli.ok("approvals", "request", "--as", "gus", "--model", cli.settings.model.id, "--purpose", "statements",
           "--business-unit", "retail", "--classification", "internal", "--per-day", "5", "--total", "50",
           "--days", "30")  # fmt: skip
    cli.ok("approvals", "approve", "1", "--as", "alice")
    engine = create_store_engine(database_url(load_settings(config, environ={})))
    try:  # a campaign of a past quarter whose deadline passed while nothing ran
        now = datetime.now(UTC)
        RecertificationStore(engine, clock=lambda: now - timedelta(days=200)).open_campaign(
            "2000Q1", opened_by="alice", deadline=now - timedelta(hours=1)
        )
    finally:
        engine.dispose()

    assert "(invalid_value)" in cli.refused("approvals", "recertify", "--due", "--as", "alice")
    assert "(invalid_value)" in cli.refused("approvals", "recertify", "--quarter", "2000Q2")  # --as needed
    done = cli.ok("approvals", "recertify", "--due")
    assert "campaign 1 (2000Q1): closed, 1 of 1 grant(s) decided" in done
    assert "closed at its deadline, 1 unconfirmed grant(s) revoked" in done
    assert f"campaign 2 ({quarter_of(datetime.now(UTC))}): open" in done
    assert "(opened by the schedule)" in done
    assert cli.ok("approvals", "recertify", "--due").strip() == "nothing due (schedule: quarterly)"
    grants = json.loads(cli.ok("approvals", "list", "--json"))["grants"]
    assert [(g["id"], g["status"], g["reason"]) for g in grants] == [(1, "revoked", NOT_RECERTIFIED)]
    listed = cli.ok("approvals", "campaign")
    assert "2000Q1" in listed
    assert "closed" in listed


@pytest.mark.slow
def test_serve_closes_a_missed_deadline_and_opens_the_quarter_by_itself(tmp_path: Path) -> None:
    """The real `serve`: its check runs at the start, with nobody reading a campaign."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    url = URL.create("sqlite", database=str(state / "zguard.db"))
    engine = create_store_engine(url)
    try:
        migrate.upgrade(engine)
        now = datetime.now(UTC)
        left = grant(ApprovalStore(engine), "gus", "alice")
        RecertificationStore(engine, clock=lambda: now - timedelta(days=200)).open_campaign(
            "2000Q1", opened_by="alice", deadline=now - timedelta(hours=1)
        )
    finally:
        engine.dispose()
    (state / "zguard.db").chmod(0o600)
    env = {"ZGUARD_APPROVALS__RECERTIFICATION_SCHEDULE": "quarterly"}
    engine = create_store_engine(url)
    try:
        store = RecertificationStore(engine)

        def checked() -> list[CampaignRecord] | None:
            found = store.list_campaigns()
            return found if len(found) == 2 else None

        with ZguardProcess(state, env=env) as proc:
            proc.wait_ready()
            wait_until(checked, timeout=60, what="the check opening this quarter")
            assert proc.stop() == 0  # the stop waits for the check to finish
        campaigns = store.list_campaigns()
        assert ApprovalStore(engine).get_grant(left).reason == NOT_RECERTIFIED
        with engine.connect() as conn:
            kinds = ("approval.campaign_closed", "approval.revoked", "approval.campaign_opened")
            rows = conn.execute(
                select(AuditEventRow.type, AuditEventRow.principal, AuditEventRow.body)
                .where(AuditEventRow.type.in_(kinds))
                .order_by(AuditEventRow.seq)
            ).all()
    finally:
        engine.dispose()
    recorded = [(row.type, row.principal, json.loads(row.body)["detail"]) for row in rows]
    assert [(kind, who) for kind, who, _detail in recorded] == [
        ("approval.revoked", DEADLINE_CLOSER),  # each unconfirmed grant, then the close
        ("approval.campaign_closed", DEADLINE_CLOSER),
        ("approval.campaign_opened", SCHEDULE_OPENER),
    ]
    assert recorded[1][2]["replica"] == recorded[2][2]["replica"]  # which replica acted
    assert recorded[2][2]["trigger"] == "schedule"
    assert [(c.quarter, c.opened_by, c.closed_by) for c in campaigns] == [
        ("2000Q1", "alice", DEADLINE_CLOSER),
        (quarter_of(datetime.now(UTC)), SCHEDULE_OPENER, None),
    ]
    assert "opened by the schedule" in proc.log()
