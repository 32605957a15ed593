"""DeviceExecutor: one job at a time on its own thread, errors reach the waiting request,
QueueFull carries Retry-After, and stopping answers the jobs still waiting."""

from __future__ import annotations

import asyncio
import threading

import pytest
from loraplex.worker.queue import DeviceExecutor

from loraplex.shared.errors import NotServable, QueueFull, WarmingUp


async def connected() -> bool:
    return False


async def test_jobs_run_one_at_a_time_and_errors_reach_their_request() -> None:
    running, peak = 0, 0
    lock = threading.Lock()

    def run(payload: int, cancel: object) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            if payload < 0:
                raise NotServable("negative payload")
            return payload * 2
        finally:
            with lock:
                running -= 1

    executor = DeviceExecutor(run, capacity=10, max_overtake=0, retry_after_s=3)
    executor.start()
    try:
        results = await asyncio.gather(
            *(executor.submit(None, n, connected) for n in (1, 2, -1, 3)), return_exceptions=True
        )
    finally:
        await executor.stop()
    assert results[:2] == [2, 4] and results[3] == 6
    assert isinstance(results[2], NotServable)
    assert peak == 1 and executor.completed == 4


async def test_full_queue_and_stop() -> None:
    gate = threading.Event()
    entered = threading.Event()

    def run(payload: int, cancel: object) -> int:
        entered.set()
        gate.wait(10)
        return payload

    executor = DeviceExecutor(run, capacity=1, max_overtake=0, retry_after_s=3)
    executor.start()
    first = asyncio.create_task(executor.submit(None, 1, connected))
    await asyncio.to_thread(entered.wait, 10)
    waiting = asyncio.create_task(executor.submit(None, 2, connected))
    while executor.depth != 1:
        await asyncio.sleep(0.01)
    with pytest.raises(QueueFull) as full:
        await executor.submit(None, 3, connected)
    assert full.value.retry_after_s == 3
    gate.set()
    assert await first == 1
    await waiting
    entered.clear()
    gate.clear()
    blocked = asyncio.create_task(executor.submit(None, 4, connected))
    await asyncio.to_thread(entered.wait, 10)
    never_started = asyncio.create_task(executor.submit(None, 5, connected))
    while executor.depth != 1:
        await asyncio.sleep(0.01)
    stopping = asyncio.create_task(executor.stop())
    gate.set()
    await stopping
    assert await blocked == 4  # the job in progress finishes and answers
    with pytest.raises(WarmingUp, match="shutting down"):
        await never_started


async def test_running_seconds_count_from_the_start_of_the_run_and_reset_when_idle() -> None:
    """What /v1/state reports as ``running_seconds`` (an injected clock, so no timing)."""
    now = [100.0]
    gate, entered = threading.Event(), threading.Event()

    def run(payload: int, cancel: object) -> int:
        entered.set()
        gate.wait(10)
        return payload

    executor = DeviceExecutor(
        run, capacity=2, max_overtake=0, retry_after_s=1, clock=lambda: now[0]
    )
    executor.start()
    try:
        assert executor.running_seconds == 0.0
        job = asyncio.create_task(executor.submit(None, 1, connected))
        await asyncio.wait_for(asyncio.to_thread(entered.wait, 10), 15)
        now[0] += 2.5
        assert executor.running_seconds == 2.5
        gate.set()
        assert await job == 1
        assert executor.running_seconds == 0.0
    finally:
        gate.set()
        await executor.stop()
