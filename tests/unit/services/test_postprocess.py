"""The post-processing pool: its own bounded threads, started on demand, ended when idle."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.common.polling import wait_until, wait_until_async
from zguard.services.postprocess import PostProcessPool, default_workers

pytestmark = pytest.mark.anyio


class Tasks:
    """Tasks that block until released, recording which thread ran them and how many overlapped."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.threads: set[str] = set()
        self.gate = threading.Event()

    def task(self, value: int) -> int:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.threads.add(threading.current_thread().name)
        try:
            self.gate.wait(10)
            return value * 2
        finally:
            with self.lock:
                self.active -= 1


async def test_tasks_run_in_parallel_up_to_the_worker_count_and_no_further() -> None:
    pool, tasks = PostProcessPool(3, name="test-pp"), Tasks()
    futures = [pool.submit(lambda v=v: tasks.task(v)) for v in range(7)]
    await wait_until_async(lambda: tasks.active == 3, timeout=5, interval=0.002, what="three tasks running")
    await asyncio.sleep(0.05)
    assert tasks.active == 3  # the other four wait for a free thread
    tasks.gate.set()
    assert [await asyncio.wrap_future(f) for f in futures] == [v * 2 for v in range(7)]
    assert tasks.max_active == 3
    assert pool.threads <= 3
    assert all(name.startswith("test-pp-") for name in tasks.threads)
    assert threading.current_thread().name not in tasks.threads


async def test_run_awaits_the_result_and_hands_back_the_exception() -> None:
    pool = PostProcessPool(1)
    assert await pool.run(lambda: 41 + 1) == 42

    def boom() -> None:
        raise ValueError("encoder failure")

    with pytest.raises(ValueError, match="encoder failure"):
        await pool.run(boom)
    assert await pool.run(lambda: "still serving") == "still serving"


async def test_a_thread_is_reused_rather_than_a_new_one_started_for_each_task() -> None:
    pool = PostProcessPool(4)
    names = [await pool.run(lambda: threading.current_thread().name) for _ in range(5)]
    assert len(set(names)) == 1  # one at a time: the idle thread takes each
    assert pool.threads == 1


def test_idle_threads_end_and_the_pool_starts_again_on_demand() -> None:
    pool = PostProcessPool(2, idle_exit_s=0.05)
    assert pool.threads == 0  # nothing started before the first task
    assert pool.submit(lambda: 1).result(timeout=5) == 1
    wait_until(lambda: pool.threads == 0, timeout=5, interval=0.01, what="the idle thread to end")
    assert pool.submit(lambda: 2).result(timeout=5) == 2


def test_worker_count_is_checked_and_defaults_to_the_cpus() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        PostProcessPool(0)
    assert 1 <= default_workers() <= 32
