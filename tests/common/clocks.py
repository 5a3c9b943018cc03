"""A clock the tests set, for code that asks `time.time()` and for the `limits` library."""

from __future__ import annotations

import limits.aio.storage.memory
import limits.aio.strategies
import pytest


class FakeClock:
    """Stands in for the `time` module (`time()`) and for an injected clock (call it)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def limits_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """A FakeClock that the `limits` library's memory storage and strategies read as `time`."""
    fake = FakeClock()
    monkeypatch.setattr(limits.aio.storage.memory, "time", fake)
    monkeypatch.setattr(limits.aio.strategies, "time", fake)
    return fake
