"""Issue 18, item 4: the console's model-and-system and prompt-policy pages and their JSON twins.

The real console app over the real policy lists (the shipped guide and bank lists) and the state
database of tests/functional/test_console_sessions.py."""

from __future__ import annotations

import re

import pytest

from tests.functional.test_auth import backend, database, deploy  # noqa: F401
from tests.functional.test_console_sessions import PAGE, SAME_ORIGIN, Console, console, signed_in  # noqa: F401

pytestmark = pytest.mark.anyio
BLOCKED = "海报标题：機\u200b密 文件"  # a banned term behind a zero-width space and traditional script
ORIGIN = {"origin": "http://console.test"}


async def test_system_page_shows_the_model_queue_and_audit_state_to_system_readers(console: Console) -> None:
    async with console.client() as admin, console.client() as designer:
        await signed_in(admin, "ada")
        await signed_in(designer, "dana")
        page = await admin.get("/system", headers=PAGE)
        api = (await admin.get("/console/api/system")).json()
        refused = await designer.get("/system", headers=PAGE)
        refused_api = await designer.get("/console/api/system")
    assert page.status_code == 200
    assert console.d.runtime.services.engine.info.id in page.text
    assert api["model"]["model"] == console.d.runtime.services.engine.info.id
    assert api["model"]["ready"] is True
    assert "audit" in api
    assert refused.status_code == 403
    assert "permission_denied" in refused.text
    assert refused_api.status_code == 403
    checks = {f["check"]: f for f in api["doctor"]}
    assert "model_storage_encrypted" in checks  # the host checks `zguard doctor` runs, with their fixes
    assert 'id="doctor"' in page.text
    assert all(f["check"] in page.text for f in api["doctor"])


async def test_policy_page_lists_each_list_with_its_sha256(console: Console) -> None:
    hashes = console.d.runtime.services.policy.hashes  # type: ignore[union-attr]
    assert hashes
    async with console.client() as admin:
        await signed_in(admin, "ada")
        page = await admin.get("/policy", headers=PAGE)
        api = (await admin.get("/console/api/policy")).json()
    assert page.status_code == 200
    for name, digest in hashes.items():
        assert name in page.text
        assert digest in page.text
    assert api["lists"] == hashes
    assert api["terms"] > 50  # the shipped guide and bank lists


async def test_testing_a_prompt_gives_the_apis_verdict_without_the_term(console: Console) -> None:
    async with console.client() as admin, console.client() as designer:
        csrf = await signed_in(admin, "ada")
        blocked = await admin.post("/policy/test", data={"csrf_token": csrf, "prompt": BLOCKED}, headers=SAME_ORIGIN)
        fine = await admin.post(
            "/policy/test", data={"csrf_token": csrf, "prompt": "a red bicycle by a lake"}, headers=SAME_ORIGIN
        )
        escaped = await admin.post(
            "/policy/test", data={"csrf_token": csrf, "prompt": "<script>alert(1)</script>"}, headers=SAME_ORIGIN
        )
        api = await admin.post(
            "/console/api/policy/test", json={"prompt": BLOCKED}, headers={**ORIGIN, "x-csrf-token": csrf}
        )
        empty = await admin.post(
            "/console/api/policy/test", json={"prompt": ""}, headers={**ORIGIN, "x-csrf-token": csrf}
        )
        designer_csrf = await signed_in(designer, "dana")
        refused = await designer.post(
            "/policy/test", data={"csrf_token": designer_csrf, "prompt": BLOCKED}, headers=SAME_ORIGIN
        )
    assert blocked.status_code == 200
    assert re.search(r'id="verdict">[^<]*<strong>blocked</strong>', blocked.text)
    assert "confidential" in blocked.text
    assert "机密" not in blocked.text.split('id="verdict"')[1]  # the category, never the matched term
    assert "<strong>allowed</strong>" in fine.text
    assert "<script>alert(1)</script>" not in escaped.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in escaped.text
    assert api.json()["outcome"] == "blocked"
    assert {f["category"] for f in api.json()["findings"]} == {"confidential"}
    assert all("term" not in f for f in api.json()["findings"])
    assert empty.status_code == 400
    assert empty.json()["error"]["code"] == "invalid_value"
    assert refused.status_code == 403


async def test_reload_is_the_audited_reload_and_needs_the_token(console: Console) -> None:
    async with console.client() as admin:
        csrf = await signed_in(admin, "ada")
        forged = await admin.post("/policy/reload", data={}, headers=SAME_ORIGIN)
        done = await admin.post("/policy/reload", data={"csrf_token": csrf}, headers=SAME_ORIGIN)
        api = await admin.post("/console/api/policy/reload", headers={**ORIGIN, "x-csrf-token": csrf})
    assert forged.status_code == 403
    assert done.status_code == 303
    assert api.json()["ok"] is True
    reloads = [e for e in console.d.audit.events if e.type == "policy.reloaded"]
    assert [e.detail["trigger"] for e in reloads] == ["console", "console"]
    assert console.d.runtime.services.policy.reloads["ok"] == 2  # type: ignore[union-attr]


async def test_the_pages_speak_chinese(console: Console) -> None:
    async with console.client() as admin:
        await signed_in(admin, "ada")
        system = await admin.get("/system", headers={**PAGE, "accept-language": "zh-CN"})
        policy = await admin.get("/policy", headers={**PAGE, "accept-language": "zh-CN"})
    assert "当前模型" in system.text
    assert "生效的词表" in policy.text
    assert "重新加载词表" in policy.text
