"""A static placement oracle: the best plan a picker could follow if it knew the popularity.

It answers one question about ``affinity_over_optimal ≤ 1.3``: is the router's picker far
from what any picker could do, or is the goal itself out of reach at the wait goal? The oracle
knows each adapter's true share (the stream's Zipf law), which no router does, and plans once:

1. **Copies.** The most popular adapters get ``max(2, ceil(spread · share · N))`` copies (at
   most N), most popular first, while a budget of ``duplicates`` extra copies lasts; every
   other adapter gets one. Each extra copy pushes one adapter of rank ~2,400 out of the
   fleet's 8 × 300 host slots, which is what the bound ``partitioned_optimal`` never pays.
2. **Assignment.** Adapters, most popular first, go to the replicas with the least expected
   load (share ÷ copies) among those with host room left, then the fewest adapters: every
   replica gets ~1/N of the traffic and ≤ its host tier's worth of adapters where possible.
3. **Pick.** The holder with the lowest score (switch seconds by tier + queue seconds, as
   :class:`~loraplex.router.pick.PlacementPicker` scores) unless it is more than
   ``spill_after`` generations behind the least-loaded replica; then the replica with the
   lowest score anywhere (a *spill*: the worker keeps that load on probation).

``spill_after`` is the trade: small, and the pinned long tail spills cold (loads); large, and
it waits behind its one home (queues).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from loraplex.router.pick import ReplicaView, queue_seconds


@dataclass(frozen=True)
class OraclePlan:
    duplicates: int  # extra copies beyond one per adapter, fleet-wide
    spread: float  # copies per replica's worth of an adapter's traffic
    spill_after: float  # generations behind the least-loaded replica before a spill


def copies_by_rank(shares: np.ndarray, replicas: int, duplicates: int, spread: float) -> list[int]:
    """Step 1: copies of each adapter (index = popularity rank) within the duplicate budget."""
    copies = [1] * len(shares)
    budget = duplicates
    for rank, share in enumerate(shares.tolist()):
        wanted = min(replicas, max(2, math.ceil(spread * share * replicas)))
        if wanted - 1 > budget:
            break
        copies[rank] = wanted
        budget -= wanted - 1
    return copies


def assign(shares: np.ndarray, copies: list[int], replicas: int, room: int) -> list[list[int]]:
    """Step 2: the replicas (indices) holding each adapter, balancing load, then count."""
    load = [0.0] * replicas
    count = [0] * replicas
    holders: list[list[int]] = []
    for share, n in zip(shares.tolist(), copies, strict=True):
        order = sorted(range(replicas), key=lambda j: (count[j] >= room, load[j], count[j], j))
        chosen = order[:n]
        for j in chosen:
            load[j] += share / n
            count[j] += 1
        holders.append(chosen)
    return holders


class OraclePicker:
    """Step 3 over a plan: the picker interface the bench drives (``pick``, ``is_spill``)."""

    def __init__(
        self, plan: OraclePlan, holders: list[list[int]], rank_of: Callable[[str], int]
    ) -> None:
        self.plan = plan
        self.holders = holders
        self.rank_of = rank_of

    def pick(self, replicas: Sequence[ReplicaView], adapter: str | None) -> ReplicaView:
        assert adapter is not None, "the placement stream has no base-model requests"
        work = [queue_seconds(r) for r in replicas]
        least = min(work)

        def score(j: int) -> tuple[float, int]:
            return work[j] + replicas[j].load_seconds.switch(replicas[j].holding(adapter)), j

        home = min(self.holders[self.rank_of(adapter)], key=score)
        slack = self.plan.spill_after * replicas[home].load_seconds.generate
        if work[home] <= least + slack + 1e-9:
            return replicas[home]
        return replicas[min(range(len(replicas)), key=score)]

    def is_spill(
        self, replicas: Sequence[ReplicaView], adapter: str | None, chosen: ReplicaView
    ) -> bool:
        if adapter is None:
            return False
        endpoints = [r.endpoint for r in replicas]
        return endpoints.index(chosen.endpoint) not in self.holders[self.rank_of(adapter)]


def oracle_picker(
    plan: OraclePlan, shares: np.ndarray, replicas: int, room: int, rank_of: Callable[[str], int]
) -> OraclePicker:
    copies = copies_by_rank(shares, replicas, plan.duplicates, plan.spread)
    return OraclePicker(plan, assign(shares, copies, replicas, room), rank_of)


def oracle_plans(text: str) -> list[OraclePlan]:
    """``--oracle``: comma-separated ``duplicates:spread:spill_after`` plans."""
    plans = []
    for item in filter(None, (v.strip() for v in text.split(","))):
        duplicates, spread, spill_after = item.split(":")
        plans.append(OraclePlan(int(duplicates), float(spread), float(spill_after)))
    return plans


def oracle_frontier(
    plans: list[OraclePlan],
    runs: list[dict[str, float]],
    optimal: float,
    least_loaded_wait: float,
) -> list[dict[str, float]]:
    """The oracle's loads against wait, as the bench's ``frontier`` reports the picker's."""
    return [
        {
            "duplicates": plan.duplicates,
            "spread": plan.spread,
            "spill_after": plan.spill_after,
            "cold_loads_per_request": round(run["cold_loads_per_request"], 5),
            "over_optimal": round(run["cold_loads_per_request"] / optimal, 2),
            "wait_over_least_loaded": round(run["mean_wait"] / least_loaded_wait, 3),
        }
        for plan, run in zip(plans, runs, strict=True)
    ]
