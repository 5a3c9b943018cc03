"""Which rates apply to whom, and the numbers the RateLimit-* headers carry.

The service runs on the `limits` library's in-process memory storage. The library reads the wall
clock itself and offers no way to pass one in, so `clock` replaces the `time` module those two
library modules see with a fake one: every window and every reset below is exact.
"""

from __future__ import annotations

import random
from typing import Any

import limits.aio.storage.memory
import pytest
from limits.errors import StorageError

from tests.common.clocks import FakeClock, limits_clock
from zguard.audit import RequestRecord
from zguard.audit.memory import MemoryAuditSink
from zguard.config import Settings
from zguard.errors import RateLimiterUnavailable, RateLimitExceeded, TooManyConcurrentRequests
from zguard.security.rates import Rate
from zguard.services.auth import Identity, RequestInfo
from zguard.services.ratelimit import (
    BLOCKED_RECHECK_S,
    RateLimitService,
    RateLimitState,
    RatePolicy,
    describe_period,
)

pytestmark = pytest.mark.anyio

INFO = RequestInfo(client="10.0.0.7", request_id="r1", listener="api")
ALICE = Identity(name="alice", kind="user", roles=frozenset({"generator"}), method="basic")
BOB = Identity(name="bob", kind="user", roles=frozenset({"generator"}), method="basic")
LOCAL = Identity(name="local", kind="anonymous", roles=frozenset({"generator", "viewer"}), method="none")
MINUTE, HOUR, DAY = 60, 3600, 86400


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    return limits_clock(monkeypatch)


@pytest.fixture
def audit() -> MemoryAuditSink:
    return MemoryAuditSink()


def service(
    clock: FakeClock, audit: MemoryAuditSink, policy: RatePolicy, *, strategy: str = "moving-window", **kw: Any
) -> RateLimitService:
    return RateLimitService(policy, strategy=strategy, audit=audit, clock=clock.time, **kw)


def settings(**data: Any) -> Settings:
    return Settings.model_validate({"api_auth": {"enabled": False}, **data})


# --- which rates apply (pure) ----------------------------------------------------------------


def test_no_rate_configured_means_not_rate_limited() -> None:
    assert RatePolicy.from_settings(settings()).rates_for("alice", {"generator"}) == ()


def test_the_global_rate_applies_to_everyone_in_the_guides_format() -> None:
    policy = RatePolicy.from_settings(settings(rate_limit="10/分钟;100/小时;1000/天"))
    expected = (Rate(10, MINUTE), Rate(100, HOUR), Rate(1000, DAY))
    assert policy.rates_for("alice", {"generator"}) == expected
    assert policy.rates_for("local", {"generator", "viewer"}) == expected
    assert policy.rates_for("svc", ()) == expected


def test_role_rates_add_to_the_global_rate_and_the_strictest_per_period_is_kept() -> None:
    policy = RatePolicy.from_settings(
        settings(
            rate_limit="10/minute",
            rate_limits={"per_role": {"generator": "5/minute;100/hour", "viewer": "50/hour;1000/day"}},
        )
    )
    assert policy.rates_for("a", {"generator"}) == (Rate(5, MINUTE), Rate(100, HOUR))
    assert policy.rates_for("b", {"viewer"}) == (Rate(10, MINUTE), Rate(50, HOUR), Rate(1000, DAY))
    # Every role's rates must pass: holding more roles can only tighten.
    assert policy.rates_for("c", {"generator", "viewer"}) == (Rate(5, MINUTE), Rate(50, HOUR), Rate(1000, DAY))
    assert policy.rates_for("d", {"auditor"}) == (Rate(10, MINUTE),)


def test_a_per_principal_rate_replaces_role_and_global_rates() -> None:
    policy = RatePolicy.from_settings(
        settings(
            rate_limit="10/minute",
            rate_limits={"per_role": {"generator": "5/minute"}, "per_principal": {"batch": "600/minute;10000/天"}},
        )
    )
    assert policy.rates_for("batch", {"generator"}) == (Rate(600, MINUTE), Rate(10000, DAY))
    assert policy.rates_for("alice", {"generator"}) == (Rate(5, MINUTE),)


def test_a_per_principal_override_may_also_be_stricter_than_the_global_rate() -> None:
    policy = RatePolicy.from_settings(settings(rate_limit="100/minute", rate_limits={"per_principal": {"x": "1/天"}}))
    assert policy.rates_for("x", ()) == (Rate(1, DAY),)


@pytest.mark.parametrize(
    ("period", "text"),
    [
        (1, "second"),
        (60, "minute"),
        (300, "5 minutes"),
        (3600, "hour"),
        (7200, "2 hours"),
        (86400, "day"),
        (90, "90 seconds"),
    ],
)
def test_periods_are_described_in_words(period: int, text: str) -> None:
    assert describe_period(period) == text


def test_state_headers_follow_the_ietf_draft_names() -> None:
    assert RateLimitState(limit=10, remaining=3, reset_s=42, period_s=60).headers() == {
        "RateLimit-Limit": "10",
        "RateLimit-Remaining": "3",
        "RateLimit-Reset": "42",
    }


# --- counting --------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["moving-window", "sliding-window-counter"])
async def test_third_request_of_two_per_minute_is_refused(
    clock: FakeClock, audit: MemoryAuditSink, strategy: str
) -> None:
    limiter = service(clock, audit, RatePolicy([Rate(2, MINUTE)]), strategy=strategy)
    first = await limiter.check(ALICE, INFO)
    assert first is not None
    assert (first.limit, first.remaining) == (2, 1)
    clock.advance(10)
    second = await limiter.check(ALICE, INFO)
    assert second is not None
    assert (second.limit, second.remaining) == (2, 0)
    with pytest.raises(RateLimitExceeded) as refused:
        await limiter.check(ALICE, INFO)
    error = refused.value
    assert error.code == "rate_limit_exceeded"
    assert error.status == 429
    assert 1 <= error.retry_after <= MINUTE
    assert error.headers == {
        "RateLimit-Limit": "2",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": str(error.retry_after),
    }
    assert "2 requests per minute" in error.message


async def test_moving_window_numbers_are_exact(clock: FakeClock, audit: MemoryAuditSink) -> None:
    limiter = service(clock, audit, RatePolicy([Rate(2, MINUTE)]))
    assert await limiter.check(ALICE, INFO) == RateLimitState(limit=2, remaining=1, reset_s=61, period_s=MINUTE)
    clock.advance(15)
    # The oldest counted request leaves the window just after 45 s from now: then one more is allowed.
    assert await limiter.check(ALICE, INFO) == RateLimitState(limit=2, remaining=0, reset_s=46, period_s=MINUTE)
    clock.advance(5)
    with pytest.raises(RateLimitExceeded) as refused:
        await limiter.check(ALICE, INFO)
    assert refused.value.retry_after == 41
    clock.advance(40)  # at the instant itself the library still refuses
    with pytest.raises(RateLimitExceeded):
        await limiter.check(ALICE, INFO)
    clock.advance(1)
    # Exactly as promised: the first request has left the window.
    assert await limiter.check(ALICE, INFO) == RateLimitState(limit=2, remaining=0, reset_s=15, period_s=MINUTE)
    event = audit.of_type("rate_limit.exceeded")[0]
    assert (event.outcome, event.code, event.principal, event.client) == (
        "denied",
        "rate_limit_exceeded",
        "alice",
        "10.0.0.7",
    )
    assert event.detail == {"limit": 2, "period_s": MINUTE, "retry_after": 41}


async def test_principals_have_separate_counters(clock: FakeClock, audit: MemoryAuditSink) -> None:
    limiter = service(clock, audit, RatePolicy([Rate(1, MINUTE)]))
    await limiter.check(ALICE, INFO)
    with pytest.raises(RateLimitExceeded):
        await limiter.check(ALICE, INFO)
    state = await limiter.check(BOB, INFO)
    assert state is not None
    assert state.remaining == 0


async def test_names_cannot_collide_through_the_key_separator(clock: FakeClock, audit: MemoryAuditSink) -> None:
    limiter = service(clock, audit, RatePolicy([Rate(1, MINUTE)]))
    odd = Identity(name="alice/1/1/minute", kind="user", roles=frozenset(), method="basic")
    await limiter.check(ALICE, INFO)
    assert await limiter.check(odd, INFO) is not None


async def test_a_refused_request_counts_against_no_rate(clock: FakeClock, audit: MemoryAuditSink) -> None:
    limiter = service(clock, audit, RatePolicy([Rate(2, MINUTE), Rate(3, HOUR)]))
    for _ in range(2):
        await limiter.check(ALICE, INFO)
    for _ in range(5):  # refused by the minute; the hour must not count these
        with pytest.raises(RateLimitExceeded):
            await limiter.check(ALICE, INFO)
    clock.advance(61)
    state = await limiter.check(ALICE, INFO)
    # The tightest rate is reported: the hour has 0 left, the minute 1.
    assert state == RateLimitState(limit=3, remaining=0, reset_s=HOUR - 60, period_s=HOUR)
    with pytest.raises(RateLimitExceeded) as refused:
        await limiter.check(ALICE, INFO)
    assert refused.value.retry_after == HOUR - 60
    assert refused.value.headers["RateLimit-Limit"] == "3"
    assert "3 requests per hour" in refused.value.message


async def test_the_wait_is_the_longest_of_the_exhausted_rates(clock: FakeClock, audit: MemoryAuditSink) -> None:
    limiter = service(clock, audit, RatePolicy([Rate(1, MINUTE), Rate(1, HOUR)]))
    await limiter.check(ALICE, INFO)
    clock.advance(1)
    with pytest.raises(RateLimitExceeded) as refused:
        await limiter.check(ALICE, INFO)
    assert refused.value.retry_after == HOUR
    assert refused.value.headers["RateLimit-Limit"] == "1"


async def test_unlimited_principal_is_not_counted(clock: FakeClock, audit: MemoryAuditSink) -> None:
    limiter = service(clock, audit, RatePolicy(per_principal={"bob": [Rate(1, MINUTE)]}))
    for _ in range(5):
        assert await limiter.check(ALICE, INFO) is None
    assert audit.events == []


async def test_storage_failure_fails_closed_and_is_audited(
    clock: FakeClock, audit: MemoryAuditSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = service(clock, audit, RatePolicy([Rate(5, MINUTE)]))

    async def broken(*args: object, **kwargs: object) -> bool:
        raise StorageError(ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."))

    monkeypatch.setattr(limits.aio.storage.memory.MemoryStorage, "acquire_entry", broken)
    with pytest.raises(RateLimiterUnavailable) as failed:
        await limiter.check(ALICE, INFO)
    error = failed.value
    assert (error.status, error.code, error.retry_after) == (503, "rate_limiter_unavailable", 5)
    assert "Connection" not in error.message
    assert error.detail is not None
    assert "ConnectionError" in error.detail
    [event] = audit.of_type("rate_limit.unavailable")
    assert (event.outcome, event.code, event.principal) == ("failed", "rate_limiter_unavailable", "alice")


# --- a principal over its limit is remembered ------------------------------------------------


class StorageCalls:
    """Counts the limiter's calls into the storage, by wrapping the strategy object's methods."""

    def __init__(self, limiter: RateLimitService, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        strategy = limiter._limiter
        for name in ("hit", "test", "get_window_stats"):
            original = getattr(strategy, name)
            monkeypatch.setattr(strategy, name, self._counted(original))

    def _counted(self, original: Any) -> Any:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await original(*args, **kwargs)

        return counted


async def test_a_principal_over_its_limit_is_refused_without_asking_the_storage(
    clock: FakeClock, audit: MemoryAuditSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = service(clock, audit, RatePolicy([Rate(2, MINUTE)]))
    await limiter.check(ALICE, INFO)
    clock.advance(15)
    await limiter.check(ALICE, INFO)
    clock.advance(5)
    with pytest.raises(RateLimitExceeded) as first:
        await limiter.check(ALICE, INFO)  # asks the storage, which says: the window frees up in 41 s
    assert first.value.retry_after == 41
    calls = StorageCalls(limiter, monkeypatch)
    for _ in range(3):
        clock.advance(0.25)
        record = RequestRecord()
        with pytest.raises(RateLimitExceeded) as refused:
            await limiter.check(ALICE, RequestInfo(client="10.0.0.7", record=record))
        # The refusal the storage would give: the wait counts down to the same instant (60 s after
        # the first request), the headers and the audit record follow it.
        assert refused.value.retry_after == 40
        assert refused.value.headers == {"RateLimit-Limit": "2", "RateLimit-Remaining": "0", "RateLimit-Reset": "40"}
        assert "2 requests per minute" in refused.value.message
        assert (record.outcome, record.code, record.principal) == ("denied", "rate_limit_exceeded", "alice")
        assert record.detail == {"limit": 2, "period_s": MINUTE, "retry_after": 40}
    assert calls.count == 0
    assert await limiter.check(BOB, INFO) is not None  # another principal is counted as before
    assert calls.count > 0


async def test_a_remembered_refusal_is_checked_again_and_lifted_at_the_reset(
    clock: FakeClock, audit: MemoryAuditSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = service(clock, audit, RatePolicy([Rate(1, MINUTE)]))
    await limiter.check(ALICE, INFO)
    clock.advance(30)
    with pytest.raises(RateLimitExceeded):
        await limiter.check(ALICE, INFO)
    calls = StorageCalls(limiter, monkeypatch)
    clock.advance(BLOCKED_RECHECK_S)  # the entry is due for a check against the storage
    with pytest.raises(RateLimitExceeded) as refused:
        await limiter.check(ALICE, INFO)
    assert refused.value.retry_after == 30
    assert calls.count > 0
    clock.advance(29)  # at the reset instant the library still refuses, and so does the service
    with pytest.raises(RateLimitExceeded):
        await limiter.check(ALICE, INFO)
    clock.advance(1)
    state = await limiter.check(ALICE, INFO)
    assert state == RateLimitState(limit=1, remaining=0, reset_s=61, period_s=MINUTE)


async def test_a_window_cleared_in_the_storage_is_honoured_within_the_recheck_interval(
    clock: FakeClock, audit: MemoryAuditSink
) -> None:
    limiter = service(clock, audit, RatePolicy([Rate(1, DAY)]))
    await limiter.check(ALICE, INFO)
    with pytest.raises(RateLimitExceeded):
        await limiter.check(ALICE, INFO)
    await limiter._storage.reset()  # an operator clears the counters by hand
    with pytest.raises(RateLimitExceeded):
        await limiter.check(ALICE, INFO)  # still remembered ...
    clock.advance(BLOCKED_RECHECK_S)
    assert await limiter.check(ALICE, INFO) is not None  # ... for at most the recheck interval


async def test_other_roles_mean_other_rates_not_the_remembered_refusal(
    clock: FakeClock, audit: MemoryAuditSink
) -> None:
    limiter = service(clock, audit, RatePolicy(per_role={"generator": [Rate(1, MINUTE)], "viewer": [Rate(5, MINUTE)]}))
    await limiter.check(ALICE, INFO)
    with pytest.raises(RateLimitExceeded):
        await limiter.check(ALICE, INFO)
    viewer = Identity(name="alice", kind="user", roles=frozenset({"viewer"}), method="basic")
    state = await limiter.check(viewer, INFO)  # an administrator changed alice's roles
    assert state is not None
    assert (state.limit, state.remaining) == (5, 4)


@pytest.mark.parametrize("strategy", ["moving-window", "sliding-window-counter"])
async def test_remembering_refusals_changes_no_answer(
    clock: FakeClock, audit: MemoryAuditSink, monkeypatch: pytest.MonkeyPatch, strategy: str
) -> None:
    """The same requests at the same instants, against a service that always asks the storage:
    every answer (allowed or refused, Retry-After, headers, remaining) is the same."""
    policy = RatePolicy([Rate(3, 10), Rate(5, MINUTE)])
    remembering = service(clock, audit, policy, strategy=strategy)
    asking = service(clock, audit, policy, strategy=strategy)
    monkeypatch.setattr(asking, "_remember_blocked", lambda *args: None)
    steps = random.Random(7)  # noqa: S311 - a reproducible order of test steps, not a secret

    async def answer(limiter: RateLimitService) -> object:
        try:
            return await limiter.check(ALICE, INFO)
        except RateLimitExceeded as exc:
            return ("refused", exc.retry_after, exc.headers, exc.message)

    refusals = 0
    for _ in range(400):
        clock.advance(steps.choice([0.0, 0.05, 0.3, 0.7, 1.0, 2.5, 9.0]))
        expected = await answer(asking)
        assert await answer(remembering) == expected
        refusals += isinstance(expected, tuple)
    assert refusals > 100  # the comparison covered many refusals, not only allowed requests


# --- in-flight cap ---------------------------------------------------------------------------


async def test_in_flight_cap_per_principal(clock: FakeClock, audit: MemoryAuditSink) -> None:
    limiter = service(clock, audit, RatePolicy(), max_concurrent=2)
    async with limiter.concurrency(ALICE, INFO), limiter.concurrency(ALICE, INFO):
        assert limiter.in_flight("alice") == 2
        with pytest.raises(TooManyConcurrentRequests) as refused:
            async with limiter.concurrency(ALICE, INFO):
                pass  # pragma: no cover - never entered
        async with limiter.concurrency(BOB, INFO):  # another principal is not affected
            assert limiter.in_flight("bob") == 1
    assert limiter.in_flight("alice") == 0
    error = refused.value
    assert (error.status, error.code, error.retry_after) == (429, "too_many_concurrent_requests", 2)
    [event] = audit.of_type("rate_limit.concurrency")
    assert event.detail == {"in_flight": 2, "max": 2}


async def test_in_flight_slot_is_freed_when_the_work_fails(clock: FakeClock, audit: MemoryAuditSink) -> None:
    limiter = service(clock, audit, RatePolicy(), max_concurrent=1)
    with pytest.raises(RuntimeError):
        async with limiter.concurrency(LOCAL, INFO):
            raise RuntimeError
    async with limiter.concurrency(LOCAL, INFO):
        assert limiter.in_flight("local") == 1


def test_service_from_settings(audit: MemoryAuditSink) -> None:
    built = RateLimitService.from_settings(
        settings(rate_limit="3/minute", rate_limits={"strategy": "sliding-window-counter"}), audit
    )
    assert built.policy.rates_for("x", ()) == (Rate(3, MINUTE),)
