"""The trace pool: its own threads at a lower priority, a cap, a deadline, a stop on cancel, and a
slot freed only when the work has really ended (issue 14)."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import threading
from typing import Any

import pytest
from PIL import Image

from tests.common.hostile_images import EmptyEvents, GatedWatermarker
from tests.common.polling import wait_until_async
from zguard.config import ProvenanceSettings
from zguard.errors import ServerBusy, TraceTimeout
from zguard.provenance.trace import NotAnImage
from zguard.services.trace import THREAD_PREFIX, TRACE_NICE, TraceService

pytestmark = pytest.mark.anyio


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 96), (50, 60, 70)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


def service(**settings: Any) -> TraceService:
    return TraceService(ProvenanceSettings.model_validate(settings))


async def until(predicate: Any, what: str) -> None:
    await wait_until_async(predicate, timeout=10, interval=0.002, what=what)


async def test_traces_run_in_the_pools_own_threads_at_a_lower_priority() -> None:
    traces, wm = service(trace_workers=2), GatedWatermarker()
    wm.release()
    result = await traces.trace(PNG, wm, EmptyEvents())
    assert result.mark is None
    assert result.image_size == (96, 96)
    [seen] = wm.threads
    assert seen.name.startswith(f"{THREAD_PREFIX}_")
    assert seen.name != threading.current_thread().name
    if sys.platform == "linux":  # nice is per thread there: this one keeps its own
        own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert seen.nice == min(19, own + TRACE_NICE)


async def test_one_more_than_the_workers_is_refused_at_once() -> None:
    traces, wm = service(trace_workers=2), GatedWatermarker()
    held = [asyncio.create_task(traces.trace(PNG, wm, EmptyEvents())) for _ in range(2)]
    await until(lambda: len(wm.threads) == 2, "two traces running")
    with pytest.raises(ServerBusy):
        traces.check_capacity()  # before the route reads an upload
    with pytest.raises(ServerBusy) as busy:
        await traces.trace(PNG, wm, EmptyEvents())
    assert busy.value.code == "server_busy"
    assert busy.value.retry_after >= 1
    assert busy.value.detail is not None
    assert "provenance.trace_workers=2" in busy.value.detail
    wm.release()
    assert all(r.mark is None for r in await asyncio.gather(*held))
    await until(lambda: traces.running == 0, "the slots to be freed")
    traces.check_capacity()
    await traces.trace(PNG, wm, EmptyEvents())


async def test_the_deadline_answers_and_stops_the_work() -> None:
    traces, wm = service(trace_timeout_s=0.2), GatedWatermarker()
    with pytest.raises(TraceTimeout) as late:
        await traces.trace(PNG, wm, EmptyEvents())
    assert late.value.status == 504
    assert "0.2 s" in late.value.message
    await until(lambda: wm.stopped != [], "the decoder to see the stop flag")
    await until(lambda: traces.running == 0, "the slot to be freed")
    assert wm.finished == []


async def test_a_cancelled_caller_stops_the_work() -> None:
    traces, wm = service(trace_timeout_s=60), GatedWatermarker()
    task = asyncio.create_task(traces.trace(PNG, wm, EmptyEvents()))
    await until(wm.running.is_set, "the trace to start")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: wm.stopped != [], "the decoder to see the stop flag")
    await until(lambda: traces.running == 0, "the slot to be freed")


async def test_work_that_has_not_stopped_yet_keeps_its_slot() -> None:
    """A request that gave up does not free the slot: its thread still holds the memory."""
    traces, wm = service(trace_workers=1, trace_timeout_s=0.2), GatedWatermarker(stubborn=True)
    with pytest.raises(TraceTimeout):
        await traces.trace(PNG, wm, EmptyEvents())
    assert traces.running == 1
    with pytest.raises(ServerBusy):
        await traces.trace(PNG, wm, EmptyEvents())
    wm.release()
    await until(lambda: traces.running == 0, "the abandoned trace to end")
    await until(lambda: len(wm.finished) == 1, "the abandoned trace to finish")


async def test_a_refused_image_frees_its_slot() -> None:
    traces, wm = service(trace_workers=1), GatedWatermarker()
    wm.release()
    with pytest.raises(NotAnImage):
        await traces.trace(b"\x89PNG\r\n\x1a\nnot really", wm, EmptyEvents())
    await until(lambda: traces.running == 0, "the slot to be freed")
    assert (await traces.trace(PNG, wm, EmptyEvents())).image_size == (96, 96)
