from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.common.polling import wait_until_async
from zguard.engine.admission import TICKET, AdmissionQueue, Batching, WorkerThread
from zguard.errors import ServerBusy

pytestmark = pytest.mark.anyio


class Jobs:
    """Jobs that block until released, recording order and overlap."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.active = 0
        self.max_active = 0
        self.stopped: list[str] = []
        self.gates: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    def job(self, name: str) -> Callable[[Callable[[], bool]], str]:
        gate = self.gates.setdefault(name, threading.Event())

        def run(should_stop: Callable[[], bool]) -> str:
            with self.lock:
                self.ran.append(name)
                self.active += 1
                self.max_active = max(self.max_active, self.active)
            try:
                while not gate.wait(0.002):
                    if should_stop():
                        self.stopped.append(name)
                        return "stopped"
                return name
            finally:
                with self.lock:
                    self.active -= 1

        return run

    def release(self, name: str) -> None:
        self.gates.setdefault(name, threading.Event()).set()


@pytest.fixture
async def worker() -> AsyncIterator[WorkerThread]:
    w = WorkerThread(name="test-worker")
    yield w
    w.stop(timeout=5)


async def until(predicate: Callable[[], bool]) -> None:
    await wait_until_async(
        predicate, timeout=4.0, interval=0.002, what="the admission queue to reach the asserted state"
    )


async def test_one_at_a_time_in_arrival_order(worker: WorkerThread) -> None:
    queue, jobs = AdmissionQueue(8, worker), Jobs()
    tasks = []
    for name in "abcd":
        tasks.append(asyncio.create_task(queue.run(jobs.job(name))))
        await asyncio.sleep(0.01)
    for name in "abcd":
        jobs.release(name)
    assert await asyncio.gather(*tasks) == list("abcd")
    assert jobs.ran == list("abcd")
    assert jobs.max_active == 1


async def test_full_queue_refuses_with_retry_after(worker: WorkerThread) -> None:
    queue, jobs = AdmissionQueue(1, worker), Jobs()
    running = asyncio.create_task(queue.run(jobs.job("a")))
    await until(lambda: jobs.ran == ["a"])
    waiting = asyncio.create_task(queue.run(jobs.job("b")))
    await until(lambda: queue.waiting == 1)
    with pytest.raises(ServerBusy) as info:
        await queue.run(jobs.job("c"))
    assert info.value.retry_after >= 1
    assert info.value.code == "server_busy"
    jobs.release("a")
    jobs.release("b")
    assert await asyncio.gather(running, waiting) == ["a", "b"]
    assert "c" not in jobs.ran


async def test_max_queue_zero_runs_when_idle_refuses_when_busy(worker: WorkerThread) -> None:
    queue, jobs = AdmissionQueue(0, worker), Jobs()
    jobs.release("a")
    assert await queue.run(jobs.job("a")) == "a"
    busy = asyncio.create_task(queue.run(jobs.job("b")))
    await until(lambda: "b" in jobs.ran)
    with pytest.raises(ServerBusy):
        await queue.run(jobs.job("c"))
    jobs.release("b")
    await busy


async def test_cancelled_waiter_frees_slot_and_never_runs(worker: WorkerThread) -> None:
    queue, jobs = AdmissionQueue(1, worker), Jobs()
    running = asyncio.create_task(queue.run(jobs.job("a")))
    await until(lambda: jobs.ran == ["a"])
    waiter = asyncio.create_task(queue.run(jobs.job("b")))
    await until(lambda: queue.waiting == 1)
    waiter.cancel()
    await until(lambda: queue.waiting == 0)
    third = asyncio.create_task(queue.run(jobs.job("c")))  # the freed slot is usable
    await until(lambda: queue.waiting == 1)
    jobs.release("a")
    jobs.release("c")
    assert await running == "a"
    assert await third == "c"
    assert jobs.ran == ["a", "c"]


async def test_cancelled_running_job_is_told_to_stop_and_holds_the_worker_until_it_does(worker: WorkerThread) -> None:
    queue, jobs = AdmissionQueue(4, worker), Jobs()
    first = asyncio.create_task(queue.run(jobs.job("a")))
    await until(lambda: jobs.ran == ["a"])
    jobs.release("b")
    second = asyncio.create_task(queue.run(jobs.job("b")))
    await until(lambda: queue.waiting == 1)
    first.cancel()
    assert await second == "b"
    assert jobs.stopped == ["a"]
    assert jobs.max_active == 1


async def test_failing_job_raises_and_releases(worker: WorkerThread) -> None:
    queue = AdmissionQueue(1, worker)

    def boom(_: Callable[[], bool]) -> None:
        raise RuntimeError("engine failure")

    with pytest.raises(RuntimeError, match="engine failure"):
        await queue.run(boom)
    assert await queue.run(lambda _: 42) == 42
    assert queue.running == 0


def test_worker_stop_returns_false_while_a_job_is_stuck() -> None:
    w = WorkerThread(name="stuck")
    gate = threading.Event()
    w.submit(gate.wait)
    assert w.stop(timeout=0.05) is False
    gate.set()
    assert w.stop(timeout=5) is True


# --- the worker takes the next job itself; batching ------------------------------------------


class Batches:
    """A batch runner that records each call's items and blocks until released."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.stopped: list[list[str]] = []
        self.gate = threading.Event()
        self.started = threading.Event()

    def run(self, items: list[str], should_stop: Callable[[], bool]) -> list[str]:
        self.calls.append(list(items))
        self.started.set()
        while not self.gate.wait(0.002):
            if should_stop():
                self.stopped.append(list(items))
                raise RuntimeError("stopped")
        return [f"image of {item}" for item in items]


def _batched(queue: AdmissionQueue, batches: Batches, item: str, *, key: str = "512x512", images: int = 1) -> Any:
    return asyncio.create_task(queue.run_batched(item, key=key, images=images, run_batch=batches.run))


async def hold_worker(worker: WorkerThread) -> threading.Event:
    """Keep the worker thread busy until the returned event is set (what a running job does)."""
    gate, busy = threading.Event(), threading.Event()

    def block() -> None:
        busy.set()
        gate.wait(10)

    worker.submit(block)
    await until(busy.is_set)
    return gate


async def test_requests_of_one_shape_waiting_together_share_one_call_up_to_the_cap(worker: WorkerThread) -> None:
    queue, batches = AdmissionQueue(8, worker, batching=Batching(max_images=3)), Batches()
    gate = await hold_worker(worker)
    tasks = [_batched(queue, batches, "a"), _batched(queue, batches, "b", key="1024x1024")]
    tasks += [_batched(queue, batches, name) for name in "cde"]
    await until(lambda: queue.waiting == 5)
    batches.gate.set()
    gate.set()
    assert await asyncio.gather(*tasks) == [f"image of {name}" for name in "abcde"]
    # a, c and d share the first call (3 images, the cap); b (another shape) keeps its turn before e.
    assert batches.calls == [["a", "c", "d"], ["b"], ["e"]]


async def test_images_count_against_the_cap_and_a_request_over_it_runs_alone(worker: WorkerThread) -> None:
    queue, batches = AdmissionQueue(8, worker, batching=Batching(max_images=4)), Batches()
    gate = await hold_worker(worker)
    tasks = [
        _batched(queue, batches, "big", images=5),
        _batched(queue, batches, "two", images=2),
        _batched(queue, batches, "three", images=3),
        _batched(queue, batches, "one", images=1),
    ]
    await until(lambda: queue.waiting == 4)
    batches.gate.set()
    gate.set()
    await asyncio.gather(*tasks)
    assert batches.calls == [["big"], ["two", "one"], ["three"]]


async def test_batching_off_runs_each_request_alone(worker: WorkerThread) -> None:
    queue, batches = AdmissionQueue(8, worker), Batches()  # the default: max_images=1
    gate = await hold_worker(worker)
    tasks = [_batched(queue, batches, name) for name in "abc"]
    await until(lambda: queue.waiting == 3)
    batches.gate.set()
    gate.set()
    await asyncio.gather(*tasks)
    assert batches.calls == [["a"], ["b"], ["c"]]


async def test_a_batch_waits_for_late_arrivals_at_most_batch_wait(worker: WorkerThread) -> None:
    queue, batches = AdmissionQueue(8, worker, batching=Batching(max_images=4, wait_s=5.0)), Batches()
    batches.gate.set()
    first = _batched(queue, batches, "a")
    await asyncio.sleep(0.05)  # the engine is idle and holds the call open for more
    assert batches.calls == []
    others = [_batched(queue, batches, name) for name in "bcd"]
    assert await asyncio.gather(first, *others) == [f"image of {name}" for name in "abcd"]
    assert batches.calls == [["a", "b", "c", "d"]]  # the cap reached: it ran without waiting longer

    quick = AdmissionQueue(8, worker, batching=Batching(max_images=4, wait_s=0.02))
    assert await quick.run_batched("alone", key="k", images=1, run_batch=batches.run) == "image of alone"
    assert batches.calls[-1] == ["alone"]  # nobody came within the wait: it ran by itself


async def test_a_request_leaving_a_waiting_batch_never_reaches_the_engine(worker: WorkerThread) -> None:
    queue, batches = AdmissionQueue(8, worker, batching=Batching(max_images=4)), Batches()
    gate = await hold_worker(worker)
    tasks = {name: _batched(queue, batches, name) for name in "abc"}
    await until(lambda: queue.waiting == 3)
    tasks["b"].cancel()
    await until(lambda: queue.waiting == 2)
    batches.gate.set()
    gate.set()
    assert await tasks["a"] == "image of a"
    assert await tasks["c"] == "image of c"
    with pytest.raises(asyncio.CancelledError):
        await tasks["b"]
    assert batches.calls == [["a", "c"]]


async def test_a_request_leaving_a_running_batch_does_not_stop_the_others(worker: WorkerThread) -> None:
    queue, batches = AdmissionQueue(8, worker, batching=Batching(max_images=4)), Batches()
    gate = await hold_worker(worker)
    tasks = {name: _batched(queue, batches, name) for name in "abc"}
    await until(lambda: queue.waiting == 3)
    gate.set()
    await until(batches.started.is_set)
    assert queue.running == 3
    assert queue.position("anything") is None
    tasks["b"].cancel()
    await asyncio.sleep(0.05)
    assert batches.stopped == []  # two of three still want their images
    batches.gate.set()
    assert await tasks["a"] == "image of a"
    assert await tasks["c"] == "image of c"
    with pytest.raises(asyncio.CancelledError):
        await tasks["b"]
    assert queue.running == 0


async def test_a_running_batch_stops_once_every_request_left(worker: WorkerThread) -> None:
    queue, batches = AdmissionQueue(8, worker, batching=Batching(max_images=4)), Batches()
    gate = await hold_worker(worker)
    tasks = [_batched(queue, batches, name) for name in "ab"]
    await until(lambda: queue.waiting == 2)
    gate.set()
    await until(batches.started.is_set)
    for task in tasks:
        task.cancel()
    await until(lambda: batches.stopped == [["a", "b"]])
    await until(lambda: queue.running == 0)
    assert await queue.run(lambda _: "next") == "next"  # the engine is free again


async def test_positions_count_every_request_of_a_running_batch(worker: WorkerThread) -> None:
    queue, batches = AdmissionQueue(8, worker, batching=Batching(max_images=2)), Batches()
    gate = await hold_worker(worker)
    tasks = []
    for name in "abc":
        token = TICKET.set(name)
        tasks.append(_batched(queue, batches, name))
        TICKET.reset(token)
    await until(lambda: queue.waiting == 3)
    assert queue.position("c") == ("waiting", 2)
    gate.set()
    await until(batches.started.is_set)
    assert queue.position("a") == ("running", 0)
    assert queue.position("b") == ("running", 0)
    assert queue.position("c") == ("waiting", 2)  # behind both requests of the running call
    batches.gate.set()
    await asyncio.gather(*tasks)
    assert queue.position("c") is None


async def test_a_failing_batch_fails_its_requests_and_frees_the_engine(worker: WorkerThread) -> None:
    queue = AdmissionQueue(8, worker, batching=Batching(max_images=2))

    def wrong_count(items: list[str], _: Callable[[], bool]) -> list[str]:
        return items[:1]

    gate = await hold_worker(worker)
    tasks = [asyncio.create_task(queue.run_batched(n, key="k", images=1, run_batch=wrong_count)) for n in "ab"]
    await until(lambda: queue.waiting == 2)
    gate.set()
    for task in tasks:
        with pytest.raises(RuntimeError, match="gave 1 results"):
            await task
    assert await queue.run(lambda _: 7) == 7


async def test_the_next_job_starts_on_the_worker_without_the_event_loop(worker: WorkerThread) -> None:
    """Job b starts while the loop is blocked: the worker thread took it from the queue itself."""
    queue, jobs = AdmissionQueue(8, worker), Jobs()
    first = asyncio.create_task(queue.run(jobs.job("a")))
    second = asyncio.create_task(queue.run(jobs.job("b")))
    await until(lambda: jobs.ran == ["a"] and queue.waiting == 1)
    jobs.release("a")
    deadline = time.monotonic() + 4
    while jobs.ran != ["a", "b"] and time.monotonic() < deadline:
        time.sleep(0.002)  # noqa: ASYNC251 - blocking the loop on purpose
    assert jobs.ran == ["a", "b"]
    jobs.release("b")
    assert await asyncio.gather(first, second) == ["a", "b"]


async def test_idle_time_counts_only_while_a_request_waits_and_the_engine_runs_nothing(worker: WorkerThread) -> None:
    now = [100.0]
    queue, jobs = AdmissionQueue(8, worker, clock=lambda: now[0]), Jobs()
    assert (queue.idle_while_pending_s, queue.busy_s) == (0.0, 0.0)
    gate = await hold_worker(worker)  # not an admitted job: the queue does not count it as busy
    task = asyncio.create_task(queue.run(jobs.job("a")))
    await until(lambda: queue.waiting == 1)
    now[0] += 3.0  # a waits 3 s for the engine
    assert queue.idle_while_pending_s == 3.0
    gate.set()
    await until(lambda: jobs.ran == ["a"])
    now[0] += 5.0  # a runs 5 s
    assert queue.idle_while_pending_s == 3.0
    assert queue.busy_s == 5.0
    jobs.release("a")
    await task
    now[0] += 60.0  # nobody waits: not idle time
    assert queue.idle_while_pending_s == 3.0
    assert queue.busy_s == 5.0
