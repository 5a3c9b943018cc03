"""Running traces for `POST /v1/provenance/trace`: a pool of their own, a cap, a deadline, a stop flag.

Decisions written here:
- Traces run in a pool of `provenance.trace_workers` threads named `zguard-trace_N`, never in the
  default executor (`asyncio.to_thread`) that image encoding, bcrypt and audit reads share: hostile
  uploads can occupy these threads and no others. The threads start on first use.
- At most `trace_workers` traces are in flight; one more is refused at once (`ServerBusy`, with a
  Retry-After from recent trace times) rather than queued, so the pool never holds a backlog. A
  slot is freed when its thread has really finished, not when its request gave up, so work left
  behind by a timeout or a disconnect still counts. Per process on purpose: the cap protects this
  process's memory (each trace holds at most `trace_max_pixels` × `DECODE_BYTES_PER_PIXEL`) and
  CPU, it is not a quota replicas must agree on.
- Each trace has a deadline (`trace_timeout_s`): its request is answered `TraceTimeout` (504), and
  the work stops at the decoder's next step. The stop flag reads the deadline itself, so the work
  stops even when nobody awaits it any more; a cancelled request (the client left) raises it too.
- On Linux the trace threads run at nice +10 (a thread's own priority): when the CPUs are short, a
  trace waits for the event loop, the engine and image encoding, never the other way round.
- The route asks `check_capacity` before it reads the upload, so a busy server does not buffer
  bodies it would refuse; the slot itself is taken in `trace`, atomically.
- At exit the interpreter waits for the pool's running traces; each ends by its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from zguard.errors import ServerBusy, TraceTimeout
from zguard.provenance.trace import GenerationEvents, TraceResult, TraceStopped, trace

if TYPE_CHECKING:
    from zguard.config import ProvenanceSettings
    from zguard.provenance.watermark import Watermarker

THREAD_PREFIX = "zguard-trace"
TRACE_NICE = 10  # added to the trace threads' nice value (Linux): lower CPU priority than generation
_INITIAL_ESTIMATE_S = 2.0  # Retry-After before any trace has been timed


def _lower_priority() -> None:
    if sys.platform != "linux":  # elsewhere PRIO_PROCESS names a process, not a thread: leave it
        return
    thread = threading.get_native_id()
    with contextlib.suppress(OSError):  # not permitted (a sandbox): run at the normal priority
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + TRACE_NICE))


class TraceService:
    """Runs `zguard.provenance.trace.trace` under the provenance settings; see the module docstring."""

    def __init__(self, section: ProvenanceSettings) -> None:
        self._workers = section.trace_workers
        self._timeout_s = section.trace_timeout_s
        self._max_pixels = section.trace_max_pixels
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix=THREAD_PREFIX, initializer=_lower_priority)
        self._lock = threading.Lock()  # the pool's threads free their slots
        self._running = 0
        self._estimate_s = _INITIAL_ESTIMATE_S

    @property
    def running(self) -> int:
        """Traces whose thread has not finished yet (answered or not)."""
        return self._running

    def retry_after_s(self) -> int:
        return max(1, math.ceil(self._estimate_s))

    def check_capacity(self) -> None:
        """Raise ServerBusy when every slot is taken: before reading an upload nobody could trace."""
        if self._running >= self._workers:
            raise self._busy()

    def _busy(self) -> ServerBusy:
        return ServerBusy(
            "the server is busy tracing other images; retry after the time in the Retry-After header",
            retry_after=self.retry_after_s(),
            detail=f"{self._running} traces running, provenance.trace_workers={self._workers}",
        )

    async def trace(self, blob: bytes, watermarker: Watermarker, reader: GenerationEvents) -> TraceResult:
        """The trace of `blob`; raise ServerBusy (all slots taken), TraceTimeout, or what `trace`
        raises (NotAnImage, ImageTooLarge). Cancelling the caller stops the work."""
        with self._lock:
            if self._running >= self._workers:
                raise self._busy()
            self._running += 1
        stop = threading.Event()
        deadline = time.monotonic() + self._timeout_s
        started = time.perf_counter()

        def should_stop() -> bool:
            return stop.is_set() or time.monotonic() >= deadline

        def finished(_: Future[TraceResult]) -> None:
            with self._lock:
                self._running -= 1
                self._estimate_s = 0.8 * self._estimate_s + 0.2 * (time.perf_counter() - started)

        try:
            future = self._pool.submit(
                trace, blob, watermarker, reader, max_pixels=self._max_pixels, should_stop=should_stop
            )
        except BaseException:
            with self._lock:
                self._running -= 1
            raise
        future.add_done_callback(finished)
        outcome = asyncio.wrap_future(future)
        try:
            async with asyncio.timeout(self._timeout_s):
                return await asyncio.shield(outcome)
        except (TimeoutError, TraceStopped):
            stop.set()
            outcome.add_done_callback(_retrieve)
            raise TraceTimeout(f"the trace did not finish within {self._timeout_s:g} s") from None
        except asyncio.CancelledError:
            stop.set()
            outcome.add_done_callback(_retrieve)  # nobody awaits it any more
            raise


def _retrieve(outcome: asyncio.Future[Any]) -> None:
    if not outcome.cancelled():
        outcome.exception()
