"""`Readiness.unavailable`: fail-closed dependencies asked at most once a second, a slow one is down."""

from __future__ import annotations

import asyncio

import pytest

from zguard.services import readiness as readiness_module
from zguard.services.readiness import PROBE_TTL_S, Readiness

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_dependency_that_does_not_answer_is_named_and_asked_once_a_second() -> None:
    asked = []
    up = {"redis": False}

    async def probe() -> bool:
        asked.append(1)
        return up["redis"]

    clock = Clock()
    readiness = Readiness({"rate_limits.storage": probe}, clock=clock)
    assert await readiness.unavailable() == ["rate_limits.storage"]
    up["redis"] = True
    for _ in range(100):  # a flood of health checks: one round trip
        assert await readiness.unavailable() == ["rate_limits.storage"]
    assert len(asked) == 1
    clock.now += PROBE_TTL_S
    assert await readiness.unavailable() == []
    assert len(asked) == 2


async def test_a_slow_dependency_counts_as_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readiness_module, "PROBE_TIMEOUT_S", 0.05)

    async def hangs() -> bool:
        await asyncio.sleep(10)
        return True

    assert await Readiness({"rate_limits.storage": hangs}).unavailable() == ["rate_limits.storage"]


async def test_no_probes_nothing_down() -> None:
    assert await Readiness().unavailable() == []
