"""Two `zguard serve` processes share their rate-limit counters through the local Redis.

Marked `integration`: skips when Redis is unreachable, fails under CI=true. Each test uses a key
prefix of its own and deletes its keys afterwards, so nothing else in the Redis is touched.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.common.redis_server import count_keys, redis_key_prefix, redis_url
from tests.common.servers import ZguardProcess
from zguard.audit.memory import MemoryAuditSink
from zguard.errors import RateLimitExceeded
from zguard.security.rates import Rate
from zguard.services.auth import Identity, RequestInfo
from zguard.services.ratelimit import BLOCKED_RECHECK_S, RateLimitService, RatePolicy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("strategy", ["moving-window", "sliding-window-counter"])
def test_the_limit_holds_across_two_processes(tmp_path: Path, demo_model_dir: Path, strategy: str) -> None:
    with redis_key_prefix() as prefix:
        env = {
            "ZGUARD_RATE_LIMITS__STORAGE": redis_url(),
            "ZGUARD_RATE_LIMITS__KEY_PREFIX": prefix,
            "ZGUARD_RATE_LIMITS__STRATEGY": strategy,
            "ZGUARD_RATE_LIMITS__OTHER_ROUTES": "3/minute",  # /v1/models is in the "other" budget
            "ZGUARD_MODEL__PATH": str(demo_model_dir),
            "ZGUARD_MODEL__WARMUP": "false",
        }
        with (
            ZguardProcess(tmp_path / "a" / "state", env) as a,
            ZguardProcess(tmp_path / "b" / "state", env) as b,
        ):
            a.wait_ready()
            b.wait_ready()
            answers = [httpx.get(f"{server.api}/v1/models", timeout=10) for server in (a, b, a, b, a)]
            assert [r.status_code for r in answers] == [200, 200, 200, 429, 429], [r.text for r in answers]
            assert [r.headers["ratelimit-remaining"] for r in answers] == ["2", "1", "0", "0", "0"]
            assert {r.headers["ratelimit-limit"] for r in answers} == {"3"}
            refused = answers[3]
            assert refused.json()["error"]["code"] == "rate_limit_exceeded"
            assert 1 <= int(refused.headers["retry-after"]) <= 61
            assert refused.headers["ratelimit-reset"] == refused.headers["retry-after"]
            assert count_keys(prefix) >= 1  # the counters really are in Redis
            for server in (a, b):
                assert server.stop() == 0


ALICE = Identity(name="alice", kind="service", roles=frozenset({"generator"}), method="bearer")
INFO = RequestInfo(client="10.0.0.7")


def count_storage_calls(limiter: RateLimitService, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    strategy = limiter._limiter
    for name in ("hit", "test", "get_window_stats"):
        original = getattr(strategy, name)

        async def counted(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            calls.append(_name)
            return await _original(*args, **kwargs)

        monkeypatch.setattr(strategy, name, counted)
    return calls


@pytest.mark.anyio
@pytest.mark.parametrize("strategy", ["moving-window", "sliding-window-counter"])
async def test_a_principal_remembered_over_its_limit_in_one_process_is_refused_by_the_other_too(
    strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two services on one Redis stand for two replicas: the one that remembers the refusal asks
    Redis no more, the other still finds the limit there, and the principal is let in again once
    the window has room."""
    with redis_key_prefix() as prefix:
        policy = RatePolicy([Rate(2, 3)])
        a, b = (
            RateLimitService(policy, storage=redis_url(), strategy=strategy, key_prefix=prefix, audit=MemoryAuditSink())
            for _ in range(2)
        )
        try:
            await remembered_and_shared(a, b, monkeypatch)
        finally:
            for limiter in (a, b):  # `limits` offers no close: its redis-py client's, before the loop ends
                await limiter._storage.bridge.storage.aclose()  # type: ignore[attr-defined]


async def remembered_and_shared(a: RateLimitService, b: RateLimitService, monkeypatch: pytest.MonkeyPatch) -> None:
    assert await a.check(ALICE, INFO) is not None
    assert await b.check(ALICE, INFO) is not None
    with pytest.raises(RateLimitExceeded) as first:
        await a.check(ALICE, INFO)  # a asks Redis and remembers the full window
    refused_at = time.time()
    calls = count_storage_calls(a, monkeypatch)
    with pytest.raises(RateLimitExceeded) as remembered:
        await a.check(ALICE, INFO)
    assert calls == []
    assert remembered.value.retry_after <= first.value.retry_after
    assert remembered.value.headers["RateLimit-Remaining"] == "0"
    with pytest.raises(RateLimitExceeded):
        await b.check(ALICE, INFO)  # the other replica remembers nothing and finds the limit in Redis
    assert time.time() - refused_at < BLOCKED_RECHECK_S  # all of that within one remembered interval
    await asyncio.sleep(first.value.retry_after)
    assert await a.check(ALICE, INFO) is not None  # lifted at the reset, counted in Redis again
    assert calls != []
