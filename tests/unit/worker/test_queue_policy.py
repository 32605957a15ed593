"""GroupingQueue: bounded, groups same-adapter jobs, never lets a job be overtaken too often."""

from __future__ import annotations

import random

import pytest
from loraplex.worker.queue import GroupingQueue, Job

from loraplex.shared.errors import QueueFull


def drain(queue: GroupingQueue, last: str | None) -> list[Job]:
    order = []
    while (job := queue.pop(last)) is not None:
        order.append(job)
        last = job.group
    return order


def test_full_queue_raises_queue_full() -> None:
    queue = GroupingQueue(capacity=2, max_overtake=0)
    queue.push(Job("a", 1))
    queue.push(Job("b", 2))
    with pytest.raises(QueueFull):
        queue.push(Job("c", 3))


def test_zero_overtake_is_fifo() -> None:
    queue = GroupingQueue(capacity=10, max_overtake=0)
    for i, group in enumerate("abab"):
        queue.push(Job(group, i))
    assert [j.payload for j in drain(queue, "a")] == [0, 1, 2, 3]


def test_same_adapter_jobs_are_grouped_within_the_bound() -> None:
    queue = GroupingQueue(capacity=10, max_overtake=2)
    for i, group in enumerate(["b", "a", "b", "a", "a", "a"]):
        queue.push(Job(group, i))
    # Last run used "a": jobs 1, 3 overtake job 0 ("b") twice, then job 0 must go.
    assert [j.payload for j in drain(queue, "a")] == [1, 3, 0, 2, 4, 5]


def test_cancelled_jobs_are_dropped_and_counted() -> None:
    queue = GroupingQueue(capacity=10, max_overtake=0)
    jobs = [Job("a", i) for i in range(3)]
    for job in jobs:
        queue.push(job)
    jobs[1].cancelled = True
    assert [j.payload for j in drain(queue, None)] == [0, 2]
    assert queue.dropped == 1


@pytest.mark.parametrize("max_overtake", [0, 1, 3, 7])
def test_no_job_is_overtaken_by_more_than_the_bound(max_overtake: int) -> None:
    """Random arrivals interleaved with pops: count, per job, the later jobs that ran first."""
    rng = random.Random(max_overtake)
    queue = GroupingQueue(capacity=1000, max_overtake=max_overtake)
    arrival = 0
    ran: list[int] = []
    last: str | None = None
    grouped = 0
    for _ in range(400):
        for _ in range(rng.randint(0, 3)):
            queue.push(Job(rng.choice("aabc"), arrival))
            arrival += 1
        job = queue.pop(last)
        if job is not None:
            grouped += job.group == last
            ran.append(job.payload)
            last = job.group
    ran += [j.payload for j in drain(queue, last)]
    assert sorted(ran) == list(range(arrival))
    position = {seq: i for i, seq in enumerate(ran)}
    worst = max(
        sum(1 for later in range(seq + 1, arrival) if position[later] < position[seq])
        for seq in range(arrival)
    )
    assert worst <= max_overtake
    if max_overtake:
        assert worst == max_overtake  # the bound is reached, so grouping really happens
