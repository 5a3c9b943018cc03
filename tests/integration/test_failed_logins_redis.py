"""Two auth services on one Redis stand for two replicas: they share their failed-login counts.

Marked `integration`: skips when Redis is unreachable, fails under CI=true. Each test uses a key
prefix of its own and deletes its keys afterwards, so nothing else in the Redis is touched.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from tests.common.redis_server import count_keys, redis_key_prefix, redis_url
from zguard.audit.memory import MemoryAuditSink
from zguard.config import Settings
from zguard.errors import InvalidApiKey, TooManyFailedLogins
from zguard.security.keys import KEY_BYTES
from zguard.security.passwords import hash_password
from zguard.security.tokens import new_token
from zguard.services.auth import AuthService, RequestInfo
from zguard.services.counters import CounterStorage

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

PASSWORD = "correct horse battery staple"
SETTINGS = Settings.model_validate(
    {
        "api_auth": {
            "enabled": True,
            "users": [{"username": "alice", "password": hash_password(PASSWORD, cost=4)}],
            "basic_cache_s": 0,
        }
    }
)
A, B = RequestInfo(client="10.0.0.1"), RequestInfo(client="10.0.0.2")


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"alice:{password}".encode()).decode("ascii")


@asynccontextmanager
async def replicas(prefix: str) -> AsyncIterator[tuple[AuthService, AuthService]]:
    """Two services, each with its own connection to the same Redis, as two processes would have."""
    storages = [CounterStorage(redis_url(), key_prefix=prefix) for _ in range(2)]
    services = [
        AuthService(
            SETTINGS.api_auth,
            SETTINGS.role_registry(),
            store=None,
            token_key=secrets.token_bytes(KEY_BYTES),
            audit=MemoryAuditSink(),
            counters=counters,
        )
        for counters in storages
    ]
    try:
        yield services[0], services[1]
    finally:
        for counters in storages:  # `limits` offers no close: its redis-py client's, before the loop ends
            await counters.storage.bridge.storage.aclose()  # type: ignore[attr-defined]


async def test_failed_logins_counted_by_one_replica_refuse_on_the_other() -> None:
    with redis_key_prefix() as prefix:
        async with replicas(prefix) as (a, b):
            for auth in (a, b, a, b, a):  # five wrong passwords from one address, split over both
                with pytest.raises(InvalidApiKey):
                    await auth.authenticate(basic("guess"), A)
            for auth in (a, b):
                with pytest.raises(TooManyFailedLogins) as refused:
                    await auth.authenticate(basic(PASSWORD), A)
                assert 1 <= refused.value.retry_after <= 61
            assert (await b.authenticate(basic(PASSWORD), B)).name == "alice"
            assert count_keys(prefix) >= 3  # per user and address, per address, per user: in Redis


async def test_unknown_token_counts_are_shared_too() -> None:
    with redis_key_prefix() as prefix:
        async with replicas(prefix) as (a, b):
            for i in range(20):  # the default 20/minute per address, split over both
                with pytest.raises(InvalidApiKey):
                    await (a, b)[i % 2].authenticate(f"Bearer {new_token().plaintext}", A)
            for auth in (a, b):
                with pytest.raises(TooManyFailedLogins):
                    await auth.authenticate(f"Bearer {new_token().plaintext}", A)
