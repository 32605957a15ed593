"""Adapter loads per request under each pick strategy: the real picker classes, simulated workers.

A Zipf(1.1) stream over 500 adapters (Poisson arrivals at 70 % utilisation) goes to 4 replicas,
each with 8 device-resident slots held by the worker's own ``AdapterCache`` and a queue run by
the worker's own ``GroupingQueue`` (same-adapter requests overtake, at most ``--max-overtake``
times each; 0 is FIFO). A request whose adapter is not resident on the chosen replica costs a
*load* (host/disk → device) when it starts. Every strategy sees the same stream; the picker
gets the same ReplicaView the router builds.

Keys (last line, JSON): ``loads_per_request`` per strategy, ``rr_over_affinity`` (round-robin
loads ÷ affinity loads; goal ≥ 3), ``mean_wait`` per strategy (in service times), and
``rr_over_best_possible``: round-robin loads ÷ the loads of a clairvoyant static placement that
keeps the 32 most popular adapters resident forever — the ceiling for any picker with
4 × 8 slots on this stream — and the ``max_overtake`` used.

Finding: the issue's goal ``rr_over_affinity ≥ 3`` cannot be met on this stream by any picker.
With Zipf(1.1) over 500 adapters the 32 most popular hold only 68 % of requests, so even the
clairvoyant placement loads on 32 % of requests while round-robin (each replica an 8-slot LRU
over the whole stream) loads on ~71 %: the ceiling is ~2.2. Measured: affinity 1.38 at the
default bound (2 more queued than the shortest queue), with a shorter mean wait than
round-robin; the earlier absolute bound (2 queued) gave 1.25. A larger bound trades waiting
for loads (a relative bound of 4: ~1.51 with ~1.2× the wait). The worker's overtaking
(``max_overtake`` 4) changes little here: 1.37 (FIFO: 1.38), as at 70 % utilisation over 500
adapters a queue rarely holds a second request for the active adapter.

Since issue 15 the router's default (strategy ``adapter_affinity``) is ``PlacementPicker``; the
picker measured above is the previous default, reported as ``resident_affinity``. This bench
counts resident-slot loads only (no host or disk tier); what placement is for — Hub and disk
loads — is measured by ``bench/placement.py``. Here (20,000 requests) it loads 0.545 per request
(``rr_over_affinity`` 1.30) against the previous default's 0.515, with 1.2× its wait: resident
slots are 1 ms copies, which its score rightly weighs less than a queue.

Run: ``python bench/affinity.py [--requests N]`` (about 2 s for the default 20,000).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from loraplex.router.pick import (
    AdapterAffinityPicker,
    LeastLoadedPicker,
    Picker,
    PlacementPicker,
    ReplicaView,
    RoundRobinPicker,
)
from loraplex.worker.queue import GroupingQueue, Job
from loraplex.worker.settings import WorkerSettings

from loraplex.simulate.adapters import WorkerAdapters
from loraplex.simulate.config import SwitchTimes

REPLICAS = 4
SLOTS = 8
ADAPTERS = 500
ZIPF_S = 1.1
SERVICE = 1.0  # one generation, the time unit
LOAD_COST = 0.3  # a host→device adapter load, in generations
UTILISATION = 0.7
MAX_OVERTAKE = WorkerSettings.model_fields["max_overtake"].default


class SimReplica:
    """A worker: the worker's own adapter cache and queue policy, service times above.

    Every load costs ``LOAD_COST`` wherever it comes from, so the cache keeps no host or disk
    tier (and the switch seconds of :class:`SwitchTimes` are not used).
    """

    def __init__(self, endpoint: str, max_overtake: int) -> None:
        self.endpoint = endpoint
        self.adapters = WorkerAdapters.counted(SwitchTimes(), slots=SLOTS, host=0, disk=0)
        # Unbounded in effect: this bench measures placement, not shedding.
        self.queue = GroupingQueue(capacity=1 << 30, max_overtake=max_overtake)
        self.last_adapter: str | None = None
        self.free_at = 0.0
        self.loads = 0
        self.waited = 0.0

    def advance(self, now: float) -> None:
        """Start queued requests, one at a time, while the device frees up by ``now``.

        ``advance`` runs before every arrival, so whenever the device frees up, every job in
        the queue has already arrived: the queue's choice is the worker's at that moment.
        """
        while len(self.queue) and self.free_at <= now:
            job = self.queue.pop(self.last_adapter)
            assert job is not None
            arrival, adapter = job.payload, job.group
            start = max(self.free_at, arrival)
            self.waited += start - arrival
            cost = SERVICE
            if self.adapters.switch(adapter).loaded:
                self.loads += 1
                cost += LOAD_COST
            self.last_adapter = adapter
            self.free_at = start + cost

    def enqueue(self, now: float, adapter: str) -> None:
        self.queue.push(Job(adapter, now))

    def view(self, now: float) -> ReplicaView:
        running = 1 if self.free_at > now else 0
        return ReplicaView(
            endpoint=self.endpoint,
            queue_depth=len(self.queue) + running,
            active_adapter=self.adapters.active,
            resident_adapters=frozenset(self.adapters.resident),
        )


def zipf_stream(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = np.arange(1, ADAPTERS + 1, dtype=float) ** -ZIPF_S
    probs = weights / weights.sum()
    adapters = rng.choice(ADAPTERS, size=n, p=probs)
    rate = UTILISATION * REPLICAS / SERVICE
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=n))
    return adapters, arrivals, probs


def simulate(
    picker: Picker, adapters: np.ndarray, arrivals: np.ndarray, max_overtake: int
) -> dict[str, float]:
    replicas = [SimReplica(f"http://replica-{i}", max_overtake) for i in range(REPLICAS)]
    by_endpoint = {r.endpoint: r for r in replicas}
    for adapter_index, now in zip(adapters, arrivals, strict=True):
        adapter = f"org/lora-{adapter_index}@main"
        for replica in replicas:
            replica.advance(now)
        chosen = picker.pick([r.view(now) for r in replicas], adapter)
        by_endpoint[chosen.endpoint].enqueue(float(now), adapter)
    for replica in replicas:
        replica.advance(float("inf"))
    n = len(adapters)
    return {
        "loads_per_request": sum(r.loads for r in replicas) / n,
        "mean_wait": sum(r.waited for r in replicas) / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-overtake",
        type=int,
        default=MAX_OVERTAKE,
        help=f"the worker queue's overtake bound (default: the worker's, {MAX_OVERTAKE}); 0 = FIFO",
    )
    args = parser.parse_args()
    adapters, arrivals, probs = zipf_stream(args.requests, args.seed)
    strategies: dict[str, Picker] = {
        "round_robin": RoundRobinPicker(),
        "least_loaded": LeastLoadedPicker(),
        "resident_affinity": AdapterAffinityPicker(),
        "adapter_affinity": PlacementPicker(),
    }
    results = {
        name: simulate(picker, adapters, arrivals, args.max_overtake)
        for name, picker in strategies.items()
    }
    for name, result in results.items():
        print(
            f"{name:18s} loads/request {result['loads_per_request']:.3f}  "
            f"mean wait {result['mean_wait']:.2f}"
        )
    loads = {name: round(r["loads_per_request"], 4) for name, r in results.items()}
    best_possible = 1.0 - float(np.sort(probs)[::-1][: REPLICAS * SLOTS].sum())
    summary = {
        "loads_per_request": loads,
        "mean_wait": {name: round(r["mean_wait"], 3) for name, r in results.items()},
        "rr_over_affinity": round(loads["round_robin"] / loads["adapter_affinity"], 2),
        "rr_over_best_possible": round(loads["round_robin"] / best_possible, 2),
        "requests": args.requests,
        "max_overtake": args.max_overtake,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
