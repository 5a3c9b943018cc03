"""Bounded admission in front of the engine: one batch at a time, a bounded wait, no lost slots.

Decisions:
- A request arriving while `max_queue` requests already wait is refused at once (`ServerBusy`,
  with a `Retry-After` estimated from recent generation times) rather than queued without bound.
- Waiting is an `await` on the event loop; the GPU work runs in one dedicated daemon thread, so
  the loop never blocks on torch and a stuck generation cannot keep the process from exiting.
- A waiter that is cancelled (timeout, client disconnected) leaves the queue without the engine
  ever seeing its job. A job cancelled while running gets its stop flag raised; the engine stops
  at the next denoising step, and the next job starts only once the thread is really free.
- A caller may name its job with a ticket (`TICKET`, a context variable, so the layers between
  the console and here pass nothing): `position(ticket)` then says how many jobs are ahead of
  it. A ticket is held only while its job waits or runs, so the map is bounded by `max_queue`
  plus the one running job; the caller makes the ticket unguessable and scopes it to its owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import queue
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from contextvars import ContextVar
from typing import Any, Literal, TypeVar

from zguard.errors import ServerBusy

T = TypeVar("T")
StopFlag = Callable[[], bool]
TICKET: ContextVar[Hashable | None] = ContextVar("zguard_admission_ticket", default=None)
Position = tuple[Literal["waiting", "running"], int]  # the state and the number of jobs ahead


class WorkerThread:
    """One daemon thread that runs submitted callables in order."""

    def __init__(self, name: str = "zguard-engine") -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((fn, future))
        return future

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            fn, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
                future.set_exception(exc)

    def stop(self, timeout: float | None = None) -> bool:
        """Ask the thread to finish after its current job; True when it ended within `timeout`."""
        self._jobs.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()


class AdmissionQueue:
    """FIFO admission to a single worker; see the module docstring for the rules."""

    def __init__(self, max_queue: int, worker: WorkerThread, initial_estimate_s: float = 1.0) -> None:
        self._max_queue = max_queue
        self._worker = worker
        self._lock = asyncio.Lock()
        self._waiting = 0
        self._running = 0
        self._estimate_s = initial_estimate_s
        self._arrivals = 0
        self._queued: dict[int, Hashable | None] = {}  # arrival number → ticket, in arrival order
        self._running_tickets: set[Hashable] = set()

    @property
    def max_queue(self) -> int:
        """How many jobs may wait; one more arriving is refused (`ServerBusy`)."""
        return self._max_queue

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return self._running

    def position(self, ticket: Hashable) -> Position | None:
        """Where the job with `ticket` stands: ("running", 0), ("waiting", jobs ahead of it:
        those waiting before it and the one running), or None when no such job waits or runs."""
        if ticket in self._running_tickets:
            return "running", 0
        ahead = self._running
        for queued in self._queued.values():  # at most max_queue entries
            if queued == ticket:
                return "waiting", ahead
            ahead += 1
        return None

    def retry_after_s(self) -> int:
        return max(1, math.ceil(self._estimate_s * (self._waiting + 1)))

    async def run(self, job: Callable[[StopFlag], T]) -> T:
        """Run `job(should_stop)` on the worker when its turn comes; raise ServerBusy if full."""
        if (self._lock.locked() or self._waiting) and self._waiting >= self._max_queue:
            raise ServerBusy(
                "the server is busy; retry after the time in the Retry-After header",
                retry_after=self.retry_after_s(),
                detail=f"{self._waiting} waiting, max_queue={self._max_queue}",
            )
        ticket = TICKET.get()
        arrival = self._arrivals
        self._arrivals += 1
        self._waiting += 1
        self._queued[arrival] = ticket
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
            del self._queued[arrival]
        stop = threading.Event()
        started = time.perf_counter()
        try:
            future = self._worker.submit(lambda: job(stop.is_set))
        except BaseException:
            self._lock.release()
            raise
        self._running += 1
        if ticket is not None:
            self._running_tickets.add(ticket)

        def finished(_: Future[T]) -> None:
            self._running -= 1
            self._running_tickets.discard(ticket)
            elapsed = time.perf_counter() - started
            self._estimate_s = 0.8 * self._estimate_s + 0.2 * elapsed
            self._lock.release()

        loop = asyncio.get_running_loop()

        def finished_threadsafe(f: Future[T]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed during shutdown: nobody waits
                loop.call_soon_threadsafe(finished, f)

        future.add_done_callback(finished_threadsafe)
        outcome = asyncio.wrap_future(future)
        try:
            return await asyncio.shield(outcome)
        except asyncio.CancelledError:
            stop.set()
            outcome.add_done_callback(_retrieve)  # nobody awaits it any more
            raise


def _retrieve(outcome: asyncio.Future[Any]) -> None:
    if not outcome.cancelled():
        outcome.exception()
