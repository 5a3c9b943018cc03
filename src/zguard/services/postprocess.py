"""The pool that post-processes generated images (watermark, visible label, encode, signed label).

Decisions:
- Its own threads, sized by `generation.postprocess_workers` (default: the CPU count), not the
  event loop's default executor: a burst of other blocking work (audit reads, trace decodes)
  cannot delay an image's delivery, and encoding never runs on the engine's thread, so job N's
  post-processing overlaps job N+1's generation.
- Bounded by what feeds it: each admitted request submits one task once its images exist, so at
  most `max_queue` plus the running requests wait here; the pool adds no queue of its own.
- Daemon threads that start on demand and end after `IDLE_EXIT_S` without work, so a process
  (or a test) that builds many runtimes never piles up idle threads and exit never waits on one.
  A task still running when the process exits is lost with its response, which is not sent anyway.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")
IDLE_EXIT_S = 30.0
MAX_DEFAULT_WORKERS = 32


def default_workers() -> int:
    """One thread per CPU (at most `MAX_DEFAULT_WORKERS`): the work is CPU-bound and releases the GIL."""
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS))


class PostProcessPool:
    """At most `workers` threads running submitted callables, oldest first."""

    def __init__(self, workers: int, *, name: str = "zguard-postprocess", idle_exit_s: float = IDLE_EXIT_S) -> None:
        if workers < 1:
            raise ValueError("a post-processing pool needs at least one worker")
        self.workers = workers
        self._name = name
        self._idle_exit_s = idle_exit_s
        self._tasks: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0  # threads waiting for a task
        self._queued = 0  # tasks no thread has taken yet

    @property
    def threads(self) -> int:
        """Threads alive now (0 until the first task, and again after `idle_exit_s` without one)."""
        return self._threads

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            self._tasks.put((fn, future))
            self._queued += 1
            if self._queued > self._idle and self._threads < self.workers:
                self._threads += 1
                name = f"{self._name}-{self._threads}"
                threading.Thread(target=self._work, name=name, daemon=True).start()
        return future

    async def run(self, fn: Callable[[], T]) -> T:
        """`fn()` on a pool thread; the caller's cancellation does not stop a task that started."""
        return await asyncio.wrap_future(self.submit(fn))

    def _work(self) -> None:
        with self._lock:
            self._idle += 1
        while True:
            try:
                fn, future = self._tasks.get(timeout=self._idle_exit_s)
            except queue.Empty:
                with self._lock:
                    if not self._queued:
                        self._idle -= 1
                        self._threads -= 1
                        return
                continue
            with self._lock:
                self._idle -= 1
                self._queued -= 1
            if not future.set_running_or_notify_cancel():
                with self._lock:
                    self._idle += 1
                continue
            try:
                result, failure = fn(), None
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
                result, failure = None, exc
            with self._lock:  # idle before the caller hears: its next task finds this thread
                self._idle += 1
            if failure is None:
                future.set_result(result)
            else:
                future.set_exception(failure)
