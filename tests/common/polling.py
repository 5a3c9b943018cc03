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
from typing import TypeVar

T = TypeVar("T")
What = str | Callable[[], str]


def wait_until(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    what: What,
    interval: float = 0.05,
    ignoring: tuple[type[Exception], ...] = (),
) -> T:
    """The first truthy result of `condition()`; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = condition()
        except ignoring as exc:
            last_error = exc
        else:
            if result:
                return result
            last_error = None
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(what, timeout, last_error))
        time.sleep(interval)


async def wait_until_async(
    condition: Callable[[], T | None],
    *,
    timeout: float,  # noqa: ASYNC109  a deadline for polling a plain callable, as in wait_until
    what: What,
    interval: float = 0.05,
    ignoring: tuple[type[Exception], ...] = (),
) -> T:
    """`wait_until` for a coroutine: sleeps with `asyncio.sleep`, so the event loop runs meanwhile."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = condition()
        except ignoring as exc:
            last_error = exc
        else:
            if result:
                return result
            last_error = None
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(what, timeout, last_error))
        await asyncio.sleep(interval)


def _timed_out(what: What, timeout: float, last_error: Exception | None) -> str:
    message = f"timed out after {timeout:g} s waiting for {what() if callable(what) else what}"
    if last_error is not None:
        message += f" (last error: {type(last_error).__name__}: {last_error})"
    return message
