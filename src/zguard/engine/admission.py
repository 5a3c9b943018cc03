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
  plus the running jobs; the caller makes the ticket unguessable and scopes it to its owner.
- The engine never waits for the event loop: the worker thread takes the next request from the
  queue itself when a call ends (the loop only hears the outcome), and post-processing runs in
  the service's own pool, so the only gap between two calls is this hand-over (microseconds).
- Batching (`Batching`, off unless `generation.max_batch_images` > 1): requests of the same
  shape waiting together may share one engine call, in arrival order of the first; a later
  request of another shape waits at most one call longer. A request that leaves a running batch
  only drops its result; the call stops early only when every request in it has left.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import queue
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future, InvalidStateError
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from zguard.errors import ServerBusy

T = TypeVar("T")
Item = TypeVar("Item")
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


@dataclass(frozen=True)
class Batching:
    """When requests waiting together may share one engine call (settings `generation.*`).

    `max_images`: the most images one call may draw for several requests; 1 never combines two
    requests (one request's own `n` images are one call whatever this says). `wait_s`: how long
    the engine may hold a call open for more requests of the same shape when fewer than
    `max_images` are waiting (0: only those already waiting ride along)."""

    max_images: int = 1
    wait_s: float = 0.0


@dataclass(eq=False)
class _Entry:
    """One admitted request: what the engine runs, and how its caller hears the outcome."""

    ticket: Hashable | None
    enqueued: float
    future: Future[Any]
    stop: threading.Event
    job: Callable[[StopFlag], Any] | None = None  # run alone
    key: Hashable | None = None  # run with others of the same key by `run_batch`
    images: int = 1
    item: Any = None
    run_batch: Callable[[list[Any], StopFlag], list[Any]] | None = None


class AdmissionQueue:
    """FIFO admission to a single worker; see the module docstring for the rules.

    The waiting requests live in a list the worker thread takes from itself: when a call ends, the
    next starts at once on that thread, without a round trip through the event loop (which may be
    busy sending the last response). `idle_while_pending_s` counts the time a request waited
    while the engine ran nothing, `busy_s` the time the engine ran (both for `/metrics`)."""

    def __init__(
        self,
        max_queue: int,
        worker: WorkerThread,
        initial_estimate_s: float = 1.0,
        batching: Batching | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._max_queue = max_queue
        self._worker = worker
        self._batching = batching or Batching()
        self._clock = clock
        self._cond = threading.Condition()  # guards everything below; held for microseconds
        self._pending: list[_Entry] = []  # in arrival order; at most max_queue (+1 when idle)
        self._running = 0
        self._running_tickets: set[Hashable] = set()
        self._estimate_s = initial_estimate_s
        self._idle_s = 0.0
        self._idle_since: float | None = None  # a request waits and the engine runs nothing
        self._busy_s = 0.0
        self._busy_since: float | None = None

    @property
    def max_queue(self) -> int:
        """How many jobs may wait; one more arriving is refused (`ServerBusy`)."""
        return self._max_queue

    @property
    def waiting(self) -> int:
        return len(self._pending)

    @property
    def running(self) -> int:
        """Requests on the engine now (several when they share one batched call)."""
        return self._running

    @property
    def idle_while_pending_s(self) -> float:
        """Seconds so far in which a request was admitted or waiting and the engine ran nothing."""
        with self._cond:
            since = self._idle_since
            return self._idle_s + (self._clock() - since if since is not None else 0.0)

    @property
    def busy_s(self) -> float:
        """Seconds so far in which the engine ran admitted work."""
        with self._cond:
            since = self._busy_since
            return self._busy_s + (self._clock() - since if since is not None else 0.0)

    def position(self, ticket: Hashable) -> Position | None:
        """Where the job with `ticket` stands: ("running", 0), ("waiting", jobs ahead of it:
        those waiting before it and those running), or None when no such job waits or runs."""
        with self._cond:
            if ticket in self._running_tickets:
                return "running", 0
            ahead = self._running
            for entry in self._pending:  # at most max_queue entries
                if entry.ticket == ticket:
                    return "waiting", ahead
                ahead += 1
        return None

    def retry_after_s(self) -> int:
        return max(1, math.ceil(self._estimate_s * (len(self._pending) + 1)))

    async def run(self, job: Callable[[StopFlag], T]) -> T:
        """Run `job(should_stop)` on the worker when its turn comes; raise ServerBusy if full."""
        result: T = await self._admit(job=job)
        return result

    async def run_batched(
        self, item: Item, *, key: Hashable, images: int, run_batch: Callable[[list[Item], StopFlag], list[T]]
    ) -> T:
        """Like `run`, for work that may share one engine call with other requests of the same
        `key`: `run_batch(items, should_stop)` returns one result per item, in order (the runner
        of the first request of a batch runs it). `should_stop` is true only once every request
        of the batch was cancelled: one leaving does not stop the others; its result is dropped."""
        result: T = await self._admit(key=key, images=images, item=item, run_batch=run_batch)
        return result

    async def _admit(self, **work: Any) -> Any:
        loop = asyncio.get_running_loop()
        with self._cond:
            # Behind the running call, or behind the first waiting one when the engine is between calls.
            behind = len(self._pending) - (0 if self._running else 1)
            if behind >= self._max_queue:
                raise ServerBusy(
                    "the server is busy; retry after the time in the Retry-After header",
                    retry_after=self.retry_after_s(),
                    detail=f"{len(self._pending)} waiting, max_queue={self._max_queue}",
                )
            entry = _Entry(
                ticket=TICKET.get(),
                enqueued=self._clock(),
                future=Future(),
                stop=threading.Event(),
                **work,
            )
            self._pending.append(entry)
            if not self._running and self._idle_since is None:
                self._idle_since = entry.enqueued
            self._cond.notify_all()  # a batch held open for more may take this one
        try:
            self._worker.submit(self._run_next)  # one turn per request: turns >= waiting requests
        except BaseException:
            self._forget(entry)
            raise
        outcome = asyncio.wrap_future(entry.future, loop=loop)
        try:
            return await asyncio.shield(outcome)
        except asyncio.CancelledError:
            if not self._forget(entry):  # it already runs: raise its stop flag
                entry.stop.set()
            outcome.add_done_callback(_retrieve)  # nobody awaits it any more
            raise

    def _forget(self, entry: _Entry) -> bool:
        """Take a request out of the queue before the engine sees it; False when it has started."""
        with self._cond:
            if entry not in self._pending:
                return False
            self._pending.remove(entry)
            if not self._pending and not self._running and self._idle_since is not None:
                self._idle_s += self._clock() - self._idle_since
                self._idle_since = None
        entry.future.cancel()
        return True

    # --- on the worker thread ---------------------------------------------------------------

    def _take(self) -> list[_Entry]:
        """The next request, with those of the same key that may share its call (waiting up to
        `batching.wait_s` from its arrival for more), marked running; [] when none waits."""
        batching = self._batching
        with self._cond:
            while True:
                if not self._pending:
                    return []
                head = self._pending[0]
                batch = [head]
                if head.key is not None and head.images < batching.max_images:
                    total = head.images
                    for entry in self._pending[1:]:
                        if entry.key == head.key and total + entry.images <= batching.max_images:
                            batch.append(entry)
                            total += entry.images
                    remaining = head.enqueued + batching.wait_s - self._clock()
                    if total < batching.max_images and remaining > 0:
                        self._cond.wait(remaining)
                        continue  # look again: more may have come, or some left
                now = self._clock()
                for entry in batch:
                    self._pending.remove(entry)
                    entry.future.set_running_or_notify_cancel()
                    if entry.ticket is not None:
                        self._running_tickets.add(entry.ticket)
                self._running = len(batch)
                if self._idle_since is not None:
                    self._idle_s += now - self._idle_since
                    self._idle_since = None
                self._busy_since = now
                return batch

    def _run_next(self) -> None:
        batch = self._take()
        if not batch:
            return  # its request left, or rode along in an earlier batch
        head = batch[0]

        def should_stop() -> bool:
            return all(entry.stop.is_set() for entry in batch)

        results: list[Any] = []
        failure: BaseException | None = None
        try:
            if head.run_batch is not None:
                results = head.run_batch([entry.item for entry in batch], should_stop)
                if len(results) != len(batch):
                    raise RuntimeError(f"a batch of {len(batch)} requests gave {len(results)} results")
            elif head.job is not None:
                results = [head.job(should_stop)]
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting requests
            failure = exc
        with self._cond:
            now = self._clock()
            if self._busy_since is not None:
                elapsed = now - self._busy_since
                self._busy_s += elapsed
                self._estimate_s = 0.8 * self._estimate_s + 0.2 * elapsed
                self._busy_since = None
            self._running = 0
            self._running_tickets.clear()
            if self._pending:
                self._idle_since = now
        for index, entry in enumerate(batch):
            with contextlib.suppress(InvalidStateError):  # cancelled by its waiter's loop going away
                if failure is not None:
                    entry.future.set_exception(failure)
                else:
                    entry.future.set_result(results[index])


def _retrieve(outcome: asyncio.Future[Any]) -> None:
    if not outcome.cancelled():
        outcome.exception()
