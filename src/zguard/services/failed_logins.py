"""Failed logins, counted in the shared counter storage (`zguard.services.counters`).

Why these counters, and what each refuses, is written in `zguard.services.auth`'s docstring;
here is the counting and the order of the checks (`LoginFailures.basic_retry_after`). A
`FailureCounter` holds one kind of key (a user at an address, an address, a user, tokens from an
address) against several rates at once; its keys are
``<rate_limits.key_prefix>/failed-logins/<kind>/<part>...``, each part escaped and bounded, so
they meet neither each other nor the request-rate keys (a principal name is one escaped part).

A `FailureCounter` raises `RateLimiterUnavailable` when the storage cannot be asked, and so do the
Basic methods of `LoginFailures` (the caller fails closed); its token methods fail open, logging.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from zguard.config import ApiAuthSettings
from zguard.errors import RateLimiterUnavailable
from zguard.security.rates import Rate, parse_rates
from zguard.services.counters import UNAVAILABLE_RETRY_AFTER_S, CounterStorage, key_part, seconds_until

log = logging.getLogger("zguard.auth")


@dataclass(frozen=True)
class FailureCounter:
    """Failures of one kind of key against `rates`; a key is full when any rate is."""

    counters: CounterStorage
    kind: str
    rates: tuple[Rate, ...]

    def _key(self, parts: tuple[str, ...]) -> tuple[str, ...]:
        return (self.counters.prefix, "failed-logins", self.kind, *(key_part(part) for part in parts))

    def _unavailable(self, exc: BaseException) -> RateLimiterUnavailable:
        return RateLimiterUnavailable(
            "the failed-login counter is unavailable, so password logins are refused; retry later",
            retry_after=UNAVAILABLE_RETRY_AFTER_S,
            detail=CounterStorage.reason(exc),
        )

    async def retry_after(self, *parts: str) -> int | None:
        """Seconds until the key may fail again (the longest of its full rates); None: not full."""
        key = self._key(parts)
        limiter = self.counters.limiter
        wait = 0
        try:
            for rate in self.rates:
                stats = await limiter.get_window_stats(self.counters.item(rate), *key)
                if stats.remaining <= 0:
                    wait = max(wait, seconds_until(stats.reset_time, self.counters.clock()), 1)
        except self.counters.errors as exc:
            raise self._unavailable(exc) from None
        return wait or None

    async def has_failures(self, *parts: str) -> bool:
        """Whether the key failed at all within its longest rate's period."""
        rate = max(self.rates, key=lambda r: r.period_s)
        try:
            stats = await self.counters.limiter.get_window_stats(self.counters.item(rate), *self._key(parts))
        except self.counters.errors as exc:
            raise self._unavailable(exc) from None
        return stats.remaining < rate.limit

    async def clear(self, *parts: str) -> None:
        """Forget the key's failures in every rate (an admin unlocking a user)."""
        key = self._key(parts)
        try:
            for rate in self.rates:
                await self.counters.limiter.clear(self.counters.item(rate), *key)
        except self.counters.errors as exc:
            raise self._unavailable(exc) from None

    async def record(self, *parts: str) -> None:
        """Count one failure in every rate (a full rate stays full; nothing counts past it)."""
        key = self._key(parts)
        try:
            for rate in self.rates:
                await self.counters.limiter.hit(self.counters.item(rate), *key)
        except self.counters.errors as exc:
            raise self._unavailable(exc) from None


@dataclass(frozen=True)
class LoginFailures:
    """The failed-login counters `AuthService` keeps, with the rates `api_auth` gives them."""

    per_user_address: FailureCounter  # Basic: one username from one address (tight)
    per_address: FailureCounter  # Basic: any username from one address (moderate)
    per_user: FailureCounter  # Basic: one username from every address (loose)
    tokens_per_address: FailureCounter  # bearer: unknown or invalid tokens from one address

    @classmethod
    def build(cls, settings: ApiAuthSettings, counters: CounterStorage) -> LoginFailures:
        per_address = parse_rates(settings.failed_logins_per_address)
        return cls(
            per_user_address=FailureCounter(
                counters, "user-address", parse_rates(settings.failed_logins_per_user_address)
            ),
            per_address=FailureCounter(counters, "address", per_address),
            per_user=FailureCounter(counters, "user", parse_rates(settings.failed_logins_per_user)),
            tokens_per_address=FailureCounter(counters, "token-address", per_address),
        )

    async def basic_retry_after(self, user: str, client: str) -> int | None:
        """Seconds until Basic logins of `user` from `client` may be tried; None: now.

        The per-user budget refuses only an address that has failed (any user) within the
        per-address counter's longest period; the others refuse outright.
        """
        retry = await self.per_user_address.retry_after(user, client)
        if retry is None:
            retry = await self.per_address.retry_after(client)
        if retry is None:
            retry = await self.per_user.retry_after(user)
            if retry is not None and not await self.per_address.has_failures(client):
                retry = None
        return retry

    async def record_basic(self, user: str, client: str) -> None:
        """Count one failed Basic login of `user` from `client` in all three counters."""
        await self.per_user_address.record(user, client)
        await self.per_address.record(client)
        await self.per_user.record(user)

    async def clear_user(self, user: str, client: str | None = None) -> None:
        """Unlock `user`: their failures from every address (the loose budget), and from `client`
        (the tight one) when given. The storage cannot list a user's addresses, so a lockout at one
        address is cleared by naming it; either way it ages out of its window by itself. The
        address's own counter (any username) is left alone: it is the guesser's, not the user's."""
        await self.per_user.clear(user)
        if client is not None:
            await self.per_user_address.clear(user, client)

    async def token_retry_after(self, client: str) -> int | None:
        """Seconds until unknown tokens from `client` may cost a lookup again; None: now, or the
        counter cannot be asked (tokens fail open: it only saves database lookups)."""
        try:
            return await self.tokens_per_address.retry_after(client)
        except RateLimiterUnavailable as error:
            log.warning("failed-token counter unavailable; checking the token without it (fail open): %s", error.detail)
            return None

    async def record_token(self, client: str) -> None:
        """Count one unknown or invalid token from `client`; a storage failure is logged (fail open)."""
        try:
            await self.tokens_per_address.record(client)
        except RateLimiterUnavailable as error:
            log.warning("failed-token counter unavailable; this failure is not counted (fail open): %s", error.detail)
