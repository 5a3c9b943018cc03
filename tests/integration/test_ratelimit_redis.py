"""Two `zguard serve` processes share their rate-limit counters through the local Redis.

Marked `integration`: skips when Redis is unreachable, fails under CI=true. Each test uses a key
prefix of its own and deletes its keys afterwards, so nothing else in the Redis is touched.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.common.redis_server import count_keys, redis_key_prefix, redis_url
from tests.common.servers import ZguardProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("strategy", ["moving-window", "sliding-window-counter"])
def test_the_limit_holds_across_two_processes(tmp_path: Path, demo_model_dir: Path, strategy: str) -> None:
    with redis_key_prefix() as prefix:
        env = {
            "ZGUARD_RATE_LIMITS__STORAGE": redis_url(),
            "ZGUARD_RATE_LIMITS__KEY_PREFIX": prefix,
            "ZGUARD_RATE_LIMITS__STRATEGY": strategy,
            "ZGUARD_RATE_LIMIT": "3/minute",
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
