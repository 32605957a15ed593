"""Replica picking: which worker of a pool gets a request. Pure code — no I/O, no clock.

The router keeps a :class:`ReplicaView` per ready worker (from ``GET /v1/state`` polls and the
headers of each worker answer) and asks a :class:`Picker` for one. Strategies are small
classes with the algorithm in their docstring, like Ray Serve's request routers; the
simulator imports them unchanged, so the shape of this module is a contract.

Adapter keys are ``"<repo>@<commit>"`` strings, as in :class:`loraplex.shared.contract.WorkerState`.

The default is :class:`PlacementPicker` (strategy ``adapter_affinity``): rendezvous homes
(:mod:`loraplex.router.homes`) plus a score priced from the load seconds each worker measures.
The previous default, :class:`AdapterAffinityPicker`, stays selectable as ``resident_affinity``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from loraplex.router.homes import HotAdapters, home_count, homes, ranking

# Where a replica holds an adapter, warmest first (the worker's SwitchTier names; "none": not
# on this replica at all, a Hub download).
HOLDINGS = ("active", "resident", "host", "disk", "none")
COLD_HOLDINGS = frozenset({"disk", "none"})  # a file read and a conversion: seconds


@dataclass(frozen=True)
class LoadSeconds:
    """Expected seconds to make an adapter active from each tier, and of one generation.

    Workers measure these and export them in ``/v1/state`` (``load_seconds``,
    ``generate_seconds``); the defaults stand in until a worker has measured a tier. They are
    an SDXL LoRA of ~100 MB on a datacenter GPU: 5 ms resident (a scatter into the slot), 50 ms
    from pinned host RAM, 1.5 s from local disk (read + convert), 5 s from the Hub, 5 s per image.
    """

    resident: float = 0.005
    host: float = 0.05
    disk: float = 1.5
    hub: float = 5.0
    generate: float = 5.0

    def switch(self, holding: str) -> float:
        """Seconds of the switch a request meets on a replica holding the adapter so."""
        if holding == "active":
            return 0.0
        return getattr(self, "hub" if holding == "none" else holding)

    @classmethod
    def from_state(cls, tiers: Mapping[str, float], generate: float | None) -> LoadSeconds:
        """From a worker's ``load_seconds`` / ``generate_seconds`` (missing keys: defaults)."""
        base = cls()
        known = {k: float(v) for k, v in tiers.items() if k in ("resident", "host", "disk", "hub")}
        if generate is not None:
            known["generate"] = float(generate)
        return cls(**{**base.__dict__, **known})


DEFAULT_LOAD_SECONDS = LoadSeconds()


class NoReplicaError(LookupError):
    """``pick`` was called with no replica: the caller must hold the request or answer 503."""


@dataclass(frozen=True)
class ReplicaView:
    """What the router knows about one ready worker when it picks."""

    endpoint: str  # worker base URL
    queue_depth: int  # requests queued or running on that worker (router's best knowledge)
    active_adapter: str | None  # "<repo>@<commit>" keys as in WorkerState
    resident_adapters: frozenset[str] = frozenset()
    host_cached_adapters: frozenset[str] = frozenset()
    disk_cached_adapters: frozenset[str] = frozenset()
    load_seconds: LoadSeconds = DEFAULT_LOAD_SECONDS
    pool: str = ""  # the base model the worker serves: hot-adapter shares are per pool
    # Seconds the job on the device has been running (estimated now; 0 when idle or unknown):
    # of two equal queues, the one whose job has run longer frees first.
    running_seconds: float = 0.0

    def holding(self, adapter: str) -> str:
        """Where this replica holds ``adapter``: one of :data:`HOLDINGS`."""
        if adapter == self.active_adapter:
            return "active"
        if adapter in self.resident_adapters:
            return "resident"
        if adapter in self.host_cached_adapters:
            return "host"
        if adapter in self.disk_cached_adapters:
            return "disk"
        return "none"

    def tier(self, adapter: str | None) -> int:
        """How warm ``adapter`` is here: 3 active, 2 resident, 1 host-cached, 0 cold."""
        if adapter is None:
            return 0
        if adapter == self.active_adapter:
            return 3
        if adapter in self.resident_adapters:
            return 2
        if adapter in self.host_cached_adapters:
            return 1
        return 0


class Picker(Protocol):
    def pick(self, replicas: Sequence[ReplicaView], adapter: str | None) -> ReplicaView: ...


def _require(replicas: Sequence[ReplicaView]) -> None:
    if not replicas:
        raise NoReplicaError("no ready replica to pick from; hold the request or answer 503")


@dataclass
class _Rotor:
    """A counter that rotates ties so equal replicas share the work instead of the first winning."""

    counter: itertools.count = field(default_factory=itertools.count)

    def rotate(self, candidates: Sequence[ReplicaView]) -> ReplicaView:
        return candidates[next(self.counter) % len(candidates)]


class RoundRobinPicker:
    """Round-robin: the i-th call returns ``replicas[i % len(replicas)]``; ignores state.

    The baseline the affinity bench compares against: every replica sees the whole adapter
    stream, so each one's resident cache churns.
    """

    def __init__(self) -> None:
        self._rotor = _Rotor()

    def pick(self, replicas: Sequence[ReplicaView], adapter: str | None) -> ReplicaView:
        _require(replicas)
        return self._rotor.rotate(replicas)


class LeastLoadedPicker:
    """Least-loaded: the replica with the smallest ``queue_depth``; among those, the one whose
    running job has run longest (``running_seconds``: it frees first); remaining ties rotate
    round-robin.

    Ignores adapters entirely — best latency when switches are free, worst cache behaviour.
    Without the running-time tie-break a busy fleet's equal queues were a coin toss, and
    round-robin (which spreads arrivals evenly) waited less (bench/placement.py).
    """

    def __init__(self) -> None:
        self._rotor = _Rotor()

    def pick(self, replicas: Sequence[ReplicaView], adapter: str | None) -> ReplicaView:
        _require(replicas)
        lowest = min(r.queue_depth for r in replicas)
        shortest = [r for r in replicas if r.queue_depth == lowest]
        longest = max(r.running_seconds for r in shortest)
        return self._rotor.rotate([r for r in shortest if r.running_seconds == longest])


class AdapterAffinityPicker:
    """Residency affinity with bounded load — the default before :class:`PlacementPicker`
    (strategy ``resident_affinity``). It ignores disk and homes: a cold adapter goes to the
    least-loaded replica, so a fleet's caches each end up holding the same hot set.

    1. Replicas *with room* are those whose ``queue_depth`` is below the pool's shortest
       queue plus ``max_queue_per_replica``. When the pool is idle (shortest queue 0) that is
       the plain bound; under heavy load every queue is long, and a warm replica still wins
       as long as it is within the bound of the least-loaded one — an absolute bound would
       make affinity collapse exactly when switches cost the most.
    2. Among replicas with room, prefer the warmest tier for the adapter: active (no switch),
       then resident (a pointer swap), then host-cached (a host→device copy), then cold.
       A base-model request (``adapter=None``) prefers a replica with no active adapter,
       which skips even the cheap "disable adapter" step on the worker.
    3. Within the best tier, the smallest ``queue_depth`` wins; remaining ties rotate.

    Step 1 is what spreads a hot adapter: once its replica holds ``max_queue_per_replica``
    more requests than another, the next request goes to the other replica (which loads the
    adapter and then attracts its share by affinity). A cold adapter lands on the least-loaded
    replica. ``bench/affinity.py`` measured this relative bound against the absolute one on
    the same stream: fewer loads (0.51 vs 0.56 per request) and shorter waits.
    """

    def __init__(self, max_queue_per_replica: int = 2) -> None:
        if max_queue_per_replica < 1:
            raise ValueError(f"max_queue_per_replica must be ≥ 1, got {max_queue_per_replica}")
        self.max_queue_per_replica = max_queue_per_replica
        self._rotor = _Rotor()

    def _warmth(self, replica: ReplicaView, adapter: str | None) -> int:
        if adapter is None:
            return 1 if replica.active_adapter is None else 0
        return replica.tier(adapter)

    def pick(self, replicas: Sequence[ReplicaView], adapter: str | None) -> ReplicaView:
        _require(replicas)
        shortest = min(r.queue_depth for r in replicas)
        bound = shortest + self.max_queue_per_replica
        candidates = [r for r in replicas if r.queue_depth < bound]  # never empty: bound ≥ 1
        best_tier = max(self._warmth(r, adapter) for r in candidates)
        warmest = [r for r in candidates if self._warmth(r, adapter) == best_tier]
        lowest = min(r.queue_depth for r in warmest)
        return self._rotor.rotate([r for r in warmest if r.queue_depth == lowest])


class PlacementPicker:
    """Fleet-wide adapter placement: rendezvous homes, a cost score, bounded load — the default.

    For a request for adapter ``a`` among a pool's ready replicas:

    1. **Homes.** Count the request (:class:`~loraplex.router.homes.HotAdapters`); ``a``'s share
       of the pool's last ``hot_window_requests`` requests gives it ``k`` homes
       (:func:`~loraplex.router.homes.home_count`: 1 for the long tail, up to ``max_homes`` for a
       hot adapter), and its rendezvous ranking over the ready endpoints names them: the first
       ``k``. Every router computes the same ranking, and a replica joining or leaving moves
       only ~1/N of the homes.
    2. **Bounded load.** Replicas *with room* are less than ``max_queue_per_replica`` requests
       behind the least-loaded one, counted in expected work (:func:`queue_seconds` over the
       replica's own seconds per generation, so a queue whose job is nearly done is not a whole
       request behind; with no running job known it is queue depth, as in
       :class:`AdapterAffinityPicker`): a home that far behind is passed over.
    3. **Homes win among cold ones.** If a home has room, the non-homes where ``a`` is cold
       (on disk or nowhere: a file read and a conversion) drop out, so a cold adapter is loaded
       where it lives, not on whichever replica happens to be idle — that is what makes the
       replicas' host caches hold disjoint parts of the catalogue. A warm copy elsewhere
       (active, resident, host) still competes on its score.
    4. **Score** = expected switch seconds on that replica, by the tier it holds ``a`` in
       (active 0, resident, host, disk, none = Hub; priced from the load seconds the worker
       measured and exports in ``/v1/state``, :class:`LoadSeconds`) + expected queue wait
       (:func:`queue_seconds`: ``queue_depth`` × the worker's seconds per generation, less
       what the running job has done). The lowest score wins; ties go
       by the ranking (homes first, then the adapter's next choices, so spill is consistent).

    ``cold_spill_queue`` (default: ``max_queue_per_replica``) widens step 3's test for cold
    adapters: a home keeps them until it is that many requests behind the shortest queue (fewer
    loads, longer queues; docs/placement.md has the trade-off). A pick outside the homes is a
    *spill* (:meth:`is_spill`): the router says so to the worker, which loads it on probation.

    A base-model request (``adapter=None``) counts nothing: among replicas with room it prefers
    one with no active adapter, then the shortest queue; ties rotate.
    """

    def __init__(
        self,
        max_queue_per_replica: int = 2,
        *,
        max_homes: int = 4,
        hot_spread: float = 2.0,
        hot_window_requests: int = 1000,
        max_tracked: int = 10_000,
        cold_spill_queue: int | None = None,
    ) -> None:
        if max_queue_per_replica < 1 or max_homes < 1 or hot_spread <= 0:
            raise ValueError(
                "max_queue_per_replica and max_homes must be ≥ 1 and hot_spread > 0, got "
                f"{max_queue_per_replica}, {max_homes}, {hot_spread}"
            )
        self.max_queue_per_replica = max_queue_per_replica
        self.cold_spill_queue = max(max_queue_per_replica, cold_spill_queue or 0)
        self.max_homes = max_homes
        self.hot_spread = hot_spread
        self.hot = HotAdapters(hot_window_requests, max_tracked)
        self._rotor = _Rotor()

    def home_count(self, pool: str, adapter: str, replicas: int) -> int:
        """How many homes ``adapter`` has now in ``pool`` (without counting a request)."""
        share = self.hot.share(pool, adapter)
        return home_count(share, replicas, spread=self.hot_spread, max_homes=self.max_homes)

    def pick(self, replicas: Sequence[ReplicaView], adapter: str | None) -> ReplicaView:
        _require(replicas)
        work = {r.endpoint: queue_seconds(r) for r in replicas}
        least = min(work.values())

        def within(r: ReplicaView, requests: int) -> bool:
            """Less than ``requests`` of its own generations behind the least-loaded replica:
            a queue whose job is nearly done is not a whole request behind (with no running
            job known this is queue depth)."""
            slack = (requests - 1) * r.load_seconds.generate
            return work[r.endpoint] <= least + slack + 1e-9  # float sums of equal depths

        candidates = [r for r in replicas if within(r, self.max_queue_per_replica)]  # ≥ 1
        if adapter is None:
            return self._pick_base(candidates)
        share = self.hot.observe(replicas[0].pool, adapter)
        k = home_count(share, len(replicas), spread=self.hot_spread, max_homes=self.max_homes)
        rank = {e: i for i, e in enumerate(ranking(adapter, [r.endpoint for r in replicas]))}
        at_home = [r for r in replicas if rank[r.endpoint] < k and within(r, self.cold_spill_queue)]
        if at_home:
            warm_elsewhere = [
                r
                for r in candidates
                if rank[r.endpoint] >= k and r.holding(adapter) not in COLD_HOLDINGS
            ]
            candidates = at_home + warm_elsewhere
        scored = ((_score(r, adapter, work[r.endpoint]), rank[r.endpoint], r) for r in candidates)
        return min(scored, key=lambda entry: entry[:2])[2]

    def is_spill(
        self, replicas: Sequence[ReplicaView], adapter: str | None, chosen: ReplicaView
    ) -> bool:
        """Whether ``chosen`` (picked from ``replicas``) is *not* one of ``adapter``'s homes: a
        spill past a busy home. The router tells the worker (``x-loraplex-placement: spill``),
        which then keeps a fresh load only on probation instead of evicting its own adapters."""
        if adapter is None or not replicas:
            return False
        k = self.home_count(replicas[0].pool, adapter, len(replicas))
        return chosen.endpoint not in homes(adapter, [r.endpoint for r in replicas], k)

    def _pick_base(self, candidates: list[ReplicaView]) -> ReplicaView:
        best = min((r.active_adapter is not None, r.queue_depth) for r in candidates)
        return self._rotor.rotate(
            [r for r in candidates if (r.active_adapter is not None, r.queue_depth) == best]
        )


def queue_seconds(replica: ReplicaView) -> float:
    """Expected seconds until ``replica`` is through what it holds now: ``queue_depth``
    generations, less what the running one has done (at most one generation's worth — a job
    running longer than the average still has some left)."""
    generate = replica.load_seconds.generate
    done = min(replica.running_seconds, generate)
    return max(0.0, replica.queue_depth * generate - done)


def _score(replica: ReplicaView, adapter: str, queued_s: float) -> float:
    """Expected seconds until ``adapter``'s request starts computing on ``replica``, whose
    queue takes ``queued_s`` (:func:`queue_seconds`)."""
    return replica.load_seconds.switch(replica.holding(adapter)) + queued_s


def is_spill(
    picker: Picker, replicas: Sequence[ReplicaView], adapter: str | None, chosen: ReplicaView
) -> bool:
    """Whether ``picker`` sent ``adapter`` past its homes to ``chosen`` (only
    :class:`PlacementPicker` has homes: any other picker's choice is never a spill)."""
    return isinstance(picker, PlacementPicker) and picker.is_spill(replicas, adapter, chosen)


STRATEGIES: dict[
    str, type[RoundRobinPicker | LeastLoadedPicker | AdapterAffinityPicker | PlacementPicker]
] = {
    "round_robin": RoundRobinPicker,
    "least_loaded": LeastLoadedPicker,
    "resident_affinity": AdapterAffinityPicker,
    "adapter_affinity": PlacementPicker,
}
