"""Cancellation in the worker's queue: the token's rules, expiry of waiting jobs, and the
executor dropping waiting jobs and signalling running ones (clocks injected where time matters).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

import pytest
from loraplex.worker.queue import (
    DEADLINE_GRACE_S,
    Cancelled,
    CancelReason,
    CancelToken,
    DeviceExecutor,
    GroupingQueue,
    Job,
)

WAIT_S = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def connected() -> bool:
    return False


def test_token_notices_its_deadline_and_the_first_reason_wins() -> None:
    clock = Clock()
    token = CancelToken.with_budget(2.0, clock)
    assert token.check() is None
    clock.now += 2.0
    assert token.check() is CancelReason.DEADLINE
    token.cancel(CancelReason.CLIENT_GONE)
    assert token.check() is CancelReason.DEADLINE
    assert CancelToken.with_budget(None, clock).deadline is None


def test_a_disconnect_at_the_deadline_counts_as_the_deadline() -> None:
    """The router closes the connection when its deadline passes, a transit before ours."""
    clock = Clock()
    early, late = CancelToken.with_budget(10.0, clock), CancelToken.with_budget(10.0, clock)
    early.client_gone()
    clock.now += 10.0 - DEADLINE_GRACE_S
    late.client_gone()
    assert early.check() is CancelReason.CLIENT_GONE
    assert late.check() is CancelReason.DEADLINE


def test_expire_removes_only_jobs_past_their_deadline() -> None:
    queue = GroupingQueue(capacity=10, max_overtake=0)
    jobs = [Job("a", 0, cancel=CancelToken(5.0)), Job("a", 1), Job("b", 2), Job("a", 3)]
    jobs[2].cancel = CancelToken(9.0)
    for job in jobs:
        queue.push(job)
    assert queue.expire(4.9) == []
    assert queue.expire(5.0) == [jobs[0]]
    assert [queue.pop(None).payload for _ in range(3)] == [1, 2, 3]
    assert queue.dropped == 1


class Device:
    """A run function standing in for the engine: holds the device until released, and (like
    the engine's step callback) stops with Cancelled once its job's token is set."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.ran: list[int] = []

    def run(self, number: int, cancel: CancelToken) -> int:
        self.ran.append(number)
        self.entered.set()
        while not self.release.wait(0.005):  # one "denoising step"
            if (reason := cancel.check()) is not None:
                raise Cancelled(reason, started=True, detail="at a step")
        return number


@contextlib.asynccontextmanager
async def serving(device: Device, clock: Clock | None = None) -> AsyncIterator[DeviceExecutor]:
    """An executor over ``device``; on the way out the device is released and the executor
    stopped, whatever the test left running."""
    kwargs = {} if clock is None else {"clock": clock}
    executor = DeviceExecutor(device.run, capacity=4, max_overtake=0, retry_after_s=1, **kwargs)
    executor.start()
    try:
        yield executor
    finally:
        device.release.set()
        await executor.stop()


async def test_a_running_job_is_stopped_when_its_client_leaves() -> None:
    device = Device()
    gone = asyncio.Event()

    async def is_disconnected() -> bool:
        return gone.is_set()

    async with serving(device) as executor:
        running = asyncio.create_task(executor.submit(None, 1, is_disconnected))
        await asyncio.to_thread(device.entered.wait, WAIT_S)
        next_job = asyncio.create_task(executor.submit(None, 2, connected))
        gone.set()
        with pytest.raises(Cancelled) as stopped:
            await asyncio.wait_for(running, WAIT_S)
        assert stopped.value.reason is CancelReason.CLIENT_GONE and stopped.value.started
        device.release.set()
        assert await asyncio.wait_for(next_job, WAIT_S) == 2
    assert device.ran == [1, 2]


async def test_a_waiting_job_past_its_deadline_is_dropped_unstarted() -> None:
    clock = Clock()
    device = Device()
    async with serving(device, clock) as executor:
        running = asyncio.create_task(executor.submit(None, 1, connected))
        await asyncio.to_thread(device.entered.wait, WAIT_S)
        token = CancelToken.with_budget(1.0, clock)
        waiting = asyncio.create_task(executor.submit(None, 2, connected, cancel=token))
        while executor.depth != 1:
            await asyncio.sleep(0.01)
        clock.now += 1.0
        with pytest.raises(Cancelled) as dropped:
            await asyncio.wait_for(waiting, WAIT_S)
        assert dropped.value.reason is CancelReason.DEADLINE and not dropped.value.started
        assert executor.depth == 0 and executor.queue.dropped == 1
        spent = CancelToken.with_budget(0.0, clock)
        with pytest.raises(Cancelled, match="before it was queued"):
            await executor.submit(None, 3, connected, cancel=spent)
        device.release.set()
        assert await running == 1
    assert device.ran == [1]


async def test_the_loop_drops_expired_jobs_before_it_picks_one() -> None:
    """No poll needed: a job whose deadline passed while the device was busy never starts."""
    clock = Clock()
    device = Device()
    async with serving(device, clock) as executor:
        running = asyncio.create_task(executor.submit(None, 1, connected))
        await asyncio.to_thread(device.entered.wait, WAIT_S)
        # A deadline only the queue knows of (the waiter's own token has none).
        job = Job(None, 2, future=asyncio.Future(), cancel=CancelToken(clock.now + 1, clock))
        executor.queue.push(job)
        clock.now += 1.0
        device.release.set()
        assert await running == 1
        with pytest.raises(Cancelled, match="queue"):
            await asyncio.wait_for(job.future, WAIT_S)
    assert device.ran == [1]


async def test_a_cancelled_handler_stops_its_running_job() -> None:
    device = Device()
    async with serving(device) as executor:
        token = CancelToken()
        running = asyncio.create_task(executor.submit(None, 1, connected, cancel=token))
        await asyncio.to_thread(device.entered.wait, WAIT_S)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert token.check() is CancelReason.CLIENT_GONE
        while executor.in_flight:  # the device thread leaves at its next check
            await asyncio.sleep(0.01)
