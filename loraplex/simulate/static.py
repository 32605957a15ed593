"""The static pool at the same p95: what loraplex's autoscaling saves at equal latency.

A *static* pool is loraplex without its operator: a fixed number of always-warm replicas per
base, the same workers (the worker's cache and queue) behind the same router picker
(:func:`~loraplex.simulate.scenarios.loraplex_pool`). :func:`static_at_same_p95` searches, per
base, the smallest such pool whose p95 over that base's requests meets a target p95 (default:
loraplex's own overall p95 on the same stream) with nothing rejected. A mixture of pools that
each meet the target meets it too, so the static fleet's p95 is at most the target.

The search: start from the replicas the base's busiest hour keeps busy, grow by doubling steps
until the target is met, then bisect down to the smallest size that meets it (p95 falls as
replicas are added). Pools are independent in the simulation, so each base runs alone and
the fleet's figures are the union of its pools'.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import simpy

from loraplex.simulate.config import SimConfig
from loraplex.simulate.fleet import Recorder
from loraplex.simulate.scenarios import Pool, _pools_run, loraplex_pool
from loraplex.simulate.traffic import Traffic

MAX_STATIC_REPLICAS = 512  # the search gives up beyond this many replicas per base


def base_traffic(traffic: Traffic, base: str) -> Traffic:
    """Only ``base``'s requests (indices kept), same horizon and measured window."""
    requests = tuple(r for r in traffic.requests if r.base == base)
    return Traffic(requests, traffic.horizon_s, traffic.measure_from_s)


def run_static(traffic: Traffic, cfg: SimConfig, replicas: dict[str, int]) -> Recorder:
    """Fixed pools of ``replicas[base]`` warm loraplex workers, no operator."""

    def build(env: simpy.Environment, recorder: Recorder, base: str) -> Pool:
        pool = loraplex_pool(env, recorder, cfg, base, f"static/{base}")
        for _ in range(max(1, replicas[base])):
            pool.add_replica(0.0)  # always warm: the pool exists before the first request
        return pool

    return _pools_run(traffic, cfg, build, None)


def peak_busy(traffic: Traffic, service_s: float, window_s: float = 3600.0) -> float:
    """Replicas kept busy by the busiest ``window_s`` of the stream (a lower bound on any
    static pool that keeps up): the search starts there."""
    times = np.array([r.time for r in traffic.requests])
    if times.size == 0:
        return 0.0
    most = np.searchsorted(times, times + window_s) - np.arange(times.size)
    return float(most.max()) / min(window_s, traffic.horizon_s) * service_s


def _latencies(recorder: Recorder, traffic: Traffic) -> tuple[list[float], int]:
    measured = traffic.measured
    done = [recorder.latencies[r.index] for r in measured if r.index in recorder.latencies]
    return done, sum(1 for r in measured if r.index in recorder.rejected)


def _meets(done: list[float], rejected: int, target_p95_s: float) -> bool:
    return not rejected and (not done or float(np.percentile(done, 95)) <= target_p95_s)


def smallest_pool(
    traffic: Traffic, cfg: SimConfig, base: str, target_p95_s: float
) -> tuple[int | None, list[float]]:
    """(replicas, measured latencies) of the smallest static pool for ``base`` meeting the
    target; (None, []) if even ``MAX_STATIC_REPLICAS`` do not."""
    own = base_traffic(traffic, base)
    runs: dict[int, tuple[bool, list[float]]] = {}

    def trial(n: int) -> bool:
        if n not in runs:
            done, rejected = _latencies(run_static(own, cfg, {base: n}), own)
            runs[n] = (_meets(done, rejected, target_p95_s), done)
        return runs[n][0]

    low, n, step = 0, max(1, math.ceil(peak_busy(own, cfg.hardware.inference_for(base)))), 1
    while not trial(n):
        low = n
        if n >= MAX_STATIC_REPLICAS:
            return None, []
        n, step = min(MAX_STATIC_REPLICAS, n + step), step * 2
    high = n  # meets; every size ≤ low failed
    while high - low > 1:
        mid = (low + high) // 2
        if trial(mid):
            high = mid
        else:
            low = mid
    return high, runs[high][1]


def static_at_same_p95(
    traffic: Traffic, cfg: SimConfig, target_p95_s: float, gpu_hours_of: Callable[[int], float]
) -> dict:
    """The static fleet meeting ``target_p95_s``: replicas per base, GPU-hours, p95."""
    sizes: dict[str, int | None] = {}
    latencies: list[float] = []
    for base in traffic.bases:
        sizes[base], done = smallest_pool(traffic, cfg, base, target_p95_s)
        latencies += done
    found = all(n is not None for n in sizes.values())
    total = sum(n for n in sizes.values() if n is not None)
    return {
        "target_p95_s": round(target_p95_s, 3),
        "replicas": sizes,
        "gpu_hours": round(gpu_hours_of(total), 3) if found else None,
        "p95_s": round(float(np.percentile(latencies, 95)), 3) if latencies and found else None,
        "found": found,
    }
