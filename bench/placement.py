"""Fleet-wide adapter placement: Hub + disk loads per request under each pick strategy.

What users wait for is a Hub download or a disk read (seconds), not a host→device copy: this
bench counts those. A Zipf(1.1) stream over 2,500 adapters of 100 MB (Poisson arrivals at 70 %
utilisation) goes to 8 replicas, each with the worker's own tiers — ``AdapterCache`` (8 resident
slots, a 30 GB host tier: 300 adapters) and a 100 GB disk of its own (``disk_evictions``) — and
the worker's ``GroupingQueue``. Switch seconds follow the simulator's size-based tiers
(``TierBandwidth``: Hub 100 MB/s, disk 1 GB/s, conversion, host→device 10 GB/s) and each
replica measures them with the worker's own ``LoadCosts``, which is what the router's
``PlacementPicker`` prices from (as from a worker's ``/v1/state``). One generation: 5 s. Every
strategy sees the same stream and the same ``ReplicaView`` the router builds. The first
``--warmup`` requests fill the caches and are not counted (a fleet that has been running).

Keys (last line, JSON):

* ``cold_loads_per_request`` (Hub + disk loads ÷ requests) for ``round_robin``,
  ``least_loaded``, ``resident_affinity`` (the previous default), ``adapter_affinity`` (the
  router's default, ``PlacementPicker``) and ``partitioned_optimal``: a computed lower bound —
  the fleet's host tiers holding disjoint sets of the most popular adapters (8 × 300), so only
  requests for the rest load (the stream's Zipf law: a steady state).
* ``rr_over_affinity`` (goal ≥ 3), ``affinity_over_optimal`` (goal ≤ 1.3).
* ``mean_wait`` per strategy: seconds from arrival to the start of the generation (queue +
  adapter switch; goal: affinity ≤ 1.1 × least-loaded), ``affinity_wait_over_least_loaded``,
  and ``mean_queue_wait`` (the queue alone).
* ``affinity_over_partitioned_lru``: against ``partitioned_lru``, a perfect partition (adapter
  of rank i always on replica i mod 8) through the same worker caches, load balance ignored.
* ``homes_moved_on_scale_out``: the fraction of adapters whose (first) home changes when a 9th
  replica joins the 8 (goal ≤ 1.5/N; rendezvous hashing moves ~1/(N+1)).
* ``compulsory_loads_per_request``: measured requests for an adapter never asked for before, a
  load no strategy avoids; the bound (a steady state) has none, so the default warm-up (200,000)
  is long enough to make it 0 (30,000 left 1 %, 3.3× the bound on its own).
* ``frontier``: the default picker with ``cold_spill_queue`` raised (``--frontier``): loads
  against wait, each ``over_optimal`` and ``wait_over_least_loaded``.
* ``oracle_frontier``: a static plan that *knows* each adapter's share (``--oracle``,
  placement_sections/oracle.py: the top adapters copied within a budget, a load-balanced
  assignment, spills past a busy holder), as a yardstick for the picker.
* ``wait_lower_bound``: for loads within ``over_optimal`` × the bound, the least mean wait any
  picker can have (placement_sections/bound.py), also ``over_least_loaded``.

Spills: the router marks a pick past the adapter's homes (``is_spill``, as it sends
``x-loraplex-placement: spill``), and the worker keeps that fresh load on probation in its host
tier (``AdapterCache.admit(keep=False)``). ``--host-policy tinylfu`` and ``--cold-spill-queue N``
measure the alternatives (docs/placement.md has the table).

Finding (defaults, seed 0, steady state): round-robin loads 5.6× as often as the default picker,
whose wait (queue + switch) is 1.075× least-loaded's (seed 1: 1.034×) — both pickers read the
running job's age (``running_seconds``), without which least-loaded waited longer than
round-robin. ``affinity_over_optimal ≤ 1.3`` is not met (14.7×), and it cannot be met together
with the wait goal by any picker: within 1.3× the bound's loads the fleet can afford 29 extra
copies and 0.09 % spills, so 42.5 % of the requests wait at the one replica that holds their
adapter, and ``wait_lower_bound`` puts the mean wait at ≥ 1.06 s, 1.46× least-loaded's. The
picker's own frontier trades loads for wait (6.4× at 1.5× the wait, 3.4× at 1.9×) and beats
the static oracle at every point measured (docs/placement.md).

Run: ``python bench/placement.py [--requests N] [--warmup N] [--frontier 3,4,6]
[--oracle D:S:T,…]`` (the runs are independent and go side by side, one process each: ~3.5
minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import numpy as np
from loraplex.router.homes import homes
from loraplex.router.pick import (
    STRATEGIES,
    LoadSeconds,
    Picker,
    PlacementPicker,
    ReplicaView,
    is_spill,
)
from loraplex.worker.adapters import HOST_POLICIES, HostPolicy
from loraplex.worker.load_costs import LoadCosts
from loraplex.worker.queue import GroupingQueue, Job
from loraplex.worker.settings import WorkerSettings
from placement_sections.bound import wait_lower_bound
from placement_sections.oracle import (
    OraclePicker,
    OraclePlan,
    oracle_frontier,
    oracle_picker,
    oracle_plans,
)

from loraplex.simulate.adapters import WorkerAdapters
from loraplex.simulate.config import TierBandwidth

REPLICAS = 8
ADAPTERS = 2500
ZIPF_S = 1.1
ADAPTER_BYTES = 100_000_000
SLOTS = 8
HOST_ADAPTERS = 300
DISK_ADAPTERS = 1000
GENERATE_S = 5.0
UTILISATION = 0.7
TIERS = TierBandwidth()
MAX_OVERTAKE = WorkerSettings.model_fields["max_overtake"].default
COLD = frozenset({"disk", "hub"})
HOST_POLICY: HostPolicy = "lru"  # the worker's default host tier (``tinylfu``: --host-policy)


class SimReplica:
    """A worker: its own adapter tiers, queue policy and load-cost estimates."""

    def __init__(self, endpoint: str, host_policy: HostPolicy = HOST_POLICY) -> None:
        self.endpoint = endpoint
        self.adapters = WorkerAdapters.sized(
            TIERS.seconds,
            slots=SLOTS,
            host_bytes=HOST_ADAPTERS * ADAPTER_BYTES,
            disk=DISK_ADAPTERS * ADAPTER_BYTES,
            nbytes_of=lambda _adapter: ADAPTER_BYTES,
            host_policy=host_policy,
        )
        self.queue = GroupingQueue(capacity=1 << 30, max_overtake=MAX_OVERTAKE)
        self.costs = LoadCosts()
        self.last_adapter: str | None = None
        self.free_at = 0.0
        self.started_at = 0.0  # when the job on the device began (switch included)
        self.cold_loads = 0
        self.queued = 0.0  # seconds in the queue, counted requests
        self.switched = 0.0  # seconds of adapter switches, counted requests
        self._view: tuple[bool, ReplicaView] | None = None  # (running, view) until a change

    def advance(self, now: float) -> None:
        """Start queued requests while the device frees up by ``now`` (see bench/affinity.py)."""
        while len(self.queue) and self.free_at <= now:
            job = self.queue.pop(self.last_adapter)
            assert job is not None
            (arrival, counted, spill), adapter = job.payload, job.group
            start = max(self.free_at, arrival)
            switch = self.adapters.switch(adapter, spill=spill)
            self.costs.observe_switch(switch.tier, switch.seconds, switch.nbytes)
            self.costs.observe_generate(GENERATE_S)
            if counted:
                self.queued += start - arrival
                self.switched += switch.seconds
                self.cold_loads += switch.tier in COLD
            self.last_adapter = adapter
            self.started_at = start
            self.free_at = start + switch.seconds + GENERATE_S
            self._view = None

    def enqueue(self, now: float, adapter: str, counted: bool, spill: bool = False) -> None:
        self.queue.push(Job(adapter, (now, counted, spill)))
        self._view = None

    def view(self, now: float) -> ReplicaView:
        """What the router sees (as ``ReplicaState.view``), the running job's age included."""
        running = self.free_at > now
        base = self._base_view(running)
        return replace(base, running_seconds=now - self.started_at) if running else base

    def _base_view(self, running: bool) -> ReplicaView:
        if self._view is not None and self._view[0] == running:
            return self._view[1]
        resident, host = self.adapters.names()
        view = ReplicaView(
            endpoint=self.endpoint,
            queue_depth=len(self.queue) + running,
            active_adapter=self.adapters.active,
            resident_adapters=resident,
            host_cached_adapters=host,
            disk_cached_adapters=self.adapters.disk_names(),
            load_seconds=LoadSeconds.from_state(
                self.costs.load_seconds(), self.costs.generate_seconds()
            ),
        )
        self._view = (running, view)
        return view


def zipf_stream(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = np.arange(1, ADAPTERS + 1, dtype=float) ** -ZIPF_S
    adapters = rng.choice(ADAPTERS, size=n, p=weights / weights.sum())
    rate = UTILISATION * REPLICAS / GENERATE_S
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=n))
    return adapters, arrivals


def name(index: int) -> str:
    return f"org/lora-{index:04d}@" + "0" * 40


def rank_of(adapter: str) -> int:
    """The popularity rank (stream index) of an adapter :func:`name` made."""
    return int(adapter.removeprefix("org/lora-")[:4])


def shares() -> np.ndarray:
    """Each adapter's share of the stream, by popularity rank (the Zipf law)."""
    weights = np.arange(1, ADAPTERS + 1, dtype=float) ** -ZIPF_S
    return weights / weights.sum()


def simulate(
    picker: Picker | OraclePicker,
    adapters: np.ndarray,
    arrivals: np.ndarray,
    warmup: int,
    host_policy: HostPolicy = HOST_POLICY,
) -> dict[str, float]:
    replicas = [SimReplica(f"http://replica-{i}", host_policy) for i in range(REPLICAS)]
    by_endpoint = {r.endpoint: r for r in replicas}
    for i, (adapter_index, now) in enumerate(
        zip(adapters.tolist(), arrivals.tolist(), strict=True)
    ):
        adapter = name(adapter_index)
        for replica in replicas:
            replica.advance(now)
        views = [r.view(now) for r in replicas]
        chosen = picker.pick(views, adapter)
        # the router's x-loraplex-placement (the oracle knows its own plan's holders)
        if isinstance(picker, OraclePicker):
            spill = picker.is_spill(views, adapter, chosen)
        else:
            spill = is_spill(picker, views, adapter, chosen)
        by_endpoint[chosen.endpoint].enqueue(now, adapter, counted=i >= warmup, spill=spill)
    for replica in replicas:
        replica.advance(float("inf"))
    n = len(adapters) - warmup
    queued = sum(r.queued for r in replicas) / n
    return {
        "cold_loads_per_request": sum(r.cold_loads for r in replicas) / n,
        "mean_wait": queued + sum(r.switched for r in replicas) / n,
        "mean_queue_wait": queued,
    }


def partitioned_optimal() -> float:
    """Loads per request if the fleet's host tiers held disjoint sets of the most popular
    adapters (8 × 300) forever: the popularity of the rest (the stream's own Zipf law)."""
    return float(shares()[REPLICAS * HOST_ADAPTERS :].sum())


def partitioned_lru(
    adapters: np.ndarray, warmup: int, host_policy: HostPolicy = HOST_POLICY
) -> float:
    """Loads per request of a perfect partition through the workers' own caches: adapter of
    popularity rank i always on replica i mod 8 (equal shares of the catalogue and of the
    traffic), each replica's LRU tiers over its own part, load balance ignored."""
    replicas = [SimReplica(f"http://replica-{i}", host_policy) for i in range(REPLICAS)]
    loads = 0
    for i, adapter_index in enumerate(adapters.tolist()):
        switch = replicas[adapter_index % REPLICAS].adapters.switch(name(adapter_index))
        loads += i >= warmup and switch.tier in COLD
    return loads / (len(adapters) - warmup)


def homes_moved(replicas: int) -> float:
    before = [f"http://replica-{i}" for i in range(replicas)]
    after = [*before, f"http://replica-{replicas}"]
    moved = sum(homes(name(a), before)[0] != homes(name(a), after)[0] for a in range(ADAPTERS))
    return moved / ADAPTERS


def compulsory(adapters: np.ndarray, warmup: int) -> float:
    """Measured requests for an adapter never asked for before (not even in the warm-up): a
    load every strategy must pay. The partitioned bound, a steady state, has none of them, so
    the warm-up must be long enough to make this small (30,000 left 1 %: 3.3× the bound)."""
    seen = set(adapters[:warmup].tolist())
    first = 0
    for adapter in adapters[warmup:].tolist():
        first += adapter not in seen
        seen.add(adapter)
    return first / (len(adapters) - warmup)


Option = int | None | OraclePlan  # a PlacementPicker's cold_spill_queue, or the oracle's plan


def _picker(label: str, option: Option) -> Picker | OraclePicker:
    """The router's strategy ``label`` as it builds it, with ``cold_spill_queue`` for ours;
    ``oracle``: the static plan of placement_sections/oracle.py."""
    if isinstance(option, OraclePlan):
        return oracle_picker(option, shares(), REPLICAS, HOST_ADAPTERS, rank_of)
    cold_spill_queue = option
    strategy = STRATEGIES[label]
    if strategy is PlacementPicker:
        return PlacementPicker(cold_spill_queue=cold_spill_queue)
    return strategy()


def _run(job: tuple[str, Option, argparse.Namespace]) -> dict[str, float]:
    """One strategy over the seed's stream (in a process of its own: they are independent)."""
    label, option, args = job
    adapters, arrivals = zipf_stream(args.warmup + args.requests, args.seed)
    picker = _picker(label, option)
    return simulate(picker, adapters, arrivals, args.warmup, args.host_policy)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30_000, help="measured requests")
    parser.add_argument(
        "--warmup", type=int, default=200_000, help="requests before measuring (steady state)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--host-policy", choices=HOST_POLICIES, default=HOST_POLICY)
    parser.add_argument(
        "--cold-spill-queue", type=int, default=None, help="PlacementPicker's (default: bound)"
    )
    parser.add_argument(
        "--frontier",
        default="3,4,6",
        help="cold_spill_queue values for the loads-vs-wait frontier ('' for none)",
    )
    parser.add_argument(
        "--oracle",
        default="100:8:1,100:8:2,30:8:1",
        help="static oracle plans duplicates:spread:spill_after ('' for none)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    labels = list(STRATEGIES)  # round_robin, least_loaded, resident_affinity, adapter_affinity
    frontier_queues = [int(v) for v in args.frontier.split(",") if v.strip()]
    plans = oracle_plans(args.oracle)
    jobs: list[tuple[str, Option, argparse.Namespace]]
    jobs = [(label, args.cold_spill_queue, args) for label in labels]
    jobs += [("adapter_affinity", queue, args) for queue in frontier_queues]
    jobs += [("oracle", plan, args) for plan in plans]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        runs = list(pool.map(_run, jobs))
    oracle_runs = runs[len(labels) + len(frontier_queues) :]
    results = dict(zip(labels, runs, strict=False))
    for label, result in results.items():
        print(
            f"{label:18s} cold loads/request {result['cold_loads_per_request']:.4f}  "
            f"mean wait {result['mean_wait']:.3f} s"
        )
    adapters, _ = zipf_stream(args.warmup + args.requests, args.seed)
    frontier_runs = runs[len(labels) : len(labels) + len(frontier_queues)]
    summary = summarise(args, results, frontier_runs, frontier_queues, adapters)
    summary["oracle_frontier"] = oracle_frontier(
        plans, oracle_runs, partitioned_optimal(), results["least_loaded"]["mean_wait"]
    )
    summary["wait_lower_bound"] = [
        lower_bound(x, results["least_loaded"]["mean_wait"]) for x in (1.3, 1.5, 2.0, 3.0)
    ]
    print(json.dumps(summary))


def lower_bound(over_optimal: float, least_loaded_wait: float) -> dict[str, float]:
    """placement_sections/bound.py: the least mean wait of any picker within ``over_optimal``
    × ``partitioned_optimal``'s loads, also as a multiple of least-loaded's measured wait."""
    bound = wait_lower_bound(
        shares(),
        REPLICAS,
        HOST_ADAPTERS,
        over_optimal,
        utilisation=UTILISATION,
        generate_s=GENERATE_S,
    )
    return {**bound, "over_least_loaded": round(bound["mean_wait_s"] / least_loaded_wait, 3)}


def summarise(
    args: argparse.Namespace,
    results: dict[str, dict[str, float]],
    frontier_runs: list[dict[str, float]],
    frontier_queues: list[int],
    adapters: np.ndarray,
) -> dict[str, object]:
    loads = {label: round(r["cold_loads_per_request"], 5) for label, r in results.items()}
    loads["partitioned_optimal"] = round(partitioned_optimal(), 5)
    loads["partitioned_lru"] = round(partitioned_lru(adapters, args.warmup, args.host_policy), 5)
    waits = {label: round(r["mean_wait"], 4) for label, r in results.items()}
    frontier = [
        {
            "cold_spill_queue": queue,
            "cold_loads_per_request": round(run["cold_loads_per_request"], 5),
            "over_optimal": round(run["cold_loads_per_request"] / partitioned_optimal(), 2),
            "wait_over_least_loaded": round(run["mean_wait"] / waits["least_loaded"], 3),
        }
        for queue, run in zip(frontier_queues, frontier_runs, strict=True)
    ]
    return {
        "cold_loads_per_request": loads,
        "compulsory_loads_per_request": round(compulsory(adapters, args.warmup), 5),
        "rr_over_affinity": round(loads["round_robin"] / loads["adapter_affinity"], 2),
        "affinity_over_optimal": round(loads["adapter_affinity"] / loads["partitioned_optimal"], 2),
        "affinity_over_partitioned_lru": round(
            loads["adapter_affinity"] / loads["partitioned_lru"], 2
        ),
        "mean_wait": waits,
        "mean_queue_wait": {label: round(r["mean_queue_wait"], 4) for label, r in results.items()},
        "affinity_wait_over_least_loaded": round(
            waits["adapter_affinity"] / waits["least_loaded"], 3
        ),
        "frontier": frontier,
        "homes_moved_on_scale_out": round(homes_moved(REPLICAS), 4),
        "homes_moved_bound": round(1.5 / REPLICAS, 4),
        "host_policy": args.host_policy,
        "spill_probation": True,
        "replicas": REPLICAS,
        "requests": args.requests,
        "warmup": args.warmup,
    }


if __name__ == "__main__":
    main()
