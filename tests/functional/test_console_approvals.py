"""Issue 20, item 4 (the console part): the approval pages, through the real console app on a real
state database with console sessions and CSRF-protected forms: the four-eyes walk (ask, approve
twice for a quorum of two, the requester sees the grant, revoke), each refusal rendered on the
page with its status, code and the service's message (never a 500), the filters, and the
navigation link only for the roles that may use it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from tests.common.factories import make_settings
from tests.functional.test_auth import Deploy, backend, database, deploy
from tests.functional.test_console_sessions import PAGE, PASSWORD, SAME_ORIGIN, Console, Now, csrf_of, signed_in
from zguard.services.approvals import ApprovalService
from zguard.services.sessions import SessionService
from zguard.store.models import ApprovalRequest

FIXTURES = (backend, database, deploy)  # used by name as fixtures
pytestmark = pytest.mark.anyio


@pytest.fixture
def console(deploy: Deploy, tmp_path: Path) -> Console:
    """rita (generator and approver: never of her own request), alice and bob (approvers), audrey
    (auditor), gus (generator); a quorum of two, caps of 30 days and 50 images a day."""
    settings = make_settings(
        tmp_path / "state",
        api_auth={"enabled": True},
        generation={"min_side": 16},
        console={"totp_required_roles": []},
        approvals={"quorum": 2, "max_validity_days": 30, "max_images_per_day": 50},
    )
    d = deploy(settings)
    for name, roles in {
        "rita": ("generator", "approver"),
        "alice": ("approver",),
        "bob": ("approver",),
        "audrey": ("auditor",),
        "gus": ("generator",),
    }.items():
        d.principal(name, *roles, kind="user", password=PASSWORD)
    now = Now()
    sessions = SessionService(
        d.settings.console, d.auth, d.store, d.auth.derived_key(b"console sessions"), audit=d.audit, clock=now
    )
    return Console(d, sessions, now)


def service(c: Console) -> ApprovalService:
    approvals = c.d.runtime.services.approvals
    assert approvals is not None
    return approvals


def form(csrf: str, **fields: Any) -> dict[str, str]:
    return {"csrf_token": csrf, **{k: str(v) for k, v in fields.items()}}


def ask(csrf: str, **overrides: Any) -> dict[str, str]:
    fields = {
        "model": "zguard-demo",
        "purpose": "marketing visuals for the Q1 campaign",
        "business_unit": "retail",
        "data_classification": "confidential",
        "ticket": "CHG-1042",
        "quota_per_day": 2,
        "quota_total": 3,
        "validity_days": 10,
        **overrides,
    }
    return form(csrf, **fields)


def refusal(page: httpx.Response, status: int, code: str) -> str:
    """The page's refusal box: the status, the code, and the text shown (unescaped)."""
    assert page.status_code == status, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert 'role="alert"' in page.text, page.text
    assert f"<code>{code}</code>" in page.text, page.text
    return unescape(page.text)


def refused_codes(c: Console) -> list[str | None]:
    return [e.code for e in c.events("approval.refused")]


def walk_was_audited(console: Console) -> None:
    """The same audit events as the CLI and the JSON API, with the signed-in people as the callers."""
    assert [e.principal for e in console.events("approval.requested")] == ["rita"]
    assert [e.principal for e in console.events("approval.decided")] == ["alice", "bob"]
    assert console.events("approval.granted")[0].detail["approvers"] == "alice,bob"
    assert [e.detail["reason"] for e in console.events("approval.revoked")] == ["campaign cancelled"]
    assert refused_codes(console) == [
        "self_approval",
        "already_decided",
        "comment_required",
        "request_decided",
        "comment_required",
        "grant_not_active",
    ]
    assert all(e.listener == "console" for e in console.events("approval.decided"))


async def _shows_what_is_left(console: Console, client: httpx.AsyncClient, page: str) -> None:
    """The requester's page: in all (from the grant's row) and today (from the counter storage)."""
    assert "3 / 3" in page
    assert "2 of 2 left today" in page  # nothing charged yet
    await service(console).charge("rita", 1)  # what a generation charges, on the counter storage
    assert "1 of 2 left today" in (await client.get("/approvals", headers=PAGE)).text


async def test_the_four_eyes_walk_on_the_pages(console: Console) -> None:
    model = console.d.runtime.services.engine.info.id
    async with console.client() as rita, console.client() as alice, console.client() as bob:
        r_csrf, a_csrf, b_csrf = (
            await signed_in(rita, "rita"),
            await signed_in(alice, "alice"),
            await signed_in(bob, "bob"),
        )
        mine = await rita.get("/approvals", headers=PAGE)
        assert mine.status_code == 200
        assert f'<code id="model">{model}</code>' in mine.text
        assert 'max="30"' in mine.text  # the settings' caps bound the inputs
        assert 'max="50"' in mine.text
        assert 'id="no-requests"' in mine.text

        asked = await rita.post("/approvals", data=ask(r_csrf, model=model), headers=SAME_ORIGIN)
        assert asked.status_code == 303
        assert asked.headers["location"] == "/approvals"
        [record] = service(console).list_requests(requester="rita")
        rid = record.id
        assert (record.status, record.data_classification, record.ticket) == ("pending", "confidential", "CHG-1042")
        assert 'class="request-pending"' in (await rita.get("/approvals", headers=PAGE)).text

        # The requester holds approvals:decide, and still may not decide on her own request.
        own = await rita.post(f"/approvals/inbox/{rid}/approve", data=form(r_csrf), headers=SAME_ORIGIN)
        assert "another approver decides" in refusal(own, 403, "self_approval")

        inbox = await alice.get("/approvals/inbox", headers=PAGE)
        assert f'id="request-{rid}"' in inbox.text
        assert "marketing visuals" in inbox.text
        first = await alice.post(
            f"/approvals/inbox/{rid}/approve", data=form(a_csrf, comment="fine"), headers=SAME_ORIGIN
        )
        assert first.status_code == 303
        assert "1 of 2 approvals" in (await alice.get("/approvals/inbox", headers=PAGE)).text
        again = await alice.post(f"/approvals/inbox/{rid}/approve", data=form(a_csrf), headers=SAME_ORIGIN)
        refusal(again, 409, "already_decided")

        # A rejection needs its comment: the service refuses it, the page says so.
        bare = await bob.post(f"/approvals/inbox/{rid}/reject", data=form(b_csrf, comment=" "), headers=SAME_ORIGIN)
        assert "a rejection needs a comment" in refusal(bare, 400, "comment_required")
        second = await bob.post(f"/approvals/inbox/{rid}/approve", data=form(b_csrf), headers=SAME_ORIGIN)
        assert second.status_code == 303
        late = await bob.post(f"/approvals/inbox/{rid}/approve", data=form(b_csrf), headers=SAME_ORIGIN)
        refusal(late, 409, "request_decided")

        granted = await rita.get("/approvals", headers=PAGE)
        assert 'class="grant-active"' in granted.text
        await _shows_what_is_left(console, rita, granted.text)
        [grant] = service(console).list_grants(principal="rita")
        history = await alice.get("/approvals/grants", headers=PAGE)
        assert f'action="/approvals/grants/{grant.id}/revoke"' in history.text

        no_reason = await alice.post(
            f"/approvals/grants/{grant.id}/revoke", data=form(a_csrf, reason=""), headers=SAME_ORIGIN
        )
        refusal(no_reason, 400, "comment_required")
        revoked = await alice.post(
            f"/approvals/grants/{grant.id}/revoke", data=form(a_csrf, reason="campaign cancelled"), headers=SAME_ORIGIN
        )
        assert revoked.status_code == 303
        history = await alice.get("/approvals/grants", params={"status": "revoked"}, headers=PAGE)
        assert 'class="grant-revoked"' in history.text
        assert "alice: campaign cancelled" in history.text
        assert f'action="/approvals/grants/{grant.id}/revoke"' not in history.text  # nothing left to revoke
        twice = await alice.post(
            f"/approvals/grants/{grant.id}/revoke", data=form(a_csrf, reason="again"), headers=SAME_ORIGIN
        )
        refusal(twice, 409, "grant_not_active")
        assert 'class="grant-revoked"' in (await rita.get("/approvals", headers=PAGE)).text

    walk_was_audited(console)


async def test_refusals_of_the_form_expiry_and_unknown_requests_are_pages(console: Console) -> None:
    model = console.d.runtime.services.engine.info.id
    async with console.client() as gus, console.client() as alice:
        g_csrf, a_csrf = await signed_in(gus, "gus"), await signed_in(alice, "alice")
        too_long = await gus.post(
            "/approvals",
            data=ask(g_csrf, model=model, validity_days=31, purpose="<b>kept</b>", status="x"),
            headers=SAME_ORIGIN,
        )
        assert "approvals.max_validity_days (30)" in refusal(too_long, 400, "validity_over_maximum")
        assert "&lt;b&gt;kept&lt;/b&gt;</textarea>" in too_long.text  # typed values kept, escaped
        over = await gus.post("/approvals", data=ask(g_csrf, model=model, quota_per_day=51), headers=SAME_ORIGIN)
        refusal(over, 400, "quota_over_maximum")
        other = await gus.post("/approvals", data=ask(g_csrf, model="another-model"), headers=SAME_ORIGIN)
        refusal(other, 400, "unknown_model")
        nonsense = await gus.post("/approvals", data=ask(g_csrf, model=model, quota_total="many"), headers=SAME_ORIGIN)
        refusal(nonsense, 400, "invalid_value")
        assert service(console).list_requests() == []

        assert (await gus.post("/approvals", data=ask(g_csrf, model=model), headers=SAME_ORIGIN)).status_code == 303
        [stale] = service(console).list_requests()
        past = datetime.now(UTC) - timedelta(minutes=1)
        with service(console).store.engine.begin() as conn:
            conn.execute(update(ApprovalRequest).where(ApprovalRequest.id == stale.id).values(expires_at=past))
        expired = await alice.post(f"/approvals/inbox/{stale.id}/approve", data=form(a_csrf), headers=SAME_ORIGIN)
        refusal(expired, 409, "request_expired")
        missing = await alice.post("/approvals/inbox/9999/approve", data=form(a_csrf), headers=SAME_ORIGIN)
        refusal(missing, 404, "approval_not_found")
        listed = await alice.get("/approvals/inbox", params={"status": "expired"}, headers=PAGE)
        assert f'id="request-{stale.id}"' in listed.text

        # Filters: by status (pending by default), requester and model.
        assert (await gus.post("/approvals", data=ask(g_csrf, model=model), headers=SAME_ORIGIN)).status_code == 303
        pending = (await alice.get("/approvals/inbox", headers=PAGE)).text
        assert f'id="request-{stale.id}"' not in pending
        assert pending.count('class="request-pending"') == 1
        every = (await alice.get("/approvals/inbox", params={"status": "all"}, headers=PAGE)).text
        assert every.count('id="request-') == 2
        nobody = await alice.get("/approvals/inbox", params={"status": "all", "requester": "rita"}, headers=PAGE)
        assert 'id="no-requests"' in nobody.text
        by_model = await alice.get("/approvals/inbox", params={"status": "all", "model": model}, headers=PAGE)
        assert by_model.text.count('id="request-') == 2
        wrong_model = await alice.get("/approvals/inbox", params={"model": "another-model"}, headers=PAGE)
        assert 'id="no-requests"' in wrong_model.text

        # Forms need the session's CSRF token.
        forged = await alice.post(f"/approvals/inbox/{stale.id}/reject", data={"comment": "x"}, headers=SAME_ORIGIN)
        assert forged.status_code == 403
        assert "csrf_failed" in forged.text
    assert refused_codes(console) == [
        "validity_over_maximum",
        "quota_over_maximum",
        "unknown_model",
        "request_expired",
        "approval_not_found",
    ]


async def test_the_navigation_and_the_pages_follow_the_roles(console: Console) -> None:
    async with console.client() as client:
        for name, link in (("gus", "/approvals"), ("rita", "/approvals"), ("alice", "/approvals/inbox")):
            await signed_in(client, name)
            home = await client.get("/", headers=PAGE)
            assert f'<a href="{link}" id="nav-approvals"' in home.text, name
            await client.post("/logout", data={"csrf_token": csrf_of(home)}, headers=SAME_ORIGIN)
        await signed_in(client, "audrey")
        home = await client.get("/", headers=PAGE)
        assert 'id="nav-approvals"' not in home.text
        for path in ("/approvals", "/approvals/inbox", "/approvals/grants"):
            refused = await client.get(path, headers=PAGE)
            assert refused.status_code == 403, path
            assert "permission_denied" in refused.text, path
    async with console.client() as gus:
        await signed_in(gus, "gus")
        assert (await gus.get("/approvals/inbox", headers=PAGE)).status_code == 403
        assert (await gus.get("/approvals/grants", headers=PAGE)).status_code == 403
        mine = await gus.get("/approvals", headers=PAGE)
        assert mine.status_code == 200
        assert 'href="/approvals/inbox"' not in mine.text
    async with console.client() as alice:
        await signed_in(alice, "alice")
        assert (await alice.get("/approvals", headers=PAGE)).status_code == 403  # approving is not asking
        zh = await alice.get("/approvals/inbox", headers={**PAGE, "accept-language": "zh-CN"})
        assert zh.status_code == 200
        assert "审批人收件箱" in zh.text
