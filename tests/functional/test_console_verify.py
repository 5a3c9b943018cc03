"""Issue 18, audit: the console's "verify now" — `zguard audit verify`'s check run by the server,
one at a time, its progress shown, its start and result in the trail.

The runs are on a real hash-chained trail in SQLite (test_console_audit's `audited`); where a job
has to stay running, the verification function is wrapped to wait on an event (our own job
logic is under test there, not the chain's)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.common.audit import append_events
from tests.functional.test_auth import KEY, backend, database, deploy  # noqa: F401
from tests.functional.test_console_audit import Audited, audited, trail  # noqa: F401
from tests.functional.test_console_sessions import (  # noqa: F401
    PAGE,
    PASSWORD,
    SAME_ORIGIN,
    Console,
    console,
    signed_in,
)
from zguard.app.console import verify as console_verify
from zguard.audit.verify import Report, verify_store

pytestmark = pytest.mark.anyio

API = "/console/api/audit/verify"
WAIT_S = 20.0


async def finished(client: httpx.AsyncClient) -> dict[str, Any]:
    """The job's state once it is no longer running (the API, polled as verify.js does)."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        state: dict[str, Any] = (await client.get(API)).json()
        if state["state"] != "running":
            return state
        assert asyncio.get_running_loop().time() < deadline, state
        await asyncio.sleep(0.02)


def events(audited: Audited, kind: str) -> list[dict[str, Any]]:
    return [b for b in audited.bodies() if b["type"] == kind]


class Held:
    """`verify_store` wrapped so the job reports some progress and then waits to be released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release = threading.Event()
        self.calls = 0
        real = verify_store

        def held(*args: Any, **kwargs: Any) -> Report:
            self.calls += 1
            kwargs["progress"](2)
            assert self.release.wait(20)
            return real(*args, **kwargs)

        monkeypatch.setattr(console_verify, "verify_store", held)


# --- a run -----------------------------------------------------------------------------------


async def test_an_auditor_verifies_the_chain_from_the_audit_page_and_it_is_intact(audited: Audited) -> None:
    append_events(audited.trail.store, 30)
    async with audited.client() as client:
        csrf = await signed_in(client, "audrey")
        audit_page = await client.get("/audit", headers=PAGE)
        idle = await client.get(API)
        started = await client.post("/audit/verify", data={"csrf_token": csrf}, headers=SAME_ORIGIN)
        done = await finished(client)
        page = await client.get("/audit/verify", headers=PAGE)
    assert 'id="verify-now"' in audit_page.text
    assert 'action="/audit/verify"' in audit_page.text
    assert idle.json()["state"] == "idle"
    assert (started.status_code, started.headers["location"]) == (303, "/audit/verify")
    assert done["state"] == "done"
    assert done["ok"] is True
    report = done["report"]
    assert done["checked"] == done["total"] == report["events"] == report["head_seq"] - report["base_seq"]
    assert done["total"] >= 30
    assert report["signatures_checked"] is True
    assert report["problem"] is None
    assert done["by"] == "audrey"
    assert done["started_at"] <= done["finished_at"]
    assert page.status_code == 200
    assert 'id="verify-result" data-ok="true"' in page.text
    assert f"Audit trail intact: {report['events']} event(s)" in page.text
    assert "<progress" not in page.text
    assert 'http-equiv="refresh"' not in page.text  # nothing left to refresh for
    assert 'id="verify-form"' in page.text  # verify again


async def test_a_tampered_row_is_named_by_its_seq(audited: Audited) -> None:
    append_events(audited.trail.store, 10)
    [row] = audited.trail.store.search(after_seq=3, limit=1)
    forged = row.body.replace('"principal":"alice"', '"principal":"mallory"')
    with audited.trail.store.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET body = :b WHERE seq = 4"), {"b": forged})
    async with audited.client() as client:
        csrf = await signed_in(client, "audrey")
        started = await client.post(API, headers={"origin": "http://console.test", "x-csrf-token": csrf})
        done = await finished(client)
        page = await client.get("/audit/verify", headers=PAGE)
    assert started.status_code == 202
    assert started.json()["started"] is True
    assert started.json()["state"] == "running"
    assert done["state"] == "done"
    assert done["ok"] is False
    assert done["report"]["problem"]["kind"] == "edited"
    assert done["report"]["problem"]["seq"] == 4
    assert "event 4 was edited" in done["report"]["problem"]["message"]
    assert 'id="verify-result" data-ok="false"' in page.text
    assert "Audit trail NOT intact: edited at event 4." in page.text
    [result] = events(audited, "audit.verified")
    assert (result["outcome"], result["code"]) == ("failed", "audit_chain_broken")
    assert (result["detail"]["problem_kind"], result["detail"]["problem_seq"]) == ("edited", 4)
    assert result["detail"]["ok"] is False


async def test_the_start_and_the_result_are_audit_events(audited: Audited) -> None:
    async with audited.client() as client:
        csrf = await signed_in(client, "audrey")
        await client.post("/audit/verify", data={"csrf_token": csrf}, headers=SAME_ORIGIN)
        done = await finished(client)
    [start] = events(audited, "audit.verify")
    [result] = events(audited, "audit.verified")
    assert start["principal"] == result["principal"] == "audrey"
    assert start["outcome"] == "allowed"
    assert start["http"]["path"] == "/audit/verify"
    assert start["detail"]["started"] is True
    assert start["detail"]["total"] == done["total"]
    assert start["detail"]["head_seq"] == done["report"]["head_seq"]
    assert (result["outcome"], result["code"]) == ("done", None)
    assert result["request_id"] == start["request_id"]  # the result names the request that started it
    assert result["detail"]["ok"] is True
    assert result["detail"]["checked"] == result["detail"]["total"] == done["total"]
    assert result["detail"]["checkpoints"] == done["report"]["checkpoints"]
    assert isinstance(result["detail"]["duration_ms"], int)
    assert result["seq"] > start["seq"]


async def test_the_store_failing_mid_run_is_a_failed_job_and_event(
    audited: Audited, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Report:
        raise OSError("disk gone")

    monkeypatch.setattr(console_verify, "verify_store", broken)
    async with audited.client() as client:
        csrf = await signed_in(client, "audrey")
        await client.post("/audit/verify", data={"csrf_token": csrf}, headers=SAME_ORIGIN)
        done = await finished(client)
        page = await client.get("/audit/verify", headers=PAGE)
    assert done["state"] == "failed"
    assert done["ok"] is False
    assert done["report"]["ok"] is False
    assert done["report"]["error"]["code"] == "audit_unavailable"
    assert "disk gone" not in str(done)
    assert "disk gone" not in page.text
    assert 'data-code="audit_unavailable"' in page.text
    [result] = events(audited, "audit.verified")
    assert (result["outcome"], result["code"]) == ("failed", "audit_unavailable")


# --- one at a time, progress -----------------------------------------------------------------


async def test_a_second_start_while_one_runs_joins_it_and_progress_is_shown(
    audited: Audited, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = Held(monkeypatch)
    append_events(audited.trail.store, 5)
    async with audited.client() as client, audited.client() as other:
        csrf = await signed_in(client, "audrey")
        other_csrf = await signed_in(other, "audrey")
        first = await client.post(API, headers={"origin": "http://console.test", "x-csrf-token": csrf})
        second = await other.post(API, headers={"origin": "http://console.test", "x-csrf-token": other_csrf})
        form = await client.post("/audit/verify", data={"csrf_token": csrf}, headers=SAME_ORIGIN)
        running = await client.get("/audit/verify", headers=PAGE)
        joined = await client.get(form.headers["location"], headers=PAGE)
        for _ in range(200):
            state = (await client.get(API)).json()
            if state["checked"] == 2:
                break
            await asyncio.sleep(0.02)
        held.release.set()
        done = await finished(client)
        await finished(other)
        again = await client.post(API, headers={"origin": "http://console.test", "x-csrf-token": csrf})
        await finished(client)
    assert first.json()["started"] is True
    # the other client's app is another process's console: its own single job
    assert second.json()["started"] is True
    assert form.status_code == 303
    assert form.headers["location"] == "/audit/verify?joined=1"
    assert 'id="verify-joined"' in joined.text
    assert 'id="verify-joined"' not in running.text
    assert state["state"] == "running"
    assert (state["checked"], state["total"]) == (2, first.json()["total"])
    assert '<progress id="verify-progress" value="' in running.text
    assert f'max="{first.json()["total"]}"' in running.text
    assert '<noscript><meta http-equiv="refresh" content="2"></noscript>' in running.text
    assert '<script src="/static/verify.js" defer></script>' in running.text
    assert 'id="verify-form"' not in running.text  # no second start offered while one runs
    assert done["state"] == "done"
    assert done["ok"] is True
    assert again.json()["started"] is True  # a finished job does not block the next
    assert held.calls == 3  # client: two runs; other: one; the joined starts ran nothing
    starts = [b["detail"]["started"] for b in events(audited, "audit.verify") if b["principal"] == "audrey"]
    assert sorted(starts) == [False, True, True, True]


async def test_the_same_client_posting_twice_runs_one_job(audited: Audited, monkeypatch: pytest.MonkeyPatch) -> None:
    held = Held(monkeypatch)
    async with audited.client() as client:
        csrf = await signed_in(client, "audrey")
        headers = {"origin": "http://console.test", "x-csrf-token": csrf}
        first, second = await asyncio.gather(client.post(API, headers=headers), client.post(API, headers=headers))
        held.release.set()
        await finished(client)
    assert sorted([first.json()["started"], second.json()["started"]]) == [False, True]
    assert first.json()["started_at"] == second.json()["started_at"]
    assert held.calls == 1
    assert len(events(audited, "audit.verified")) == 1


async def test_the_progress_script_is_served_and_writes_text_only(audited: Audited) -> None:
    async with audited.client() as client:
        script = await client.get("/static/verify.js")
    assert script.status_code == 200
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "job.dataset.api" in script.text  # the page names the API it polls
    assert "textContent" in script.text
    assert "innerHTML" not in script.text


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dana", "ada"])
async def test_without_audit_read_page_and_api_are_refused(audited: Audited, name: str) -> None:
    async with audited.client() as client:
        csrf = await signed_in(client, name)
        page = await client.get("/audit/verify", headers=PAGE)
        form = await client.post("/audit/verify", data={"csrf_token": csrf}, headers=SAME_ORIGIN)
        api = await client.get(API)
        start = await client.post(API, headers={"origin": "http://console.test", "x-csrf-token": csrf})
    for resp in (page, form):
        assert resp.status_code == 403
        assert "permission_denied" in resp.text
    for resp in (api, start):
        assert resp.status_code == 403
        assert resp.json()["error"]["code"] == "permission_denied"
    assert events(audited, "audit.verified") == []


async def test_a_post_without_the_csrf_token_is_refused(audited: Audited) -> None:
    async with audited.client() as client:
        await signed_in(client, "audrey")
        form = await client.post("/audit/verify", data={}, headers=SAME_ORIGIN)
        api = await client.post(API, headers={"origin": "http://console.test"})
        state = (await client.get(API)).json()
    assert form.status_code == 403
    assert "csrf_failed" in form.text
    assert api.status_code == 403
    assert api.json()["error"]["code"] == "csrf_failed"
    assert state["state"] == "idle"  # nothing started
    assert events(audited, "audit.verified") == []


async def test_without_a_readable_store_it_is_unavailable_not_an_error(audited: Audited) -> None:
    async with audited.client(audit_reader=None) as client:
        csrf = await signed_in(client, "audrey")
        page = await client.get("/audit/verify", headers=PAGE)
        form = await client.post("/audit/verify", data={"csrf_token": csrf}, headers=SAME_ORIGIN)
        api = await client.get(API)
        start = await client.post(API, headers={"origin": "http://console.test", "x-csrf-token": csrf})
        audit_page = await client.get("/audit", headers=PAGE)
    for resp in (page, form):
        assert resp.status_code == 503
        assert 'id="verify-unavailable"' in resp.text
        assert 'id="verify-form"' not in resp.text
    for resp in (api, start):
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "audit_unavailable"
    assert 'id="verify-now"' not in audit_page.text
    [refused] = [b for b in events(audited, "audit.verify") if b["http"]["path"] == "/audit/verify"]
    assert (refused["outcome"], refused["code"]) == ("failed", "audit_unavailable")


async def test_the_memory_sink_has_no_chain_to_verify(console: Console) -> None:
    console.d.principal("audrey", "auditor", kind="user", password=PASSWORD)
    async with console.client() as client:
        csrf = await signed_in(client, "audrey")
        api = await client.get(API)
        start = await client.post(API, headers={"origin": "http://console.test", "x-csrf-token": csrf})
        page = await client.get("/audit/verify", headers=PAGE)
    assert api.status_code == start.status_code == 503
    assert api.json()["error"]["code"] == start.json()["error"]["code"] == "audit_unavailable"
    assert page.status_code == 200  # as /audit: the trail is readable, there is only no chain
    assert "verify-unavailable" in page.text
    assert 'id="verify-form"' not in page.text


async def test_the_verify_page_speaks_chinese(audited: Audited) -> None:
    async with audited.client() as client:
        csrf = await signed_in(client, "audrey")
        await client.post("/audit/verify", data={"csrf_token": csrf}, headers=SAME_ORIGIN)
        await finished(client)
        page = await client.get("/audit/verify", headers={**PAGE, "accept-language": "zh-CN"})
    assert "校验审计哈希链" in page.text
    assert "审计日志完整" in page.text
