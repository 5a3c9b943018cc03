"""Shared counters on the `limits` library: one storage, one strategy, one key prefix.

Request rates (`zguard.services.ratelimit`) and failed logins (`zguard.services.failed_logins`)
count through this, so both live where `rate_limits.storage` says: `memory://` (this process) or
Redis (every replica that uses the same `rate_limits.key_prefix`). Each user of it puts its own
name after the prefix, so their keys cannot meet.

Connect and read timeouts on Redis are short (`REDIS_TIMEOUT_S`) so a dead Redis is not a slow
one too. What a storage failure means (fail closed or open) is each user's decision, written
next to its code; `errors` is the tuple of exceptions a failure can raise.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from limits import RateLimitItem, parse
from limits.aio.storage import Storage as AsyncStorage
from limits.aio.strategies import MovingWindowRateLimiter, RateLimiter, SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

from zguard.config import RateLimitSettings
from zguard.security.rates import Rate, limits_notation

REDIS_TIMEOUT_S = 2.0
UNAVAILABLE_RETRY_AFTER_S = 5  # what a client is told to wait while the storage is down
STRATEGIES: Mapping[str, Callable[..., RateLimiter]] = {
    "moving-window": MovingWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
}
KEY_PART_MAX = 128  # longer client text (a username) is keyed by its digest, not stored whole


def seconds_until(reset_time: float, now: float) -> int:
    """Whole seconds until strictly after `reset_time`: the library still refuses at the instant itself."""
    return math.floor(reset_time - now) + 1 if reset_time > now else 0


def key_part(text: str) -> str:
    """`text` as one segment of a counter key: escaped, and bounded (a digest past `KEY_PART_MAX`)."""
    quoted = quote(text, safe="")
    if len(quoted) <= KEY_PART_MAX:
        return quoted
    return "sha256-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class CounterStorage:
    """A `limits` storage and strategy, with the key prefix every counter key starts with.

    `clock` is wall time (epoch seconds), the library's: its reset times are compared with it.
    """

    @property
    def shared(self) -> bool:
        """Whether the counters live outside this process (Redis), where they can be down."""
        return self._scheme != "memory"

    async def reachable(self) -> bool:
        """Whether the storage answers now (Redis PING); memory always does."""
        try:
            return bool(await self.storage.check())
        except self.errors:
            return False

    def __init__(
        self,
        storage: str = "memory://",
        *,
        strategy: str = "moving-window",
        key_prefix: str = "zguard",
        clock: Callable[[], float] = time.time,
    ) -> None:
        scheme = storage.partition("://")[0]
        self._scheme = scheme
        options: dict[str, float | str | bool] = {"wrap_exceptions": True}
        if scheme != "memory":
            options.update(
                implementation="redispy", socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S
            )
        opened = storage_from_string("async+" + storage, **options)
        if not isinstance(opened, AsyncStorage):  # "async+" always gives one; says so to the type checker
            raise TypeError(f"{type(opened).__name__} is not an asynchronous storage")
        self.storage: AsyncStorage = opened
        self.limiter = STRATEGIES[strategy](self.storage)
        base = self.storage.base_exceptions
        self.errors: tuple[type[BaseException], ...] = (
            StorageError,
            OSError,
            TimeoutError,
            *(base if isinstance(base, tuple) else (base,)),
        )
        self.prefix = key_prefix
        self.clock = clock
        self._items: dict[Rate, RateLimitItem] = {}

    @classmethod
    def from_settings(cls, section: RateLimitSettings) -> CounterStorage:
        return cls(section.storage.get_secret_value(), strategy=section.strategy, key_prefix=section.key_prefix)

    def redis(self) -> Any:
        """The storage's own asyncio Redis client (plain, Sentinel master or cluster), for the
        counters the library has no strategy for (in-flight leases, policy digests); the same
        connections and timeouts. TypeError on `memory://`."""
        bridge = getattr(self.storage, "bridge", None)
        if not self.shared or bridge is None:
            raise TypeError("the memory:// storage has no Redis client")
        return bridge.get_connection()

    async def aclose(self) -> None:
        """Close the Redis connections before the event loop ends (the library offers no close)."""
        if self.shared:
            await self.redis().aclose()

    def item(self, rate: Rate) -> RateLimitItem:
        """The library's item for `rate` (made once per rate)."""
        item = self._items.get(rate)
        if item is None:
            item = self._items[rate] = parse(limits_notation(rate))
        return item

    @staticmethod
    def reason(exc: BaseException) -> str:
        """What failed, for a log line or an audit event: the cause's type and text, bounded."""
        cause = exc.storage_error if isinstance(exc, StorageError) else exc
        return f"{type(cause).__name__}: {cause}"[:200]
