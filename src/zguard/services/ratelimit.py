"""Per-principal request rates and in-flight generation caps.

Decisions written here:
- Which rates apply (`RatePolicy`): a principal named in `rate_limits.per_principal` gets exactly
  those rates; they *replace* its role rates and the top-level `rate_limit`, so an operator can
  give one service more (or less) than the baseline. Anyone else must stay within the rates of
  every role it holds (`rate_limits.per_role`) *and* the top-level `rate_limit`: all must pass, so
  a role can only tighten the baseline. Of two rates over the same period the smaller count is
  kept (the other could never refuse anything). No rate at all: the principal is not rate limited
  (the in-flight cap still applies). Counters are keyed by principal name (the local identity of
  `api_auth.enabled: false` is `local`), so every token of one principal shares them.
- Counting uses the `limits` library (moving window, or the sliding-window counter) on
  `memory://` (this process) or Redis (shared by every replica). A refused request consumes
  nothing: with several rates, every one is tested before any is counted, so a client that waits
  `Retry-After` is let in. Counting is atomic per rate in Redis; between the test and the count a
  request racing on another replica can still be refused by a later rate after an earlier one
  counted it — a rare over-count, never an under-count.
- Headers follow the IETF RateLimit header draft: `RateLimit-Limit`, `RateLimit-Remaining` and
  `RateLimit-Reset` (seconds) of the rate closest to exhaustion; with the moving window the reset
  is when the oldest counted request leaves the window, i.e. when one more request is allowed.
  Refusals carry them in the error; successes get them from the `RateLimitHeaders` middleware,
  which reads the `RateLimitState` that `Requires` leaves on the request.
- A principal found over its limit (a full window) is remembered in this process until the
  reset time the storage reported, and its requests until then are refused without asking the
  storage. That is exact, not an approximation: refused requests count nothing and other
  replicas can only add to a full window, so it cannot free up before that time (the moving
  window's oldest entry leaves then; the sliding-window counter's next decrement comes then at
  the earliest). A refusal while the storage still shows room is not remembered. The refusal is
  the one the storage would give: same Retry-After and headers, same audit event. It keeps a
  flood from a principal over its limit off Redis (two round trips a request) and off the event
  loop. Each entry is checked against the storage again after at most `BLOCKED_RECHECK_S`, so a
  window cleared by hand in Redis is honoured within that, and an identity whose roles changed
  has other rates, hence another entry.
- Storage failure FAILS CLOSED: if Redis cannot be asked, the request is refused with 503
  `rate_limiter_unavailable` and `Retry-After`, logged and emitted as a `rate_limit.unavailable`
  audit event. For a bank an unenforced limit is a silent policy gap; the price is availability
  while Redis is down, so run it replicated. Its connect and read timeouts are short
  (`zguard.services.counters.REDIS_TIMEOUT_S`) so a dead Redis is not a slow one too; that
  storage plumbing is shared with the failed-login counters.
- Two budgets per principal: image generation spends the configured rates (`rate_limit`,
  `rate_limits.per_role`, `per_principal`); every other route that needs a permission (model
  list, audit reads, trace, console pages, `/metrics`) spends `rate_limits.other_routes`
  (600/minute), counted under keys of its own. A Prometheus scrape every few seconds must not
  use up the guide's `10/分钟` and break generation, and a generation flood must not lock an
  auditor out of the trail.
- The in-flight cap holds where the counters are: per process with `memory://`, across every
  replica with Redis, as leased slots that a dead replica's expire after `serve.in_flight_lease_s`
  (`zguard.services.inflight`). Redis unreachable when a slot is asked for: 503
  `rate_limiter_unavailable`, as for the rates (fail closed).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

from limits import RateLimitItem

from zguard.audit import AuditEvent, AuditSink, DetailValue, Outcome, report
from zguard.config import RateLimitSettings, Settings
from zguard.errors import RateLimiterUnavailable, RateLimitExceeded, TooManyConcurrentRequests
from zguard.security.rates import Rate, parse_rates
from zguard.services.auth import Identity, RequestInfo
from zguard.services.counters import UNAVAILABLE_RETRY_AFTER_S, CounterStorage
from zguard.services.counters import seconds_until as _seconds_until
from zguard.services.inflight import InFlightSlots, LeasedSlots, LocalSlots, SlotRefused

log = logging.getLogger("zguard.ratelimit")

Bucket = Literal["generation", "other"]  # which of a principal's rate budgets a route spends

CONCURRENCY_RETRY_AFTER_S = 2  # a generation takes seconds; poll no faster than this
BLOCKED_RECHECK_S = 1.0  # a remembered refusal is checked against the storage again after this
BLOCKED_MAX = 10_000  # principals remembered as over their limit; the least recently refused go first
_UNITS = ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second"))


def describe_period(period_s: int) -> str:
    """``60`` → ``minute``, ``300`` → ``5 minutes``, ``90`` → ``90 seconds``."""
    seconds, unit = next((s, u) for s, u in _UNITS if period_s % s == 0)
    count = period_s // seconds
    return unit if count == 1 else f"{count} {unit}s"


class RatePolicy:
    """Which rates apply to a principal (pure; see the module doc for the precedence)."""

    def __init__(
        self,
        baseline: Iterable[Rate] = (),
        per_role: Mapping[str, Iterable[Rate]] | None = None,
        per_principal: Mapping[str, Iterable[Rate]] | None = None,
    ) -> None:
        self._baseline = tuple(baseline)
        self._per_role = {role: tuple(rates) for role, rates in (per_role or {}).items()}
        self._per_principal = {name: _strictest(rates) for name, rates in (per_principal or {}).items()}

    @classmethod
    def from_settings(cls, settings: Settings) -> RatePolicy:
        section = settings.rate_limits
        return cls(
            baseline=parse_rates(settings.rate_limit) if settings.rate_limit else (),
            per_role={role: parse_rates(text) for role, text in section.per_role.items()},
            per_principal={name: parse_rates(text) for name, text in section.per_principal.items()},
        )

    def rates_for(self, name: str, roles: Iterable[str]) -> tuple[Rate, ...]:
        """Every rate `name` must stay within, shortest period first; empty means unlimited."""
        override = self._per_principal.get(name)
        if override is not None:
            return override
        rates = list(self._baseline)
        for role in sorted(roles):
            rates.extend(self._per_role.get(role, ()))
        return _strictest(rates)


def _strictest(rates: Iterable[Rate]) -> tuple[Rate, ...]:
    """One rate per period, the smallest count; shortest period first."""
    best: dict[int, Rate] = {}
    for rate in rates:
        if rate.period_s not in best or rate.limit < best[rate.period_s].limit:
            best[rate.period_s] = rate
    return tuple(best[period] for period in sorted(best))


@dataclass(frozen=True)
class RateLimitState:
    """Where a principal stands against one rate: the numbers for the RateLimit-* headers."""

    limit: int
    remaining: int
    reset_s: int
    period_s: int

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }


@dataclass(frozen=True)
class _Blocked:
    """A principal over its limit: refused without asking the storage until `until` (wall time)."""

    until: float  # the latest reset time of the exhausted rates, or earlier (BLOCKED_RECHECK_S)
    exhausted: tuple[tuple[Rate, float], ...]  # each exhausted rate and its reset time, in check order

    def refusal(self, now: float) -> RateLimitState:
        """The state the storage would report now for the rate that blocks longest."""
        states = [
            RateLimitState(rate.limit, 0, _seconds_until(reset, now), rate.period_s) for rate, reset in self.exhausted
        ]
        return max(states, key=lambda s: s.reset_s)


class RateLimitService:
    """Counts requests per principal against its rates, and caps its in-flight generations."""

    def __init__(
        self,
        policy: RatePolicy,
        *,
        storage: str = "memory://",
        strategy: str = "moving-window",
        key_prefix: str = "zguard",
        max_concurrent: int = 2,
        other_routes: Iterable[Rate] = (),
        audit: AuditSink,
        clock: Callable[[], float] = time.time,
        in_flight_lease_s: float = 30.0,
    ) -> None:
        """`other_routes`: the rates of the "other" bucket (every route but generation);
        `in_flight_lease_s`: the lease of an in-flight slot held in Redis (shared storage only)."""
        self._policy = policy
        self._other_rates = _strictest(other_routes)
        self._counters = CounterStorage(storage, strategy=strategy, key_prefix=key_prefix, clock=clock)
        self._storage = self._counters.storage
        self._limiter = self._counters.limiter
        self._storage_errors = self._counters.errors
        self._prefix = key_prefix
        self._max_concurrent = max_concurrent
        self._audit = audit
        self._clock = clock  # wall time: the library's reset times are epoch seconds
        self._local_slots = LocalSlots()
        self._slots: InFlightSlots = (
            LeasedSlots(self._counters, lease_s=in_flight_lease_s) if self._counters.shared else self._local_slots
        )
        self._blocked: OrderedDict[tuple[str, str, tuple[Rate, ...]], _Blocked] = OrderedDict()

    @property
    def audit(self) -> AuditSink:
        return self._audit

    @property
    def counters(self) -> CounterStorage:
        return self._counters

    @classmethod
    def from_settings(cls, settings: Settings, audit: AuditSink) -> RateLimitService:
        section: RateLimitSettings = settings.rate_limits
        return cls(
            RatePolicy.from_settings(settings),
            storage=section.storage.get_secret_value(),
            strategy=section.strategy,
            key_prefix=section.key_prefix,
            max_concurrent=section.max_concurrent_per_principal,
            other_routes=parse_rates(section.other_routes) if section.other_routes else (),
            audit=audit,
            in_flight_lease_s=settings.serve.in_flight_lease_s,
        )

    @property
    def policy(self) -> RatePolicy:
        return self._policy

    # --- rates ----------------------------------------------------------------------------

    async def check(
        self, identity: Identity, info: RequestInfo, *, bucket: Bucket = "generation"
    ) -> RateLimitState | None:
        """Count one request in `bucket`; its state for the headers, or None when no rate applies.

        "generation" spends the principal's configured rates; "other" (every other route) the
        `rate_limits.other_routes` rates, counted under keys of their own.
        Raises RateLimitExceeded (nothing counted) or RateLimiterUnavailable (storage failed).
        """
        rates = self._policy.rates_for(identity.name, identity.roles) if bucket == "generation" else self._other_rates
        if not rates:
            return None
        remembered = (bucket, identity.name, rates)
        blocked = self._blocked.get(remembered)
        if blocked is not None:
            now = self._clock()
            if now < blocked.until:
                raise self._exceeded(identity, info, blocked.refusal(now))
            del self._blocked[remembered]
        name = quote(identity.name, safe="")
        key = (self._prefix, name) if bucket == "generation" else (self._prefix, "other", name)
        items = [self._item(rate) for rate in rates]
        try:
            refused: list[Rate] = []
            if len(rates) > 1:  # test all first, so a refusal counts against none of them
                refused = [
                    rate for rate, item in zip(rates, items, strict=True) if not await self._limiter.test(item, *key)
                ]
            if not refused:
                for rate, item in zip(rates, items, strict=True):
                    if not await self._limiter.hit(item, *key):
                        refused.append(rate)
                        break
            stats = [await self._limiter.get_window_stats(item, *key) for item in items]
        except self._storage_errors as exc:
            raise self._unavailable(identity, info, exc) from None
        now = self._clock()
        states = {
            rate: RateLimitState(
                limit=rate.limit,
                remaining=max(0, stat.remaining),
                reset_s=_seconds_until(stat.reset_time, now),
                period_s=rate.period_s,
            )
            for rate, stat in zip(rates, stats, strict=True)
        }
        if refused:
            # The request may pass only once every exhausted rate has room again.
            blocking = max((states[rate] for rate in refused), key=lambda s: s.reset_s)
            exhausted = [(rate, stat) for rate, stat in zip(rates, stats, strict=True) if rate in refused]
            # Only full windows are remembered: a refusal with room in the window (the library
            # refuses at the very instant the oldest entry leaves, or a replica raced us) reports
            # a reset time that is no bound at all.
            if all(stat.remaining <= 0 for _, stat in exhausted):
                self._remember_blocked(remembered, tuple((rate, stat.reset_time) for rate, stat in exhausted), now)
            raise self._exceeded(identity, info, blocking)
        return min(states.values(), key=lambda s: (s.remaining, -s.reset_s))

    def _remember_blocked(
        self, remembered: tuple[str, str, tuple[Rate, ...]], exhausted: tuple[tuple[Rate, float], ...], now: float
    ) -> None:
        reset_time = max(reset for _, reset in exhausted)
        if reset_time <= now:  # the library still refuses at the instant itself; nothing to skip
            return
        until = min(reset_time, now + BLOCKED_RECHECK_S)
        self._blocked[remembered] = _Blocked(until, exhausted)
        self._blocked.move_to_end(remembered)
        while len(self._blocked) > BLOCKED_MAX:
            self._blocked.popitem(last=False)

    def _item(self, rate: Rate) -> RateLimitItem:
        return self._counters.item(rate)

    def _exceeded(self, identity: Identity, info: RequestInfo, state: RateLimitState) -> RateLimitExceeded:
        wait = max(1, state.reset_s)
        self._emit(
            "rate_limit.exceeded",
            outcome="denied",
            code="rate_limit_exceeded",
            identity=identity,
            info=info,
            detail={"limit": state.limit, "period_s": state.period_s, "retry_after": wait},
        )
        error = RateLimitExceeded(
            f"rate limit exceeded: at most {state.limit} requests per {describe_period(state.period_s)}; "
            f"retry after {wait} s",
            retry_after=wait,
            detail=f"{identity.name}: {state.limit}/{state.period_s}s",
        )
        error.headers.update(RateLimitState(state.limit, 0, wait, state.period_s).headers())
        return error

    def _unavailable(self, identity: Identity, info: RequestInfo, exc: BaseException) -> RateLimiterUnavailable:
        reason = CounterStorage.reason(exc)
        log.error("rate limit storage failed; refusing requests until it answers (fail closed): %s", reason)
        self._emit(
            "rate_limit.unavailable",
            outcome="failed",
            code="rate_limiter_unavailable",
            identity=identity,
            info=info,
            detail={"error": reason},
        )
        return RateLimiterUnavailable(
            "the rate limiter is unavailable, so requests are refused; retry later",
            retry_after=UNAVAILABLE_RETRY_AFTER_S,
            detail=reason,
        )

    # --- in-flight cap --------------------------------------------------------------------

    def in_flight(self, name: str) -> int:
        """Slots `name` holds in this process (memory storage; 0 with Redis: ask `held_everywhere`)."""
        return self._local_slots.count(name)

    async def held_everywhere(self, name: str) -> int:
        """Slots `name` holds on every replica that shares the storage (this process with memory)."""
        return await self._slots.held(name)

    @property
    def slots(self) -> InFlightSlots:
        return self._slots

    @contextlib.asynccontextmanager
    async def concurrency(self, identity: Identity, info: RequestInfo) -> AsyncIterator[None]:
        """Hold one of the principal's in-flight slots; raise TooManyConcurrentRequests if none is free
        (on any replica, with Redis), RateLimiterUnavailable if the storage cannot be asked."""
        name = identity.name
        entered = False  # from then on, an exception is the generation's, not the slot's
        try:
            async with self._slots.slot(name, self._max_concurrent):
                entered = True
                yield
        except SlotRefused as refused:
            if entered:
                raise
            self._emit(
                "rate_limit.concurrency",
                outcome="denied",
                code="too_many_concurrent_requests",
                identity=identity,
                info=info,
                detail={"in_flight": refused.held, "max": self._max_concurrent},
            )
            raise TooManyConcurrentRequests(
                f"you already have {refused.held} generations in progress, the most allowed at once; "
                "wait for one to finish",
                retry_after=CONCURRENCY_RETRY_AFTER_S,
                detail=f"{name}: {refused.held} in flight",
            ) from None
        except self._slots.errors as exc:
            if entered:
                raise
            raise self._unavailable(identity, info, exc) from None

    # --- audit ----------------------------------------------------------------------------

    def _emit(
        self,
        type_: str,
        *,
        outcome: Outcome,
        code: str,
        identity: Identity,
        info: RequestInfo,
        detail: Mapping[str, DetailValue],
    ) -> None:
        report(
            self._audit,
            info.record,
            AuditEvent(
                type=type_,
                outcome=outcome,
                code=code,
                request_id=info.request_id,
                listener=info.listener,
                client=info.client,
                principal=identity.name,
                roles=tuple(sorted(identity.roles)),
                auth_method=identity.method,
                detail=detail,
            ),
        )
