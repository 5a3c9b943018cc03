"""Per-principal rates and in-flight caps through the real apps, with the exact error shapes.

Most tests run as the local identity of `api_auth.enabled: false`; the separate-counter tests
sign in as configured Basic users (cheap bcrypt cost). `GatedEngine` holds generations open
where a test is about the in-flight cap.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.common.engines import GatedEngine
from tests.common.factories import api_client, build_test_runtime, console_client, make_settings
from tests.common.polling import wait_until_async
from tests.functional.test_errors import GENERATIONS, assert_error, assert_retry_after
from zguard.audit.memory import MemoryAuditSink
from zguard.config import Settings
from zguard.security.passwords import hash_password
from zguard.serve.wiring import Runtime
from zguard.services.ratelimit import RateLimitService
from zguard.services.readiness import ModelState

pytestmark = pytest.mark.anyio

RATE_ERROR = "rate_limit_error"
BODY = {"prompt": "a cat", "size": "64x64"}
GENERATION = {"min_side": 32, "max_side": 256, "default_steps": 1, "max_steps": 2}
PASSWORD = "correct horse battery"


@asynccontextmanager
async def deployed(
    settings: Settings, engine: GatedEngine | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, Runtime, MemoryAuditSink]]:
    """API and console clients over one runtime whose rate limiter audits into memory.

    Without `engine`, generations finish at once; a test that passes its own GatedEngine releases it.
    """
    if engine is None:
        engine = GatedEngine()
        engine.release()
    audit = MemoryAuditSink()
    runtime = build_test_runtime(settings, engine, rate_limits=RateLimitService.from_settings(settings, audit))
    runtime.services.readiness.set(ModelState.READY)
    try:
        async with api_client(settings, runtime) as api, console_client(settings, runtime) as console:
            yield api, console, runtime, audit
    finally:
        engine.release()
        assert runtime.worker.stop(timeout=5)


def settings_for(tmp_path: Path, **sections: Any) -> Settings:
    return make_settings(tmp_path / "state", **{"generation": GENERATION, **sections})


def rate_headers(resp: httpx.Response) -> tuple[int, int, int]:
    return (
        int(resp.headers["ratelimit-limit"]),
        int(resp.headers["ratelimit-remaining"]),
        int(resp.headers["ratelimit-reset"]),
    )


def basic(username: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{PASSWORD}".encode()).decode()}


def assert_rate_limited(resp: httpx.Response, *, limit: int, console: bool = False) -> int:
    """The exact 429 `rate_limit_exceeded` shape; return the Retry-After seconds."""
    message = assert_error(resp, 429, "rate_limit_exceeded", error_type=RATE_ERROR, console=console)
    assert f"at most {limit} requests per" in message
    retry = assert_retry_after(resp)
    assert rate_headers(resp) == (limit, 0, retry)
    return retry


async def test_third_request_of_two_per_minute_is_429_with_headers(tmp_path: Path) -> None:
    async with deployed(settings_for(tmp_path, rate_limit="2/minute")) as (api, _, _, audit):
        first = await api.post(GENERATIONS, json=BODY)
        second = await api.post(GENERATIONS, json=BODY)
        assert (first.status_code, second.status_code) == (200, 200), second.text
        assert "retry-after" not in first.headers
        limit, remaining, reset = rate_headers(first)
        assert (limit, remaining) == (2, 1)
        assert 1 <= reset <= 61
        limit, remaining, reset = rate_headers(second)
        assert (limit, remaining) == (2, 0)
        assert 1 <= reset <= 61
        third = await api.post(GENERATIONS, json=BODY)
        retry = assert_rate_limited(third, limit=2)
        assert 1 <= retry <= 61
        assert_rate_limited(await api.post(GENERATIONS, json=BODY), limit=2)
    [event, _] = audit.of_type("rate_limit.exceeded")
    assert (event.principal, event.outcome, event.listener, event.client) == ("local", "denied", "api", "127.0.0.1")
    assert event.request_id == third.headers["x-request-id"]


async def test_guides_chinese_units_and_several_rates(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, rate_limit="100/小时;1/分钟;1000/天")
    async with deployed(settings) as (api, _, _, _):
        ok = await api.post(GENERATIONS, json=BODY)
        assert rate_headers(ok)[:2] == (1, 0)  # the tightest rate is the one reported
        assert_rate_limited(await api.post(GENERATIONS, json=BODY), limit=1)


async def test_public_routes_are_not_rate_limited(tmp_path: Path) -> None:
    async with deployed(settings_for(tmp_path, rate_limit="1/minute")) as (api, _, _, _):
        for _ in range(5):
            for path in ("/healthz", "/readyz"):
                resp = await api.get(path)
                assert resp.status_code == 200
                assert "ratelimit-limit" not in resp.headers
        assert (await api.post(GENERATIONS, json=BODY)).status_code == 200  # the health checks counted nothing


async def test_errors_after_the_count_carry_the_headers_too(tmp_path: Path) -> None:
    async with deployed(settings_for(tmp_path, rate_limit="3/minute")) as (api, _, _, _):
        bad = await api.post(GENERATIONS, json={"prompt": "a cat", "size": "big"})
        assert_error(bad, 400, "invalid_size", param="size")
        assert rate_headers(bad)[:2] == (3, 2)


async def test_reads_and_scrapes_have_a_budget_of_their_own(tmp_path: Path) -> None:
    # a /metrics scrape faster than every 6 s used to break generation under the guide's 10/分钟
    settings = settings_for(tmp_path, rate_limit="1/minute", rate_limits={"other_routes": "3/minute"})
    async with deployed(settings) as (api, console, _, _):
        assert (await api.post(GENERATIONS, json=BODY)).status_code == 200
        assert_rate_limited(await api.post(GENERATIONS, json=BODY), limit=1)
        status = await console.get("/api/status")  # generation's budget is spent; reads are not
        assert status.status_code == 200
        assert rate_headers(status)[:2] == (3, 2)
        assert (await console.get("/metrics")).status_code == 200
        assert (await api.get("/v1/models")).status_code == 200
        assert_rate_limited(await console.get("/api/status"), limit=3, console=True)
        assert_rate_limited(await api.get("/v1/models"), limit=3)


async def test_reads_never_spend_the_generation_budget(tmp_path: Path) -> None:
    async with deployed(settings_for(tmp_path, rate_limit="2/minute")) as (api, console, _, _):
        for _ in range(10):
            assert (await console.get("/metrics")).status_code == 200
            assert (await api.get("/v1/models")).status_code == 200
        first = await api.post(GENERATIONS, json=BODY)
        assert first.status_code == 200
        assert rate_headers(first)[:2] == (2, 1)


async def test_without_any_rate_no_headers_are_sent(tmp_path: Path) -> None:
    async with deployed(settings_for(tmp_path)) as (api, _, _, _):
        for _ in range(5):
            resp = await api.post(GENERATIONS, json=BODY)
            assert resp.status_code == 200
            assert "ratelimit-limit" not in resp.headers


async def test_principals_have_separate_counters_and_overrides(tmp_path: Path) -> None:
    password_hash = hash_password(PASSWORD, cost=4)
    users = [
        {"username": name, "password": password_hash, "roles": ["generator"]} for name in ("alice", "bob", "batch")
    ]
    settings = settings_for(
        tmp_path,
        api_auth={"enabled": True, "users": users},
        rate_limit="1/minute",
        rate_limits={"per_principal": {"batch": "3/minute"}},
    )
    async with deployed(settings) as (api, _, _, _):
        assert (await api.post(GENERATIONS, json=BODY, headers=basic("alice"))).status_code == 200
        assert_rate_limited(await api.post(GENERATIONS, json=BODY, headers=basic("alice")), limit=1)
        bob = await api.post(GENERATIONS, json=BODY, headers=basic("bob"))
        assert bob.status_code == 200
        assert rate_headers(bob)[:2] == (1, 0)
        for remaining in (2, 1, 0):
            resp = await api.post(GENERATIONS, json=BODY, headers=basic("batch"))
            assert rate_headers(resp)[:2] == (3, remaining)
        assert_rate_limited(await api.post(GENERATIONS, json=BODY, headers=basic("batch")), limit=3)
        # Authentication comes first: no credentials is 401, never a rate decision.
        assert_error(
            await api.post(GENERATIONS, json=BODY), 401, "missing_credentials", error_type="authentication_error"
        )


async def test_role_rates_apply_to_holders_of_the_role(tmp_path: Path) -> None:
    password_hash = hash_password(PASSWORD, cost=4)
    users = [
        {"username": "gen", "password": password_hash, "roles": ["generator"]},
        {"username": "view", "password": password_hash, "roles": ["viewer"]},
    ]
    settings = settings_for(
        tmp_path, api_auth={"enabled": True, "users": users}, rate_limits={"per_role": {"generator": "1/minute"}}
    )
    async with deployed(settings) as (api, _, _, _):
        assert (await api.post(GENERATIONS, json=BODY, headers=basic("gen"))).status_code == 200
        assert_rate_limited(await api.post(GENERATIONS, json=BODY, headers=basic("gen")), limit=1)
        for _ in range(3):
            resp = await api.get("/v1/models", headers=basic("view"))
            assert resp.status_code == 200
            assert rate_headers(resp)[0] == 600  # rate_limits.other_routes, not the generator's


async def test_in_flight_cap_is_429_too_many_concurrent_requests(tmp_path: Path) -> None:
    engine = GatedEngine()
    settings = settings_for(tmp_path, generation={**GENERATION, "max_queue": 8})
    async with deployed(settings, engine) as (api, _, runtime, audit):
        held = [asyncio.create_task(api.post(GENERATIONS, json=BODY)) for _ in range(2)]
        await wait_until_async(
            lambda: engine.running.is_set() and runtime.admission.waiting == 1,
            timeout=10,
            interval=0.005,
            what="one generation running and one waiting",
        )
        refused = await api.post(GENERATIONS, json=BODY)
        message = assert_error(refused, 429, "too_many_concurrent_requests", error_type=RATE_ERROR)
        assert "2 generations in progress" in message
        assert assert_retry_after(refused) == 2
        assert "ratelimit-limit" not in refused.headers
        # Reading is not generating: other routes still answer.
        assert (await api.get("/v1/models")).status_code == 200
        engine.release()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert (await api.post(GENERATIONS, json=BODY)).status_code == 200  # the slots were given back
    assert len(engine.started) == 3
    [event] = audit.of_type("rate_limit.concurrency")
    assert (event.principal, event.code) == ("local", "too_many_concurrent_requests")


async def test_in_flight_cap_is_configurable(tmp_path: Path) -> None:
    engine = GatedEngine()
    settings = settings_for(tmp_path, rate_limits={"max_concurrent_per_principal": 1})
    async with deployed(settings, engine) as (api, _, _, _):
        held = asyncio.create_task(api.post(GENERATIONS, json=BODY))
        await wait_until_async(engine.running.is_set, timeout=10, interval=0.005, what="the generation to start")
        assert_error(await api.post(GENERATIONS, json=BODY), 429, "too_many_concurrent_requests", error_type=RATE_ERROR)
        engine.release()
        assert (await held).status_code == 200


async def test_redis_down_fails_closed_with_503(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_for(
        tmp_path, rate_limit="2/minute", rate_limits={"storage": "redis://127.0.0.1:1/0"}
    )  # nothing listens on port 1
    with caplog.at_level(logging.INFO):
        async with deployed(settings) as (api, console, _, audit):
            resp = await api.post(GENERATIONS, json=BODY)
            message = assert_error(resp, 503, "rate_limiter_unavailable")
            assert assert_retry_after(resp) == 5
            assert "ratelimit-limit" not in resp.headers
            assert "127.0.0.1" not in message
            assert_error(await console.get("/api/status"), 503, "rate_limiter_unavailable", console=True)
            assert_error(await api.post(GENERATIONS, json=BODY), 503, "rate_limiter_unavailable")
            assert (await api.get("/healthz")).status_code == 200  # public routes never ask the limiter
    events = audit.of_type("rate_limit.unavailable")
    assert len(events) == 3
    assert {e.outcome for e in events} == {"failed"}
    assert "ConnectionError" in str(events[0].detail["error"])
    failures = [r for r in caplog.records if r.name == "zguard.ratelimit" and r.levelno == logging.ERROR]
    assert failures
    assert "fail closed" in failures[0].getMessage()


async def test_redis_down_is_one_failed_request_event_naming_the_decision(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, rate_limit="2/minute", rate_limits={"storage": "redis://127.0.0.1:1/0"})
    runtime = build_test_runtime(settings, GatedEngine())
    runtime.services.readiness.set(ModelState.READY)
    try:
        async with api_client(settings, runtime) as api:
            assert_error(await api.post(GENERATIONS, json=BODY), 503, "rate_limiter_unavailable")
    finally:
        assert runtime.worker.stop(timeout=5)
    audit = runtime.services.audit
    assert isinstance(audit, MemoryAuditSink)
    (event,) = audit.events  # one request, one event
    assert (event.type, event.outcome, event.code) == ("http.request", "failed", "rate_limiter_unavailable")
    assert "rate_limit.unavailable" in str(event.detail["decisions"])
    assert event.http is not None
    assert event.http["status"] == 503
