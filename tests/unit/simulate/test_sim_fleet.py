"""Simulated replicas: the worker's GroupingQueue picks the next job, bounded as the worker's."""

from __future__ import annotations

import pytest
import simpy
from loraplex.worker.queue import GroupingQueue

from loraplex.shared.errors import QueueFull
from loraplex.simulate.adapters import WorkerAdapters
from loraplex.simulate.config import SwitchTimes
from loraplex.simulate.fleet import COLD_START, Recorder, Replica
from loraplex.simulate.traffic import Request

ADAPTERS = ["a", "b", "c", "a", "a"]


def _replica(env: simpy.Environment, max_overtake: int, capacity: int = 8) -> Replica:
    recorder = Recorder(total=len(ADAPTERS), done=env.event())
    adapters = WorkerAdapters.counted(SwitchTimes(), slots=2, host=4, disk=10)
    queue = GroupingQueue(capacity, max_overtake)
    return Replica(env, "r", 1.0, adapters, recorder, warmup_s=0.0, queue=queue)


def _completion_order(max_overtake: int) -> list[int]:
    env = simpy.Environment()
    replica = _replica(env, max_overtake)

    def arrive() -> object:
        yield env.timeout(0.5)
        for i, adapter in enumerate(ADAPTERS):  # all at once: the first runs, four wait
            replica.enqueue(Request(i, env.now, adapter, "sdxl", adapter))

    env.process(arrive())
    env.run()
    return list(replica.recorder.latencies)  # filled in completion order


def test_same_adapter_jobs_overtake_at_most_max_overtake_times() -> None:
    # After a: both later a's would overtake b and c, but each may be passed over only once.
    assert _completion_order(max_overtake=1) == [0, 3, 1, 2, 4]
    assert _completion_order(max_overtake=4) == [0, 3, 4, 1, 2]
    assert _completion_order(max_overtake=0) == [0, 1, 2, 3, 4]  # FIFO


def test_a_full_queue_refuses_like_the_worker_and_cold_jobs_are_marked() -> None:
    env = simpy.Environment()
    recorder = Recorder(total=3, done=env.event())
    adapters = WorkerAdapters.counted(SwitchTimes(), slots=1, host=1, disk=1)
    replica = Replica(env, "r", 1.0, adapters, recorder, warmup_s=5.0, queue=GroupingQueue(2, 0))
    for i in range(2):
        replica.enqueue(Request(i, 0.0, "a", "sdxl", "a"))
    with pytest.raises(QueueFull):
        replica.enqueue(Request(2, 0.0, "a", "sdxl", "a"))
    assert replica.depth == 2 and replica.view().queue_depth == 2
    env.run()
    assert recorder.tiers == {0: COLD_START, 1: COLD_START}  # both waited for the warm-up
    assert recorder.latencies[0] > 5.0 and replica.depth == 0
