"""The in-flight cap per principal holds across replicas: slots leased in the local Redis.

Two `RateLimitService` instances on one key prefix are two replicas. Marked `integration`: skips
when Redis is unreachable, fails under CI=true.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import cast

import pytest
import redis

from tests.common.redis_server import redis_key_prefix, redis_url
from zguard.audit.memory import MemoryAuditSink
from zguard.errors import RateLimiterUnavailable, TooManyConcurrentRequests
from zguard.services.auth import Identity, RequestInfo
from zguard.services.inflight import LeasedSlots
from zguard.services.ratelimit import RateLimitService, RatePolicy

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

ALICE = Identity(name="alice", kind="service", roles=frozenset({"generator"}), method="bearer")
BOB = Identity(name="bob", kind="service", roles=frozenset({"generator"}), method="bearer")
INFO = RequestInfo(client="10.0.0.7")


OPENED: list[RateLimitService] = []


@pytest.fixture(autouse=True)
async def _close_replicas() -> AsyncIterator[None]:
    yield
    while OPENED:  # the Redis connections, before the event loop ends
        await OPENED.pop().counters.aclose()


def replica(prefix: str, *, storage: str | None = None, lease_s: float = 30.0, cap: int = 2) -> RateLimitService:
    limiter = RateLimitService(
        RatePolicy(),
        storage=storage or redis_url(),
        key_prefix=prefix,
        max_concurrent=cap,
        audit=MemoryAuditSink(),
        in_flight_lease_s=lease_s,
    )
    OPENED.append(limiter)
    return limiter


async def test_the_cap_holds_across_two_replicas_and_frees_on_release() -> None:
    with redis_key_prefix() as prefix:
        a, b = replica(prefix), replica(prefix)
        async with a.concurrency(ALICE, INFO), b.concurrency(ALICE, INFO):
            assert await a.held_everywhere("alice") == 2
            for limiter in (a, b):
                with pytest.raises(TooManyConcurrentRequests) as refused:
                    async with limiter.concurrency(ALICE, INFO):
                        pytest.fail("a third slot was granted")  # pragma: no cover
                assert refused.value.code == "too_many_concurrent_requests"
            async with b.concurrency(BOB, INFO):  # another principal keeps its own slots
                assert await b.held_everywhere("bob") == 1
        assert await b.held_everywhere("alice") == 0
        audit = b.audit
        assert isinstance(audit, MemoryAuditSink)
        [event] = audit.of_type("rate_limit.concurrency")
        assert event.detail == {"in_flight": 2, "max": 2}
        async with b.concurrency(ALICE, INFO):  # released slots are usable again at once
            pass


async def test_many_racing_requests_on_three_replicas_never_exceed_the_cap() -> None:
    with redis_key_prefix() as prefix:
        replicas = [replica(prefix, cap=3) for _ in range(3)]
        running = 0
        most = 0
        granted = 0

        async def one(limiter: RateLimitService) -> None:
            nonlocal running, most, granted
            with contextlib.suppress(TooManyConcurrentRequests):
                async with limiter.concurrency(ALICE, INFO):
                    granted += 1
                    running += 1
                    most = max(most, running)
                    await asyncio.sleep(0.02)
                    running -= 1

        await asyncio.gather(*(one(replicas[i % 3]) for i in range(60)))
        assert most == 3
        assert granted >= 3
        assert await replicas[0].held_everywhere("alice") == 0


async def test_a_dead_replicas_slots_expire_after_the_lease() -> None:
    with redis_key_prefix() as prefix:
        dead = replica(prefix, lease_s=3.0, cap=1)
        alive = replica(prefix, lease_s=3.0, cap=1)
        slots = dead.slots
        assert isinstance(slots, LeasedSlots)
        # A replica that dies mid-generation: the slot is taken, never renewed nor released.
        acquire = slots._client_scripts()[0]
        assert (await acquire(keys=[slots.key("alice")], args=[1, "dead-slot", 3000]))[0] == 1
        with pytest.raises(TooManyConcurrentRequests):
            async with alive.concurrency(ALICE, INFO):
                pytest.fail("the dead replica's slot was ignored")  # pragma: no cover
        client = redis.Redis.from_url(redis_url())
        try:
            ttl_ms = cast("int", client.pttl(slots.key("alice")))  # the sync client's answer
        finally:
            client.close()
        assert 0 < ttl_ms <= 3000  # the key goes with the lease: nothing left behind
        await asyncio.sleep(3.2)
        async with alive.concurrency(ALICE, INFO):
            assert await alive.held_everywhere("alice") == 1


async def test_a_held_slot_is_renewed_while_the_generation_runs() -> None:
    with redis_key_prefix() as prefix:
        a, b = replica(prefix, lease_s=3.0, cap=1), replica(prefix, lease_s=3.0, cap=1)
        async with a.concurrency(ALICE, INFO):
            await asyncio.sleep(4.0)  # longer than the lease: only renewal keeps it
            with pytest.raises(TooManyConcurrentRequests):
                async with b.concurrency(ALICE, INFO):
                    pytest.fail("a renewed slot expired")  # pragma: no cover
        slots = a.slots
        assert isinstance(slots, LeasedSlots)
        assert slots.lost == 0


async def test_an_unreachable_redis_fails_closed_with_the_rate_limiter_code() -> None:
    with redis_key_prefix() as prefix:
        limiter = replica(prefix, storage="redis://127.0.0.1:1/0")
        with pytest.raises(RateLimiterUnavailable) as refused:
            async with limiter.concurrency(ALICE, INFO):
                pytest.fail("a slot was granted without Redis")  # pragma: no cover
        error = refused.value
        assert (error.status, error.code) == (503, "rate_limiter_unavailable")
        assert error.retry_after is not None
