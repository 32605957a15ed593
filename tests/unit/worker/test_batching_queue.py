"""Batching's pure parts: the batch key, GroupingQueue.pop_batch (and its starvation bound over
many random queues), and DeviceExecutor settling each job of a batch on its own."""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
from collections.abc import Sequence

import pytest
from loraplex.worker.batching import CallDefaults, batch_key
from loraplex.worker.queue import (
    Cancelled,
    CancelReason,
    CancelToken,
    DeviceExecutor,
    GroupingQueue,
    Job,
)

from loraplex.shared.contract import AdapterRef, GenerateRequest, ImageFormat
from loraplex.shared.errors import Forbidden

DEFAULTS = CallDefaults(width=64, height=64, steps=2, guidance=5.0)
WAIT_S = 10.0


async def depth_reaches(executor: DeviceExecutor, depth: int) -> None:
    """Return once ``depth`` jobs wait in ``executor``'s queue (callers bound it with WAIT_S)."""
    while executor.depth != depth:
        await asyncio.sleep(0.01)


def key(**fields: object):
    return batch_key(GenerateRequest(prompt="p", **fields), DEFAULTS)


def test_batch_key_fills_defaults_and_ignores_what_each_request_may_differ_in() -> None:
    assert key() == key(width=64, height=64, num_inference_steps=2, guidance_scale=5.0)
    assert key(seed=1, output_format=ImageFormat.JPEG) == key(seed=2)
    assert key(negative_prompt="blurry") == key(negative_prompt="")
    assert batch_key(GenerateRequest(prompt="a cat"), DEFAULTS) == key()


@pytest.mark.parametrize(
    "fields",
    [
        {"width": 128},
        {"height": 72},
        {"num_inference_steps": 3},
        {"guidance_scale": 1.0},
        {"negative_prompt": ""},  # SDXL: None and "" are different calls
        {"adapter": AdapterRef(repo_id="u/style")},
    ],
)
def test_batch_key_differs_in_every_call_shaping_parameter(fields: dict) -> None:
    assert key(**fields) != key()


def pushed(max_overtake: int, jobs: Sequence[tuple[str, str | None]]) -> GroupingQueue:
    queue = GroupingQueue(capacity=100, max_overtake=max_overtake)
    for i, (group, batch) in enumerate(jobs):
        queue.push(Job(group, i, batch=batch))
    return queue


def payloads(batch: list[Job]) -> list[int]:
    return [job.payload for job in batch]


def test_pop_batch_takes_same_group_same_key_jobs_up_to_max_batch() -> None:
    queue = pushed(4, [("a", "k"), ("a", "k2"), ("b", "k"), ("a", "k"), ("a", "k"), ("a", "k")])
    assert payloads(queue.pop_batch("a", 3)) == [0, 3, 4]
    assert queue.waiting("a") == 2 and queue.waiting("b") == 1
    assert payloads(queue.pop_batch("a", 3)) == [1]  # its key has no partner left
    assert payloads(queue.pop_batch("a", 1)) == [5]  # max_batch 1 is pop()


def test_a_job_without_batch_key_runs_alone_and_strict_fifo_batches_only_the_head() -> None:
    queue = pushed(0, [("a", None), ("a", None), ("a", "k"), ("a", "k"), ("b", "k"), ("a", "k")])
    assert payloads(queue.pop_batch(None, 8)) == [0]
    assert payloads(queue.pop_batch(None, 8)) == [1]
    assert payloads(queue.pop_batch(None, 8)) == [2, 3]  # job 5 would overtake job 4
    assert payloads(queue.pop_batch(None, 8)) == [4]


def test_a_job_at_the_bound_stops_the_batch() -> None:
    queue = pushed(1, [("a", "k"), ("b", "k"), ("a", "k"), ("a", "k")])
    # 2 overtakes job 1 once (its bound); 3 would be a second overtake: it waits.
    assert payloads(queue.pop_batch("a", 4)) == [0, 2]
    assert payloads(queue.pop_batch("a", 4)) == [1]
    assert payloads(queue.pop_batch("b", 4)) == [3]


@pytest.mark.parametrize("max_overtake", [0, 1, 2, 4])
@pytest.mark.parametrize("max_batch", [2, 4, 8])
def test_no_job_is_overtaken_by_more_than_the_bound_with_batches(
    max_overtake: int, max_batch: int
) -> None:
    """Random arrivals (3 groups, 2 keys) interleaved with batch pops, over many queues: a
    job is overtaken by every later job that ran in an EARLIER batch (batch mates run together).
    """
    worst, biggest = 0, 0
    for trial in range(8):
        rng = random.Random(trial * 100 + max_overtake * 10 + max_batch)
        queue = GroupingQueue(capacity=1000, max_overtake=max_overtake)
        arrival, batch_of, last = 0, {}, None
        for number in itertools.count():
            if number < 150:
                for _ in range(rng.randint(0, 4)):
                    queue.push(Job(rng.choice("aabc"), arrival, batch=rng.choice("kkx")))
                    arrival += 1
            elif not len(queue):
                break
            batch = queue.pop_batch(last, max_batch)
            batch_of.update({job.payload: number for job in batch})
            last = batch[0].group if batch else last
            biggest = max(biggest, len(batch))
        assert sorted(batch_of) == list(range(arrival))
        for seq in range(arrival):
            later = range(seq + 1, arrival)
            worst = max(worst, sum(1 for n in later if batch_of[n] < batch_of[seq]))
    assert worst <= max_overtake
    # Batches do form (full ones once overtaking is allowed; FIFO needs consecutive runs).
    assert biggest == max_batch if max_overtake else biggest > 1
    if max_overtake:
        assert worst == max_overtake  # and grouping really overtakes


async def connected() -> bool:
    return False


class BatchDevice:
    """A batch run function: records the batches, holds the device until the test grants one
    run (``release``), answers payload × 10, or Forbidden for a negative payload (alone)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self._entered = threading.Semaphore(0)
        self._permits = threading.Semaphore(0)

    def run(self, payloads: Sequence[int], cancels: Sequence[CancelToken], upcoming: int):
        self.batches.append(list(payloads))
        self._entered.release()
        assert self._permits.acquire(timeout=WAIT_S)
        return [Forbidden("refused") if p < 0 else p * 10 for p in payloads]

    async def entered(self) -> None:
        """Wait until the next run holds the device."""
        assert await asyncio.to_thread(self._entered.acquire, timeout=WAIT_S)

    def release(self, runs: int = 1) -> None:
        self._permits.release(runs)


def executor_for(device: BatchDevice, max_batch: int = 4) -> DeviceExecutor:
    return DeviceExecutor(
        run_batch=device.run,
        max_batch=max_batch,
        batch_key=lambda payload: "same",
        capacity=10,
        max_overtake=4,
        retry_after_s=1,
    )


async def test_each_job_of_a_batch_gets_its_own_answer() -> None:
    device = BatchDevice()
    executor = executor_for(device)
    executor.start()
    try:
        first = asyncio.create_task(executor.submit("a", 1, connected))
        await device.entered()
        rest = [asyncio.create_task(executor.submit("a", p, connected)) for p in (2, -3, 4)]
        await asyncio.wait_for(depth_reaches(executor, 3), WAIT_S)
        device.release(2)
        results = await asyncio.gather(first, *rest, return_exceptions=True)
    finally:
        device.release(10)
        await executor.stop()
    assert device.batches == [[1], [2, -3, 4]]
    assert results[0:2] == [10, 20] and results[3] == 40
    assert isinstance(results[2], Forbidden)
    assert executor.completed == 4


async def test_a_job_cancelled_mid_batch_answers_at_once_and_the_others_go_on() -> None:
    device = BatchDevice()
    executor = executor_for(device)
    gone = asyncio.Event()

    async def leaving() -> bool:
        return gone.is_set()

    executor.start()
    try:
        first = asyncio.create_task(executor.submit("a", 1, connected))
        await device.entered()
        stays = asyncio.create_task(executor.submit("a", 2, connected))
        goes = asyncio.create_task(executor.submit("a", 3, leaving))
        await asyncio.wait_for(depth_reaches(executor, 2), WAIT_S)
        device.release()
        await first
        await device.entered()  # the batch [2, 3] holds the device
        gone.set()
        with pytest.raises(Cancelled) as stopped:
            await asyncio.wait_for(goes, WAIT_S)
        assert not stays.done(), "the cancelled job must not wait for its batch"
        assert stopped.value.started and stopped.value.reason is CancelReason.CLIENT_GONE
        assert "batch of 2" in stopped.value.detail
        device.release()
        assert await asyncio.wait_for(stays, WAIT_S) == 20
    finally:
        device.release(10)
        await executor.stop()
    assert device.batches == [[1], [2, 3]]


async def test_a_failing_batch_answers_every_job_and_one_run_function_stays_one_at_a_time() -> None:
    def broken(payloads: Sequence[int], cancels: Sequence[CancelToken], upcoming: int):
        raise RuntimeError("device lost")

    executor = DeviceExecutor(
        run_batch=broken,
        max_batch=4,
        batch_key=lambda p: 1,
        capacity=4,
        max_overtake=0,
        retry_after_s=1,
    )
    executor.start()
    try:
        results = await asyncio.gather(
            *(executor.submit(None, n, connected) for n in range(3)), return_exceptions=True
        )
    finally:
        await executor.stop()
    assert all(isinstance(r, RuntimeError) for r in results)
    single = DeviceExecutor(lambda p, c: p, capacity=1, max_overtake=0, retry_after_s=1)
    assert single.max_batch == 1
    with pytest.raises(ValueError, match="exactly one"):
        DeviceExecutor(capacity=1, max_overtake=0, retry_after_s=1)
