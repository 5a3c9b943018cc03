"""The local Redis server for tests of shared rate-limit counters.

Found at `ZGUARD_TEST_REDIS_URL`, else `redis://127.0.0.1:6379/0`. Tests do not flush anything:
each uses a key prefix of its own (`rate_limits.key_prefix`) and deletes its keys afterwards.
Unreachable server: the test is skipped, except under CI=true, where it fails instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import redis

from tests.common.unavailable import unavailable

LIMITS_KEY_PREFIX = "LIMITS"  # what the `limits` library puts before each of its keys in Redis


def redis_url() -> str:
    return os.environ.get("ZGUARD_TEST_REDIS_URL") or "redis://127.0.0.1:6379/0"


@cache
def _redis_unreachable() -> str | None:
    """Why the Redis server cannot be used, or None when it can (asked once per run)."""
    client = redis.Redis.from_url(redis_url(), socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


def require_redis() -> str:
    """The URL of a reachable Redis server; skip (fail under CI=true) when there is none."""
    reason = _redis_unreachable()
    if reason is not None:
        unavailable(f"Redis at {redis_url()} unreachable: {reason}", remedy="start Redis")
    return redis_url()


@contextmanager
def redis_key_prefix() -> Iterator[str]:
    """A fresh `rate_limits.key_prefix`; every key under it is deleted on exit."""
    url = require_redis()
    prefix = f"zguard-test-{uuid.uuid4().hex[:12]}"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            keys = list(client.scan_iter(match=f"*{prefix}*"))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


def count_keys(prefix: str) -> int:
    client = redis.Redis.from_url(redis_url(), socket_connect_timeout=2, socket_timeout=2)
    try:
        return sum(1 for _ in client.scan_iter(match=f"{LIMITS_KEY_PREFIX}*{prefix}*"))
    finally:
        client.close()
