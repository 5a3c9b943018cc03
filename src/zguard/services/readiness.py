"""Where the model stands, for `/readyz`, the console and request admission; and whether the
dependencies every request fails closed on are up.

Decisions written here:
- `/readyz` is what a load balancer asks. It answers 200 only when the model is ready *and*
  every fail-closed dependency answers (today: the rate-limit storage when it is Redis; the
  audit store is covered already, since no answer goes out unrecorded). With Redis down every
  permissioned request is 503 `rate_limiter_unavailable`, so a `/readyz` that said "ready" sent
  traffic to a replica that can serve none of it.
- Probes are asked at most once per `PROBE_TTL_S` and each has `PROBE_TIMEOUT_S`, so a flood
  of health checks costs the dependency one round trip a second.
- The state database (`database.url`) is probed too, with one `SELECT 1`: without it no
  credential can be checked and no event recorded, so every request fails closed (503) and the
  load balancer must drain this replica until it answers again. No restart is needed: the pool
  reconnects on the next checkout (`pool_pre_ping`), and the probe says so within a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

PROBE_TTL_S = 1.0
PROBE_TIMEOUT_S = 2.0
Probe = Callable[[], Awaitable[bool]]


def database_probe(engine: Engine) -> Probe:
    """Whether `engine`'s database answers `SELECT 1` now (run in a worker thread)."""

    def ask() -> bool:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return True

    async def probe() -> bool:
        return await asyncio.to_thread(ask)

    return probe


class ModelState(StrEnum):
    LOADING = "loading"
    WARMING_UP = "warming_up"
    READY = "ready"
    FAILED = "failed"
    STOPPING = "stopping"


class Readiness:
    """Shared by both listeners; changed only by the server's start-up and shutdown code."""

    def __init__(self, probes: dict[str, Probe] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = ModelState.LOADING
        self.since = time.time()
        self.ready_at: float | None = None
        self.probes: dict[str, Probe] = dict(probes or {})  # setting name -> is it up?
        self._clock = clock
        self._checked: tuple[float, list[str]] | None = None

    async def unavailable(self) -> list[str]:
        """The fail-closed dependencies that do not answer now, by setting name (cached briefly)."""
        now = self._clock()
        if self._checked is not None and now - self._checked[0] < PROBE_TTL_S:
            return self._checked[1]
        down = []
        for name, probe in self.probes.items():
            try:
                up = await asyncio.wait_for(probe(), PROBE_TIMEOUT_S)
            except (TimeoutError, OSError):  # a probe that cannot answer is a dependency that is down
                up = False
            if not up:
                down.append(name)
        self._checked = (now, down)
        return down

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    def set(self, state: ModelState) -> None:
        self.state = state
        self.since = time.time()
        if state is ModelState.READY:
            self.ready_at = self.since
