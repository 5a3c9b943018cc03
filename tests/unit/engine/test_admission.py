from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable

import pytest

from tests.common.polling import wait_until_async
from zguard.engine.admission import AdmissionQueue, WorkerThread
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
