"""`GET /console/api/generate/queue`: the queue's numbers, and where the caller's own job stands.

The real console app on a real state database; the engine is `GatedEngine`, which holds each
generation open until released, so the queue can be looked at while jobs run and wait."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.common.engines import GatedEngine
from tests.common.factories import LOOPBACK_PEER, ready_runtime
from tests.common.polling import wait_until_async
from tests.functional.test_auth import backend, database, deploy  # noqa: F401
from tests.functional.test_console_sessions import (  # noqa: F401
    PAGE,
    PASSWORD,
    SAME_ORIGIN,
    Console,
    console,
    signed_in,
)
from zguard.app.console import create_console_app
from zguard.serve.wiring import Runtime

pytestmark = pytest.mark.anyio
QUEUE = "/console/api/generate/queue"
FORM = {"prompt": "a red bicycle", "size": "16x16", "num_inference_steps": "1", "seed": "1", "n": "1"}
FIRST, SECOND = "0123456789abcdef", "fedcba9876543210fedcba98"


@dataclasses.dataclass
class Held:
    site: Console
    engine: GatedEngine
    runtime: Runtime

    def client(self) -> httpx.AsyncClient:
        services = dataclasses.replace(self.runtime.services, sessions=self.site.sessions)
        app = create_console_app(self.site.d.settings, services)
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=LOOPBACK_PEER), base_url="http://console.test"
        )


@pytest.fixture
async def held(console: Console) -> AsyncIterator[Held]:
    engine = GatedEngine()
    runtime = ready_runtime(console.d.settings, engine, console.d.auth, audit=console.d.audit)
    console.d.principal("gina", "generator", kind="user", password=PASSWORD)
    console.d.principal("vera", "viewer", kind="user", password=PASSWORD)
    try:
        yield Held(console, engine, runtime)
    finally:
        engine.release()
        assert runtime.worker.stop(timeout=10)


async def post(client: httpx.AsyncClient, csrf: str, ticket: str) -> httpx.Response:
    return await client.post("/generate", data={**FORM, "csrf_token": csrf, "ticket": ticket}, headers=SAME_ORIGIN)


async def test_the_numbers_and_positions_follow_a_held_generation(held: Held) -> None:
    admission = held.runtime.services.admission
    async with held.client() as dana, held.client() as gina:
        dana_csrf = await signed_in(dana, "dana")
        gina_csrf = await signed_in(gina, "gina")
        idle = (await dana.get(QUEUE)).json()
        first = asyncio.ensure_future(post(dana, dana_csrf, FIRST))
        await wait_until_async(lambda: bool(held.engine.started), timeout=10, what="the first job to run")
        second = asyncio.ensure_future(post(gina, gina_csrf, SECOND))
        await wait_until_async(lambda: admission.waiting == 1, timeout=10, what="the second job to wait")
        mine = (await dana.get(QUEUE, params={"ticket": FIRST})).json()
        waiting = (await gina.get(QUEUE, params={"ticket": SECOND})).json()
        not_mine = (await dana.get(QUEUE, params={"ticket": SECOND})).json()  # gina's ticket, dana's session
        held.engine.release()
        done = await asyncio.gather(first, second)
        after = (await gina.get(QUEUE, params={"ticket": SECOND})).json()
    assert idle == {"running": 0, "waiting": 0, "limit": held.site.d.settings.generation.max_queue}
    assert {k: mine[k] for k in ("running", "waiting")} == {"running": 1, "waiting": 1}
    assert mine["position"] == {"state": "running", "ahead": 0}
    assert waiting["position"] == {"state": "waiting", "ahead": 1}
    assert not_mine["position"] is None  # another session's ticket says nothing
    assert [r.status_code for r in done] == [200, 200]
    assert all("<img src=" in r.text for r in done)
    assert after == {"running": 0, "waiting": 0, "limit": mine["limit"], "position": None}  # forgotten


async def test_the_form_carries_a_ticket_field_and_loads_the_script(held: Held) -> None:
    async with held.client() as dana:
        await signed_in(dana, "dana")
        page = await dana.get("/generate", headers=PAGE)
        script = await dana.get("/static/generate.js")
    assert 'name="ticket"' in page.text
    assert '<script src="/static/generate.js" defer></script>' in page.text
    assert 'aria-live="polite"' in page.text
    assert 'data-waiting="Waiting in the queue: {ahead} ahead"' in page.text
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")


async def test_the_texts_for_the_script_are_in_chinese(held: Held) -> None:
    async with held.client() as dana:
        await signed_in(dana, "dana")
        page = await dana.get("/generate", headers={**PAGE, "accept-language": "zh-CN"})
    assert "正在排队：前面还有 {ahead} 个" in page.text
    assert "正在生成…" in page.text


async def test_without_images_generate_the_queue_is_refused(held: Held) -> None:
    async with held.client() as vera:
        await signed_in(vera, "vera")
        refused = await vera.get(QUEUE)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_denied"


@pytest.mark.parametrize("ticket", ["", "abc", "g" * 16, "0" * 33, "０" * 16, "0123456789abcdef\n"])
async def test_a_malformed_ticket_is_refused_in_the_error_shape(held: Held, ticket: str) -> None:
    async with held.client() as dana:
        await signed_in(dana, "dana")
        resp = await dana.get(QUEUE, params={"ticket": ticket})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "invalid_value"
    assert resp.json()["error"]["param"] == "ticket"


async def test_a_malformed_ticket_in_the_form_is_ignored_and_the_generation_runs(held: Held) -> None:
    held.engine.release()
    async with held.client() as dana:
        csrf = await signed_in(dana, "dana")
        resp = await post(dana, csrf, "<script>")
    assert resp.status_code == 200
    assert "<img src=" in resp.text
