"""The policy page's reload history: the last reloads read back from the audit trail.

The real console app over a list file of the test's own (so a reload can fail), the state
database and the in-memory sink of tests/functional/test_console_sessions.py (also a reader)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import httpx
import pytest

from tests.common.factories import LOOPBACK_PEER, make_settings
from tests.functional.test_auth import Deploy, backend, database, deploy  # noqa: F401
from tests.functional.test_console_sessions import PAGE, PASSWORD, SAME_ORIGIN, Console, Now, signed_in
from zguard.app.console import create_console_app
from zguard.services.prompt_policy import reload_and_audit
from zguard.services.sessions import SessionService

pytestmark = pytest.mark.anyio
ORIGIN = {"origin": "http://console.test"}


@dataclasses.dataclass
class Listed:
    console: Console
    path: Path

    def client(self, **services: object) -> httpx.AsyncClient:
        d = self.console.d
        wired = dataclasses.replace(d.runtime.services, sessions=self.console.sessions, **services)  # type: ignore[arg-type]
        app = create_console_app(d.settings, wired)
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=LOOPBACK_PEER), base_url="http://console.test"
        )


@pytest.fixture
def listed(deploy: Deploy, tmp_path: Path) -> Listed:
    """ada (admin), vera (viewer: system:read, no audit:read), dana (generator: neither)."""
    path = tmp_path / "terms.txt"
    path.write_text("北极星\n", encoding="utf-8")
    settings = make_settings(
        tmp_path / "state",
        api_auth={"enabled": True},
        generation={"min_side": 16},
        console={"totp_required_roles": []},
        policy={"banned_terms_files": [str(path)]},
    )
    d = deploy(settings)
    d.principal("ada", "admin", kind="user", password=PASSWORD)
    d.principal("vera", "viewer", kind="user", password=PASSWORD)
    d.principal("dana", "generator", kind="user", password=PASSWORD)
    now = Now()
    sessions = SessionService(
        d.settings.console, d.auth, d.store, d.auth.derived_key(b"console sessions"), audit=d.audit, clock=now
    )
    return Listed(Console(d, sessions, now), path)


async def two_reloads(listed: Listed, broken: bytes = b"@oops\n") -> str:
    """A good reload then a failing one (a bad directive in the list), both by ada; the CSRF token."""
    async with listed.client() as admin:
        csrf = await signed_in(admin, "ada")
        good = await admin.post("/policy/reload", data={"csrf_token": csrf}, headers=SAME_ORIGIN)
        listed.path.write_bytes(broken)
        bad = await admin.post("/console/api/policy/reload", headers={**ORIGIN, "x-csrf-token": csrf})
    assert good.status_code == 303
    assert bad.json()["ok"] is False
    return csrf


async def test_reloads_show_newest_first_with_outcome_source_and_hashes(listed: Listed) -> None:
    await two_reloads(listed)
    listed.console.d.runtime.services.policy.reload()  # type: ignore[union-attr]  # not audited: not shown
    async with listed.client() as admin:
        await signed_in(admin, "ada")
        page = await admin.get("/policy", headers=PAGE)
        api = (await admin.get("/console/api/policy/reloads")).json()
    assert api["available"] is True
    failed, done = api["reloads"]
    assert failed["outcome"] == "failed"
    assert failed["code"] == "policy_lists_unusable"
    assert "unknown directive" in failed["error"]
    assert failed["lists"] == {str(listed.path): hashlib.sha256(b"@oops\n").hexdigest()}
    assert done["outcome"] == "ok"
    assert done["error"] is None
    assert done["lists"] == {str(listed.path): hashlib.sha256("北极星\n".encode()).hexdigest()}
    assert {r["source"] for r in api["reloads"]} == {"console"}
    assert {r["principal"] for r in api["reloads"]} == {"ada"}
    assert failed["time"] >= done["time"]
    assert page.status_code == 200
    table = page.text[page.text.index('id="reload-history"') :]
    assert table.index(hashlib.sha256(b"@oops\n").hexdigest()) < table.index(done["lists"][str(listed.path)])
    assert "policy_lists_unusable" in table
    assert 'class="reload-failed"' in table
    assert 'class="reload-ok"' in table


async def test_a_signal_reload_shows_as_a_signal_without_a_principal(listed: Listed) -> None:
    services = listed.console.d.runtime.services
    reload_and_audit(services.policy, services.audit, "SIGHUP")  # type: ignore[arg-type]
    async with listed.client() as admin:
        await signed_in(admin, "ada")
        api = (await admin.get("/console/api/policy/reloads")).json()
        page = await admin.get("/policy", headers={**PAGE, "accept-language": "zh-CN"})
    (row,) = api["reloads"]
    assert (row["source"], row["principal"], row["outcome"]) == ("signal", None, "ok")
    assert "信号（SIGHUP 或 zguard policy reload）" in page.text
    assert "重新加载记录" in page.text


async def test_a_viewer_without_audit_read_sees_the_history(listed: Listed) -> None:
    await two_reloads(listed)
    async with listed.client() as viewer:
        await signed_in(viewer, "vera")
        page = await viewer.get("/policy", headers=PAGE)
        api = await viewer.get("/console/api/policy/reloads")
        audit = await viewer.get("/audit", headers=PAGE)
    assert audit.status_code == 403  # not an auditor
    assert page.status_code == 200
    assert page.text.count('<tr class="reload-') == 2
    assert 'action="/policy/reload"' not in page.text  # viewing is not managing
    assert len(api.json()["reloads"]) == 2


async def test_without_the_view_permission_the_history_is_refused(listed: Listed) -> None:
    async with listed.client() as generator:
        await signed_in(generator, "dana")
        page = await generator.get("/policy", headers=PAGE)
        api = await generator.get("/console/api/policy/reloads")
    assert page.status_code == 403
    assert "permission_denied" in page.text
    assert api.status_code == 403
    assert api.json()["error"]["code"] == "permission_denied"


async def test_without_a_readable_store_the_history_is_unavailable(listed: Listed) -> None:
    await two_reloads(listed)
    async with listed.client(audit_reader=None) as admin:
        await signed_in(admin, "ada")
        page = await admin.get("/policy", headers=PAGE)
        api = await admin.get("/console/api/policy/reloads")
    assert page.status_code == 200
    assert 'id="history-unavailable"' in page.text
    assert 'id="reload-history"' not in page.text
    assert api.status_code == 200
    assert api.json() == {"available": False, "reloads": []}


async def test_markup_in_an_error_message_is_escaped(listed: Listed) -> None:
    await two_reloads(listed, broken=b"@<script>alert(1)</script>\n")
    async with listed.client() as admin:
        await signed_in(admin, "ada")
        page = await admin.get("/policy", headers=PAGE)
    assert page.status_code == 200
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;" in page.text
