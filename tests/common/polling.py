"""Waiting for a condition: `wait_until` from a test's own thread, `wait_until_async` inside a
running event loop (where what is awaited needs the loop to make progress).

Both call `condition` every `interval` seconds until it returns something truthy, and return that.
After `timeout` seconds they raise AssertionError naming `what`: a string, or a callable for text
worth computing only on failure (a server's log). An exception of a type in `ignoring` counts as
"not yet" (a server not listening yet); any other exception from `condition` propagates at once,
which is how a condition says "this will never happen" (the process it waits on has exited).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
What = str | Callable[[], str]


class _Poll(Generic[T]):
    """One wait's state: each `attempt` returns the condition's truthy result or None."""

    def __init__(
        self, condition: Callable[[], T | None], timeout: float, what: What, ignoring: tuple[type[Exception], ...]
    ) -> None:
        self.condition, self.timeout, self.what, self.ignoring = condition, timeout, what, ignoring
        self.deadline = time.monotonic() + timeout
        self.last_error: Exception | None = None

    def attempt(self) -> T | None:
        try:
            result = self.condition()
        except self.ignoring as exc:
            self.last_error = exc
            result = None
        else:
            self.last_error = None
        if result:
            return result
        if time.monotonic() >= self.deadline:
            raise AssertionError(_timed_out(self.what, self.timeout, self.last_error))
        return None


def wait_until(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    what: What,
    interval: float = 0.05,
    ignoring: tuple[type[Exception], ...] = (),
) -> T:
    """The first truthy result of `condition()`; AssertionError naming `what` after `timeout` s."""
    poll = _Poll(condition, timeout, what, ignoring)
    while (result := poll.attempt()) is None:
        time.sleep(interval)
    return result


async def wait_until_async(
    condition: Callable[[], T | None],
    *,
    timeout: float,  # noqa: ASYNC109  a deadline for polling a plain callable, as in wait_until
    what: What,
    interval: float = 0.05,
    ignoring: tuple[type[Exception], ...] = (),
) -> T:
    """`wait_until` for a coroutine: sleeps with `asyncio.sleep`, so the event loop runs meanwhile."""
    poll = _Poll(condition, timeout, what, ignoring)
    while (result := poll.attempt()) is None:  # noqa: ASYNC110 - polls state nobody signals (no Event to wait on)
        await asyncio.sleep(interval)
    return result


def _timed_out(what: What, timeout: float, last_error: Exception | None) -> str:
    message = f"timed out after {timeout:g} s waiting for {what() if callable(what) else what}"
    if last_error is not None:
        message += f" (last error: {type(last_error).__name__}: {last_error})"
    return message
