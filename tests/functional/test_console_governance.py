"""Issue 20, items 2 and 3 on the console: the re-certification campaign pages and their JSON API,
and the model-change approval page, through the real console app on a real state database with
console sessions and CSRF-protected forms.

Campaigns: open (a bad quarter, a second campaign for it), the grants listed with who was asked,
confirm and revoke (never one's own grant, a reason to revoke, once each), the signed export
(a zip of FILE and FILE.sig that verifies with the audit key), the close, and the same through the
JSON API. Model changes: on a hash-chained audit store (the records are its events), alice pins,
alice cannot approve (`model_change_self_approval`), bob approves from the console, the approval
is the chain's `model.change_approved` that `serve` believes, then twice (409), a directory that
no longer matches, a non-admin (403) and a missing CSRF token.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.common.factories import make_settings
from tests.functional.test_auth import Deploy, backend, database, deploy
from tests.functional.test_console_approvals import form, refusal
from tests.functional.test_console_sessions import PAGE, PASSWORD, SAME_ORIGIN, Console, Now, signed_in
from tests.functional.test_recertification import grant
from zguard.app.console import create_console_app
from zguard.audit.model_changes import APPROVED, REFUSED, state_of
from zguard.audit.setup import StoreSink, signer
from zguard.audit.store import AuditStore
from zguard.audit.verify import verify_store
from zguard.integrity.manifest import pin
from zguard.services.governance import Governance, governance_service
from zguard.services.model_changes import Operator
from zguard.services.recertification import verify_export
from zguard.services.sessions import SessionService
from zguard.store.approvals import ApprovalStore

FIXTURES = (backend, database, deploy)  # used by name as fixtures
pytestmark = pytest.mark.anyio
QUARTER = f"{datetime.now(UTC).year + 1}Q1"  # always ahead: its end is the default deadline


@pytest.fixture
def console(deploy: Deploy, tmp_path: Path) -> Console:
    """rita (generator and approver), alice and bob (approvers), gus (generator), ada and adam
    (admins), audrey (auditor)."""
    settings = make_settings(
        tmp_path / "state", api_auth={"enabled": True}, generation={"min_side": 16}, console={"totp_required_roles": []}
    )
    d = deploy(settings)
    for name, roles in {
        "rita": ("generator", "approver"),
        "alice": ("approver",),
        "bob": ("approver",),
        "gus": ("generator",),
        "ada": ("admin",),
        "adam": ("admin",),
        "audrey": ("auditor",),
    }.items():
        d.principal(name, *roles, kind="user", password=PASSWORD)
    sessions = SessionService(
        d.settings.console, d.auth, d.store, d.auth.derived_key(b"console sessions"), audit=d.audit, clock=Now()
    )
    return Console(d, sessions, Now())


def governance(c: Console) -> Governance:
    found = c.d.runtime.services.governance
    assert found is not None
    return found


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# --- re-certification campaigns ------------------------------------------------------------------


async def test_a_campaign_on_the_pages(console: Console) -> None:  # noqa: PLR0915 - one walkthrough
    grants = ApprovalStore(console.d.store.engine)
    rita_grant, gus_grant = grant(grants, "rita", "alice"), grant(grants, "gus", "bob")
    async with console.client() as alice, console.client() as rita, console.client() as gus:
        a_csrf, r_csrf = await signed_in(alice, "alice"), await signed_in(rita, "rita")
        await signed_in(gus, "gus")
        empty = await alice.get("/approvals/campaigns", headers=PAGE)
        assert empty.status_code == 200
        assert 'id="no-campaigns"' in empty.text
        assert 'id="nav-campaigns"' in empty.text
        assert (await gus.get("/approvals/campaigns", headers=PAGE)).status_code == 403

        bad = await alice.post("/approvals/campaigns", data=form(a_csrf, quarter="2026Q5"), headers=SAME_ORIGIN)
        assert "YEARQn" in refusal(bad, 400, "invalid_value")
        assert 'value="2026Q5"' in bad.text  # the typed value kept
        opened = await alice.post("/approvals/campaigns", data=form(a_csrf, quarter=QUARTER), headers=SAME_ORIGIN)
        assert opened.status_code == 303
        [campaign] = governance(console).campaigns.list_campaigns()
        assert opened.headers["location"] == f"/approvals/campaigns/{campaign.id}"
        again = await rita.post("/approvals/campaigns", data=form(r_csrf, quarter=QUARTER), headers=SAME_ORIGIN)
        refusal(again, 409, "campaign_exists")

        url = f"/approvals/campaigns/{campaign.id}"
        shown = await alice.get(url, headers=PAGE)
        assert shown.status_code == 200
        assert f'id="item-{rita_grant}" class="item-pending"' in shown.text
        assert "2 in all: 0 confirmed, 0 revoked, 0 lapsed, 2 pending" in shown.text
        own = await rita.post(f"{url}/grants/{rita_grant}/confirm", data=form(r_csrf), headers=SAME_ORIGIN)
        assert "another approver re-certifies it" in refusal(own, 403, "own_grant_recertification")
        confirmed = await rita.post(
            f"{url}/grants/{gus_grant}/confirm", data=form(r_csrf, comment="still needed"), headers=SAME_ORIGIN
        )
        assert confirmed.status_code == 303
        twice = await alice.post(f"{url}/grants/{gus_grant}/confirm", data=form(a_csrf), headers=SAME_ORIGIN)
        refusal(twice, 409, "already_decided")
        bare = await alice.post(f"{url}/grants/{rita_grant}/revoke", data=form(a_csrf, reason=" "), headers=SAME_ORIGIN)
        refusal(bare, 400, "comment_required")
        revoked = await alice.post(
            f"{url}/grants/{rita_grant}/revoke", data=form(a_csrf, reason="left the team"), headers=SAME_ORIGIN
        )
        assert revoked.status_code == 303
        assert grants.get_grant(rita_grant).status == "revoked"
        page = (await alice.get(url, headers=PAGE)).text
        assert f'id="item-{gus_grant}" class="item-confirmed"' in page
        assert "rita" in page
        assert "still needed" in page
        assert "left the team" in page

        # The signed evidence: one zip, the document and its signature over the exact bytes.
        download = await alice.get(f"{url}/export", params={"format": "csv"}, headers=PAGE)
        assert download.status_code == 200
        assert download.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
            assert sorted(archive.namelist()) == [f"campaign-{campaign.id}.csv", f"campaign-{campaign.id}.csv.sig"]
            document = archive.read(f"campaign-{campaign.id}.csv")
            signature = archive.read(f"campaign-{campaign.id}.csv.sig")
        public = signer(console.d.settings).public_key
        assert verify_export(document, signature, public)
        assert not verify_export(document.replace(b"left the team", b"left the tean"), signature, public)
        assert b"confirmed,rita" in document
        assert b"revoked,alice" in document

        forged = await alice.post(f"{url}/close", data={}, headers=SAME_ORIGIN)  # no CSRF token
        assert forged.status_code == 403
        assert "csrf_failed" in forged.text
        closed = await alice.post(f"{url}/close", data=form(a_csrf), headers=SAME_ORIGIN)
        assert closed.status_code == 303
        page = (await alice.get(url, headers=PAGE)).text
        assert 'class="campaign-closed"' in page
        assert 'id="close-campaign"' not in page
        late = await alice.post(f"{url}/close", data=form(a_csrf), headers=SAME_ORIGIN)
        refusal(late, 409, "campaign_closed")
        zh = await alice.get(url, headers={**PAGE, "accept-language": "zh-CN"})
        assert "访问复核" in zh.text  # the nav link, from locale/zh_CN/governance.po
        assert "已关闭" in zh.text
        missing = await alice.get("/approvals/campaigns/9999", headers=PAGE)
        assert missing.status_code == 404
        assert "approval_not_found" in missing.text

    kinds = [e.type for e in console.d.audit.events if e.type.startswith("approval.")]
    for kind in ("approval.campaign_opened", "approval.confirmed", "approval.revoked", "approval.campaign_closed"):
        assert kind in kinds
    assert [e.principal for e in console.events("approval.campaign_exported")] == ["alice"]
    assert [e.code for e in console.events("approval.refused")] == [
        "invalid_value",
        "campaign_exists",
        "own_grant_recertification",
        "already_decided",
        "comment_required",
        "campaign_closed",
    ]
    assert all(e.listener == "console" for e in console.events("approval.confirmed"))


async def test_the_campaign_json_api(console: Console) -> None:
    grants = ApprovalStore(console.d.store.engine)
    gus_grant = grant(grants, "gus", "bob")
    alice, gus, bob = console.d.issue("alice"), console.d.issue("gus"), console.d.issue("bob")
    api = "/console/api/approvals/campaigns"
    async with console.client() as client:
        denied = await client.get(api, headers=bearer(gus))
        assert denied.status_code == 403
        assert denied.json()["error"]["code"] == "permission_denied"
        opened = await client.post(api, json={"quarter": QUARTER, "deadline": "not a day"}, headers=bearer(alice))
        assert opened.status_code == 400
        assert opened.json()["error"]["code"] == "invalid_value"
        opened = await client.post(api, json={"quarter": QUARTER}, headers=bearer(alice))
        assert opened.status_code == 201, opened.text
        body = opened.json()
        assert (body["status"], body["grants"], body["pending"]) == ("open", 1, 1)
        assert body["items"][0] == {
            "grant": gus_grant,
            "principal": "gus",
            "asked": ["bob"],
            "decision": "pending",
            "decider": None,
            "decided_at": None,
            "comment": None,
        }
        cid = body["id"]
        assert [c["id"] for c in (await client.get(api, headers=bearer(bob))).json()["data"]] == [cid]
        no_reason = await client.post(
            f"{api}/{cid}/grants/{gus_grant}/revoke", json={"reason": ""}, headers=bearer(bob)
        )
        assert no_reason.status_code == 400
        confirmed = await client.post(f"{api}/{cid}/grants/{gus_grant}/confirm", json={}, headers=bearer(bob))
        assert confirmed.status_code == 200
        assert confirmed.json()["confirmed"] == 1
        exported = await client.get(f"{api}/{cid}/export", params={"format": "json"}, headers=bearer(alice))
        assert exported.status_code == 200
        evidence = exported.json()
        signature = base64.b64decode(evidence["signature"])
        public = signer(console.d.settings).public_key
        assert verify_export(evidence["content"].encode(), signature, public)
        assert evidence["filename"] == f"campaign-{cid}.json"
        closed = await client.post(f"{api}/{cid}/close", headers=bearer(alice))
        assert closed.json()["status"] == "closed"
        again = await client.post(f"{api}/{cid}/close", headers=bearer(alice))
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "campaign_closed"
        assert (await client.get(f"{api}/9999", headers=bearer(alice))).status_code == 404


# --- model changes ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Changes:
    console: Console
    store: AuditStore
    governance: Governance

    def client(self) -> httpx.AsyncClient:
        """The console on the hash-chained store (the records of model changes are its events)."""
        services = dataclasses.replace(
            self.console.d.runtime.services, sessions=self.console.sessions, governance=self.governance
        )
        app = create_console_app(self.console.d.settings, services)
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 50000)), base_url="http://console.test"
        )

    def pinned(self, where: Path, by: str) -> tuple[int, str]:
        """A model directory pinned by admin `by` (`zguard model pin DIR --as BY`): (request seq, digest)."""
        where.mkdir()
        (where / "model_index.json").write_text('{"_class_name": "ZImagePipeline"}', encoding="utf-8")
        (where / "transformer.safetensors").write_bytes(b"\x00" * 64)
        manifest = pin(where)
        changes = self.governance.model_changes
        assert changes is not None
        request = changes.request(by, self.console.d.issue(by), manifest.digest, where, Operator("cli:zguard", {}))
        return request.seq, manifest.digest


@pytest.fixture
def changes(console: Console) -> Changes:
    store = AuditStore(console.d.store.engine)
    built = governance_service(console.d.settings, console.d.auth, StoreSink(store))
    assert built is not None
    return Changes(console, store, built)


async def test_a_second_admin_approves_a_model_change_on_the_console(changes: Changes, tmp_path: Path) -> None:
    seq, digest = changes.pinned(tmp_path / "model", "ada")
    page_url = "/approvals/model-changes"
    async with changes.client() as ada, changes.client() as adam, changes.client() as alice:
        ada_csrf, adam_csrf = await signed_in(ada, "ada"), await signed_in(adam, "adam")
        await signed_in(alice, "alice")
        home = await adam.get("/", headers=PAGE)
        assert f'<a href="{page_url}" id="nav-approvals"' in home.text  # admins' way in
        listed = await adam.get(page_url, headers=PAGE)
        assert listed.status_code == 200
        assert f'id="change-{seq}" class="change-pending"' in listed.text
        assert 'id="nav-campaigns"' not in listed.text  # an admin does not decide on access
        refused = await alice.get(page_url, headers=PAGE)
        assert refused.status_code == 403  # an approver is not an admin
        assert "permission_denied" in refused.text

        own = await ada.post(f"{page_url}/{seq}/approve", data=form(ada_csrf), headers=SAME_ORIGIN)
        assert "a model change needs a second admin" in refusal(own, 403, "model_change_self_approval")
        forged = await adam.post(f"{page_url}/{seq}/approve", data={}, headers=SAME_ORIGIN)
        assert forged.status_code == 403
        assert "csrf_failed" in forged.text
        assert not state_of(changes.store, digest).approved

        approved = await adam.post(f"{page_url}/{seq}/approve", data=form(adam_csrf), headers=SAME_ORIGIN)
        assert approved.status_code == 303
        assert f'id="change-{seq}" class="change-approved"' in (await adam.get(page_url, headers=PAGE)).text
        twice = await adam.post(f"{page_url}/{seq}/approve", data=form(adam_csrf), headers=SAME_ORIGIN)
        refusal(twice, 409, "model_change_already_approved")
        missing = await adam.post(f"{page_url}/9999/approve", data=form(adam_csrf), headers=SAME_ORIGIN)
        refusal(missing, 404, "not_found")

    # What serve believes: an intact approval by another admin, on the chain.
    state = state_of(changes.store, digest)
    assert state.approval is not None
    assert (state.approval.principal, state.approval.requester, state.approval.request_seq) == ("adam", "ada", seq)
    assert state.approval.os_account == "console:adam"
    assert verify_store(changes.store, None).problem is None
    events = changes.store.search(type_prefix="model.change_", limit=50)
    approvals = [e for e in events if e.type == APPROVED]
    assert len(approvals) == 1
    assert '"auth_method":"session"' in approvals[0].body
    assert '"listener":"console"' in approvals[0].body
    refusals = [e for e in events if e.type == REFUSED]
    assert [e.body.count("model_change_self_approval") > 0 for e in refusals[:1]] == [True]
    assert len(refusals) == 3  # self-approval, the second approval, the missing request


async def test_the_model_change_json_api_and_a_changed_directory(changes: Changes, tmp_path: Path) -> None:
    seq, _digest = changes.pinned(tmp_path / "model", "ada")
    adam, bob = changes.console.d.issue("adam"), changes.console.d.issue("bob")
    api = "/console/api/approvals/model-changes"
    async with changes.client() as client:
        assert (await client.get(api, headers=bearer(bob))).status_code == 403
        [row] = (await client.get(api, headers=bearer(adam))).json()["data"]
        assert (row["seq"], row["requester"], row["status"], row["approver"]) == (seq, "ada", "pending", None)

        (tmp_path / "model" / "transformer.safetensors").write_bytes(b"\x00" * 65)  # changed after the pin
        changed = await client.post(f"{api}/{seq}/approve", headers=bearer(adam))
        assert changed.status_code == 403
        assert changed.json()["error"]["code"] == "model_change_refused"
        assert "does not match" in changed.json()["error"]["message"]
        (tmp_path / "model" / "transformer.safetensors").write_bytes(b"\x00" * 64)

        narrowed = changes.console.d.issue("adam", roles=["viewer"])  # a token without admin
        assert (await client.post(f"{api}/{seq}/approve", headers=bearer(narrowed))).status_code == 403
        done = await client.post(f"{api}/{seq}/approve", headers=bearer(adam))
        assert done.status_code == 200, done.text
        assert (done.json()["approver"], done.json()["requester"]) == ("adam", "ada")
        again = await client.post(f"{api}/{seq}/approve", headers=bearer(adam))
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "model_change_already_approved"
