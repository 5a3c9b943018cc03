"""In-flight generation slots per principal: in this process, or leased in Redis for every replica.

Decisions written here:
- With `memory://` counters the slots are a count per principal in this process (one replica:
  nothing to share). With Redis counters every replica holds its slots in one sorted set per
  principal, `<prefix>:inflight:<principal>`: each member a slot id, scored by the time its lease
  ends (Redis server time, in ms, so the replicas' clocks do not matter). Taking a slot drops the
  expired members, counts the rest and adds one only below the cap, in one Lua script: atomic
  across replicas, so a principal holds at most the cap on all of them together.
- A held slot is a lease of `serve.in_flight_lease_s`, renewed every third of it while the
  generation runs, and removed when it ends. A replica that dies mid-generation cannot remove its
  slots: they expire after at most one lease, and the principal gets them back then. The key
  itself expires one lease after its last change, so an idle principal leaves nothing behind.
- Redis unreachable when a slot is asked for: the caller fails closed (503
  `rate_limiter_unavailable`, `zguard.services.ratelimit`), as for the rates. Unreachable when a
  slot is renewed or released: logged; the lease ends by itself (a renewal lost for longer than
  the lease can let one more generation in for the rest of it: the price of not stopping work
  the GPU already does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any, Protocol

from zguard.services.counters import CounterStorage, key_part

log = logging.getLogger("zguard.ratelimit")

# KEYS[1] the principal's set; ARGV: cap, slot id, lease (ms). Returns {taken (0/1), held before}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[1]) then
  return {0, held}
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
redis.call('PEXPIRE', KEYS[1], lease)
return {1, held}
"""
# KEYS[1]; ARGV: slot id, lease (ms). Returns 1 when the slot was still held (and is renewed).
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
local held = redis.call('ZADD', KEYS[1], 'XX', 'CH', now + lease, ARGV[1])
if held == 1 then
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', KEYS[1], math.max(1, tonumber(last[2]) - now))
end
return held
"""
# KEYS[1]; ARGV: the principal's cap. Live slots (expired ones dropped first).
_COUNT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""


class SlotRefused(Exception):
    """Every slot of the principal is held; `held` is how many."""

    def __init__(self, held: int) -> None:
        super().__init__(held)
        self.held = held


class InFlightSlots(Protocol):
    """Where in-flight slots are held; `errors` are what a storage failure raises."""

    errors: tuple[type[BaseException], ...]

    def slot(self, name: str, cap: int) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold one of `name`'s slots for the block; SlotRefused when `cap` are held."""

    async def held(self, name: str) -> int:
        """Slots of `name` held now (on every replica when shared)."""


class LocalSlots:
    """Slots counted in this process: the `memory://` storage's."""

    errors: tuple[type[BaseException], ...] = ()

    def __init__(self) -> None:
        self._held: dict[str, int] = {}

    def count(self, name: str) -> int:
        return self._held.get(name, 0)

    async def held(self, name: str) -> int:
        return self.count(name)

    @contextlib.asynccontextmanager
    async def slot(self, name: str, cap: int) -> AsyncIterator[None]:
        held = self._held.get(name, 0)
        if held >= cap:  # no await since the read: the event loop makes this atomic
            raise SlotRefused(held)
        self._held[name] = held + 1
        try:
            yield
        finally:
            left = self._held[name] - 1
            if left:
                self._held[name] = left
            else:
                del self._held[name]


class LeasedSlots:
    """Slots leased in Redis, shared by every replica on the same `rate_limits.key_prefix`."""

    def __init__(self, counters: CounterStorage, *, lease_s: float = 30.0) -> None:
        self._counters = counters
        self._lease_ms = int(lease_s * 1000)
        self._renew_s = lease_s / 3
        self.errors = counters.errors
        self._scripts: tuple[Any, Any, Any] | None = None
        self.lost = 0  # leases found gone at renewal (Redis lost them, or was away past the lease)

    def key(self, name: str) -> str:
        return f"{self._counters.prefix}:inflight:{key_part(name)}"

    def _client_scripts(self) -> tuple[Any, Any, Any]:
        if self._scripts is None:
            client = self._counters.redis()
            self._scripts = (
                client.register_script(_ACQUIRE),
                client.register_script(_RENEW),
                client.register_script(_COUNT),
            )
        return self._scripts

    async def held(self, name: str) -> int:
        count = self._client_scripts()[2]
        return int(await count(keys=[self.key(name)]))

    @contextlib.asynccontextmanager
    async def slot(self, name: str, cap: int) -> AsyncIterator[None]:
        acquire, renew, _ = self._client_scripts()
        key = self.key(name)
        slot_id = uuid.uuid4().hex
        taken, held = await acquire(keys=[key], args=[cap, slot_id, self._lease_ms])
        if not int(taken):
            raise SlotRefused(int(held))
        renewer = asyncio.create_task(self._renew(renew, key, slot_id), name=f"in-flight lease {slot_id}")
        try:
            yield
        finally:
            renewer.cancel()  # not awaited: a cancellation of this task must not be swallowed here
            await self._release(key, slot_id)

    async def _renew(self, renew: Any, key: str, slot_id: str) -> None:
        while True:
            await asyncio.sleep(self._renew_s)
            try:
                if not int(await renew(keys=[key], args=[slot_id, self._lease_ms])):
                    self.lost += 1
                    log.warning("an in-flight slot's lease was gone at renewal (Redis lost it or was away)")
                    return
            except self.errors as exc:
                log.warning("could not renew an in-flight slot's lease: %s", CounterStorage.reason(exc))

    async def _release(self, key: str, slot_id: str) -> None:
        try:
            await self._counters.redis().zrem(key, slot_id)
        except self.errors as exc:  # the lease ends by itself
            log.warning(
                "could not release an in-flight slot (it expires with its lease): %s", CounterStorage.reason(exc)
            )
