"""Failed-login limits and the dummy hash of `AuthService`, without a database.

The counters run on the `limits` library's in-process memory storage; `clock` replaces the `time`
module that library reads with a fake one (as in test_ratelimit.py) and is also the service's
own clock, so every window below is exact. Users are configured ones at bcrypt cost 4.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import limits.aio.storage.memory
import pytest
from limits.errors import StorageError

import zguard.services.auth as auth_module
from tests.common.clocks import FakeClock, limits_clock
from zguard.audit.memory import MemoryAuditSink
from zguard.config import Settings
from zguard.errors import InvalidApiKey, RateLimiterUnavailable, TooManyFailedLogins
from zguard.security.keys import KEY_BYTES
from zguard.security.passwords import DEFAULT_COST, cost_of, hash_password
from zguard.security.tokens import new_token
from zguard.services.auth import AuthService, Identity, RequestInfo
from zguard.services.counters import KEY_PART_MAX, CounterStorage, key_part
from zguard.store.principals import PrincipalRecord, PrincipalStore

pytestmark = pytest.mark.anyio

PASSWORD = "correct horse battery staple"
HASH = hash_password(PASSWORD, cost=4)
A, B, C = (RequestInfo(client=f"10.0.0.{i}") for i in (1, 2, 3))
MINUTE, HOUR = 60, 3600


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    return limits_clock(monkeypatch)


def settings(**api_auth: Any) -> Settings:
    users = [{"username": "alice", "password": HASH}, {"username": "bob", "password": HASH}]
    return Settings.model_validate({"api_auth": {"enabled": True, "users": users, "basic_cache_s": 0, **api_auth}})


def service(
    clock: FakeClock,
    config: Settings | None = None,
    *,
    counters: CounterStorage | None = None,
    store: PrincipalStore | None = None,
    audit: MemoryAuditSink | None = None,
) -> AuthService:
    config = config or settings()
    return AuthService(
        config.api_auth,
        config.role_registry(),
        store=store,
        token_key=secrets.token_bytes(KEY_BYTES),
        audit=audit or MemoryAuditSink(),
        counters=counters or CounterStorage(clock=clock.time),
        clock=clock,
    )


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


async def login(auth: AuthService, info: RequestInfo, username: str = "alice", password: str = PASSWORD) -> Identity:
    return await auth.authenticate(basic(username, password), info)


async def fail(auth: AuthService, info: RequestInfo, username: str = "alice", times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(InvalidApiKey):
            await login(auth, info, username, "guess")


async def locked_out(auth: AuthService, info: RequestInfo, username: str = "alice") -> int:
    """Assert the correct password is refused; return the Retry-After seconds."""
    with pytest.raises(TooManyFailedLogins) as refused:
        await login(auth, info, username)
    return refused.value.retry_after


# --- Basic ---------------------------------------------------------------------------------------


async def test_wrong_passwords_refuse_that_user_at_that_address_only(clock: FakeClock) -> None:
    auth = service(clock)  # defaults: 5/minute;20/hour per user and address
    await fail(auth, A, times=5)
    # Whole seconds until strictly after the oldest failure leaves the window: the storage
    # still refuses at that very instant.
    assert await locked_out(auth, A) == MINUTE + 1
    assert (await login(auth, B)).name == "alice"  # the same user elsewhere
    assert (await login(auth, A, "bob")).name == "bob"  # another user from the same address
    clock.advance(MINUTE - 1)
    assert await locked_out(auth, A) == 2
    clock.advance(1.5)
    assert (await login(auth, A)).name == "alice"


async def test_the_hourly_rate_holds_after_the_minute(clock: FakeClock) -> None:
    auth = service(clock)
    for _ in range(4):
        await fail(auth, A, times=5)
        clock.advance(MINUTE)
    assert await locked_out(auth, A) == HOUR - 4 * MINUTE + 1
    assert (await login(auth, B)).name == "alice"


async def test_a_success_forgives_no_failure(clock: FakeClock) -> None:
    auth = service(clock)
    await fail(auth, A, times=4)
    assert (await login(auth, A)).name == "alice"
    await fail(auth, A, times=1)  # a guesser at her address gains no fresh tries from her login
    assert await locked_out(auth, A) == MINUTE + 1


async def test_the_address_limit_spans_usernames(clock: FakeClock) -> None:
    auth = service(clock, settings(failed_logins_per_address="3/minute"))
    for name in ("root", "admin", "alice"):
        await fail(auth, A, name)
    assert await locked_out(auth, A, "bob") == MINUTE + 1
    assert (await login(auth, B, "bob")).name == "bob"


async def test_a_spent_user_budget_refuses_only_addresses_that_failed(clock: FakeClock) -> None:
    auth = service(clock, settings(failed_logins_per_user="3/hour"))
    for info in (A, B):
        await fail(auth, info)
    await fail(auth, C, "bob")  # C has failed, though not as alice
    await fail(auth, A)  # alice's third failure: her budget is spent
    clean = RequestInfo(client="10.0.9.9")
    assert (await login(auth, clean)).name == "alice"
    for info in (A, B, C):
        assert await locked_out(auth, info) == HOUR + 1
    assert (await login(auth, C, "bob")).name == "bob"  # bob's own budget is untouched
    await fail(auth, clean)  # the clean address's first failure closes it too
    assert await locked_out(auth, clean) == HOUR + 1


async def test_old_key_names_keep_their_rates(clock: FakeClock) -> None:
    """The deployment guide's `failed_logins_per_user` still parses; it is now the global budget."""
    config = settings(failed_logins_per_user="5/minute;20/hour", failed_logins_per_address="20/minute;200/hour")
    assert config.api_auth.failed_logins_per_user_address == "5/minute;20/hour"
    auth = service(clock, config)
    await fail(auth, A, times=5)
    assert await locked_out(auth, A) == MINUTE + 1
    assert (await login(auth, B)).name == "alice"


async def test_two_services_on_one_storage_share_their_counts(clock: FakeClock) -> None:
    """Two replicas: failures counted by one refuse on the other."""
    counters = CounterStorage(clock=clock.time)
    first, second = service(clock, counters=counters), service(clock, counters=counters)
    await fail(first, A, times=3)
    await fail(second, A, times=2)
    assert await locked_out(first, A) == MINUTE + 1
    assert await locked_out(second, A) == MINUTE + 1
    separate = service(clock)  # its own storage: counts nothing of theirs
    assert (await login(separate, A)).name == "alice"


async def test_over_long_usernames_are_keyed_by_digest() -> None:
    assert key_part("alice@example.com") == "alice%40example.com"
    long = key_part("x" * 10_000)
    assert long.startswith("sha256-")
    assert len(long) <= KEY_PART_MAX
    assert key_part("x" * 10_000) != key_part("x" * 10_001)


# --- bearer --------------------------------------------------------------------------------------


async def test_unknown_tokens_past_the_address_limit_are_refused(clock: FakeClock) -> None:
    auth = service(clock, settings(failed_logins_per_address="3/minute"))
    for _ in range(3):
        with pytest.raises(InvalidApiKey):
            await auth.authenticate(f"Bearer {new_token().plaintext}", A)
    with pytest.raises(TooManyFailedLogins) as refused:
        await auth.authenticate(f"Bearer {new_token().plaintext}", A)
    assert refused.value.retry_after == MINUTE + 1
    # Token failures are counted apart from password failures: Basic from A is unaffected.
    assert (await login(auth, A)).name == "alice"
    with pytest.raises(InvalidApiKey):
        await auth.authenticate(f"Bearer {new_token().plaintext}", B)


# --- counter storage down ------------------------------------------------------------------------


async def test_storage_down_fails_basic_closed_and_bearer_open(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    audit = MemoryAuditSink()
    auth = service(clock, audit=audit)

    async def broken(*args: object, **kwargs: object) -> Any:
        raise StorageError(ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."))

    monkeypatch.setattr(limits.aio.storage.memory.MemoryStorage, "get_moving_window", broken)
    monkeypatch.setattr(limits.aio.storage.memory.MemoryStorage, "acquire_entry", broken)
    with pytest.raises(RateLimiterUnavailable) as failed:
        await login(auth, A)
    error = failed.value
    assert (error.status, error.code, error.retry_after) == (503, "rate_limiter_unavailable", 5)
    assert "Connection" not in error.message
    assert error.detail is not None
    assert "ConnectionError" in error.detail
    [event] = audit.of_type("rate_limit.unavailable")
    assert (event.outcome, event.principal, event.auth_method, event.client) == ("failed", "alice", "basic", "10.0.0.1")
    # A token is checked as if under its limit (no store here: so it is unknown, 401 not 503).
    with pytest.raises(InvalidApiKey):
        await auth.authenticate(f"Bearer {new_token().plaintext}", A)
    assert "fail open" in caplog.text


# --- the dummy hash ------------------------------------------------------------------------------


@dataclass
class Bcrypt:
    """Stands in for bcrypt in the auth module: records each check's hash cost, matches nothing."""

    costs: list[int]

    def verify(self, password: str, password_hash: str) -> bool:
        self.costs.append(cost_of(password_hash))
        return False

    @staticmethod
    def dummy(cost: int) -> str:
        return f"$2b${cost:02d}$" + "C" * 53


@pytest.fixture
def bcrypt_costs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    fake = Bcrypt([])
    monkeypatch.setattr(auth_module, "verify_password", fake.verify)
    monkeypatch.setattr(auth_module, "dummy_hash", fake.dummy)
    return fake.costs


async def test_the_dummy_is_never_cheaper_than_the_default_cost(clock: FakeClock, bcrypt_costs: list[int]) -> None:
    await fail(service(clock), A, "nobody")
    assert bcrypt_costs == [DEFAULT_COST]


async def test_the_dummy_matches_a_dearer_settings_user(clock: FakeClock, bcrypt_costs: list[int]) -> None:
    users = [{"username": "alice", "password": HASH}, {"username": "ops", "password": Bcrypt.dummy(14)}]
    await fail(service(clock, settings(users=users)), A, "nobody")
    assert bcrypt_costs == [14]


class Store:
    """The few reads the auth service makes of a principal store, over one database user."""

    def __init__(self, password_hash: str, max_cost: int) -> None:
        self.user = PrincipalRecord(7, "carol", "user", ("generator",), True, datetime.now(UTC), None, password_hash)
        self.max_cost = max_cost

    def auth_version(self) -> int:
        return 1

    def get_principal(self, name: str) -> PrincipalRecord | None:
        return self.user if name == self.user.name else None

    def max_password_cost(self) -> int:
        return self.max_cost


async def test_the_dummy_matches_the_dearest_stored_hash(clock: FakeClock, bcrypt_costs: list[int]) -> None:
    store = Store(Bcrypt.dummy(15), max_cost=13)  # carol's hash was stored after the store's maximum was read
    auth = service(clock, store=cast(PrincipalStore, store))
    await fail(auth, A, "nobody")
    await fail(auth, A, "carol")
    await fail(auth, A, "nobody")
    assert bcrypt_costs == [13, 15, 15]
