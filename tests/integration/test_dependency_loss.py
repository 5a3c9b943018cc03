"""A replica that loses Redis or PostgreSQL fails closed with its codes (503 + Retry-After),
`/readyz` names the dependency that is down so the load balancer drains it, and the replica
recovers by itself, without a restart, when the dependency is back.

Redis: a private redis-server on a free port, stopped and started again on the same port.
PostgreSQL: the shared server reached through a TCP proxy the test cuts and restores. The app
runs in-process over a stand-in engine (nothing here generates). Marked `integration`: skips when
PostgreSQL or redis-server cannot be had, fails under CI=true.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.common.databases import postgres_schema_url
from tests.common.engines import GatedEngine
from tests.common.factories import api_client, build_test_auth, build_test_runtime, make_settings
from tests.common.frontdoor import RedisServer, TcpProxy, via_proxy
from zguard.audit.memory import MemoryAuditSink
from zguard.audit.store import AuditStore
from zguard.audit.trail import AuditTrail
from zguard.errors import RateLimiterUnavailable
from zguard.security.rates import parse_rates
from zguard.security.tokens import new_token, token_digest
from zguard.services.auth import Identity, RequestInfo
from zguard.services.ratelimit import RateLimitService, RatePolicy
from zguard.services.readiness import ModelState, Readiness, database_probe
from zguard.store import migrate
from zguard.store.database import create_store_engine
from zguard.store.principals import PrincipalStore

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.anyio]

ALICE = Identity(name="alice", kind="service", roles=frozenset({"generator"}), method="bearer")
INFO = RequestInfo(client="10.0.0.7")
KEY = secrets.token_bytes(32)


class Clock:
    """A monotonic clock the test moves, so the probes' one-second cache is not waited out."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 2.0  # every read is past the cache
        return self.now


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_redis_lost_fails_closed_and_recovers_without_a_restart(redis_server: RedisServer) -> None:
    limiter = RateLimitService(
        RatePolicy(parse_rates("100/minute")),
        storage=redis_server.url,
        key_prefix="zguard-loss",
        max_concurrent=2,
        audit=MemoryAuditSink(),
        in_flight_lease_s=3.0,
    )
    readiness = Readiness({"rate_limits.storage": limiter.counters.reachable}, clock=Clock())
    try:
        assert await limiter.check(ALICE, INFO) is not None
        async with limiter.concurrency(ALICE, INFO):
            pass
        assert await readiness.unavailable() == []
        redis_server.stop()
        with pytest.raises(RateLimiterUnavailable) as rate_refused:
            await limiter.check(ALICE, INFO)
        with pytest.raises(RateLimiterUnavailable) as slot_refused:
            async with limiter.concurrency(ALICE, INFO):
                pytest.fail("a slot was granted without Redis")  # pragma: no cover
        for refused in (rate_refused.value, slot_refused.value):
            assert (refused.status, refused.code) == (503, "rate_limiter_unavailable")
            assert refused.retry_after is not None
            assert refused.retry_after > 0
        assert await readiness.unavailable() == ["rate_limits.storage"]
        redis_server.start()  # the same port: the replica was not restarted
        assert await readiness.unavailable() == []
        assert await limiter.check(ALICE, INFO) is not None
        async with limiter.concurrency(ALICE, INFO):
            assert await limiter.held_everywhere("alice") == 1
    finally:
        await limiter.counters.aclose()


@dataclass
class Replica:
    proxy: TcpProxy
    api: httpx.AsyncClient
    token: str


@pytest.fixture
async def replica(tmp_path: Path) -> AsyncIterator[Replica]:
    with postgres_schema_url() as direct:
        admin = create_store_engine(direct)
        migrate.upgrade(admin)
        store = PrincipalStore(admin)
        store.create_principal("svc", "service", roles=["viewer"])
        issued = new_token()
        store.add_token("svc", token_hash=token_digest(issued.plaintext, KEY), prefix=issued.display_prefix)
        admin.dispose()
        assert direct.host is not None
        assert direct.port is not None
        proxy = TcpProxy((direct.host, direct.port))
        engine = create_store_engine(make_url(via_proxy(direct, proxy)))
        settings = make_settings(tmp_path / "state", api_auth={"enabled": True})
        trail = AuditTrail(AuditStore(engine))
        auth = build_test_auth(settings, PrincipalStore(engine), KEY, trail)
        runtime = build_test_runtime(settings, GatedEngine(), auth, audit=trail)
        runtime.services.readiness.set(ModelState.READY)
        try:
            async with api_client(settings, runtime) as api:
                yield Replica(proxy, api, issued.plaintext)
        finally:
            runtime.worker.stop(timeout=5)
            trail.close()
            auth.close()
            proxy.close()
            engine.dispose()


async def readyz_until(api: httpx.AsyncClient, status: int, within_s: float = 10.0) -> httpx.Response:
    """`/readyz` asked until it answers `status` (its probes are cached for a second)."""
    deadline = time.monotonic() + within_s
    while True:
        answer = await api.get("/readyz")
        if answer.status_code == status:
            return answer
        if time.monotonic() > deadline:
            pytest.fail(f"/readyz still answers {answer.status_code} {answer.text} after {within_s} s")
        await asyncio.sleep(0.2)


async def test_postgresql_lost_fails_closed_is_drained_and_recovers_without_a_restart(replica: Replica) -> None:
    api, bearer = replica.api, {"Authorization": f"Bearer {replica.token}"}
    assert (await api.get("/readyz")).status_code == 200
    assert (await api.get("/v1/models", headers=bearer)).status_code == 200
    replica.proxy.cut()

    # The audit trail is the database: no answer goes out unrecorded, so /readyz itself is 503
    # `audit_unavailable` (the load balancer drains the replica), as is every request.
    ready = await readyz_until(api, 503)
    refused = await api.get("/v1/models", headers=bearer)
    for answer in (ready, refused):
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "audit_unavailable"
        assert int(answer.headers["retry-after"]) > 0
    replica.proxy.restore()

    await readyz_until(api, 200)
    assert (await api.get("/v1/models", headers=bearer)).status_code == 200


async def test_the_database_probe_says_whether_postgresql_answers() -> None:
    with postgres_schema_url() as url:
        engines = [create_store_engine(url), create_store_engine(url.set(host="127.0.0.1", port=1))]
        try:
            assert await database_probe(engines[0])() is True
            assert await database_probe(engines[1])() is False  # a closed port: down, not an exception
            readiness = Readiness({"database.url": database_probe(engines[1])}, clock=Clock())
            assert await readiness.unavailable() == ["database.url"]
        finally:
            for engine in engines:
                engine.dispose()
