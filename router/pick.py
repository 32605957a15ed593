"""Replica picking: which worker of a pool gets a request. Pure code — no I/O, no clock.

The router keeps a :class:`ReplicaView` per ready worker (from ``GET /v1/state`` polls and the
headers of each worker answer) and asks a :class:`Picker` for one. Strategies are small
classes with the algorithm in their docstring, like Ray Serve's request routers; the
simulator imports them unchanged, so the shape of this module is a contract.

Adapter keys are ``"<repo>@<commit>"`` strings, as in :class:`loraplex.shared.contract.WorkerState`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


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
    """Least-loaded: the replica with the smallest ``queue_depth``; ties rotate round-robin.

    Ignores adapters entirely — best latency when switches are free, worst cache behaviour.
    """

    def __init__(self) -> None:
        self._rotor = _Rotor()

    def pick(self, replicas: Sequence[ReplicaView], adapter: str | None) -> ReplicaView:
        _require(replicas)
        lowest = min(r.queue_depth for r in replicas)
        return self._rotor.rotate([r for r in replicas if r.queue_depth == lowest])


class AdapterAffinityPicker:
    """Adapter affinity with bounded load — the default.

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


STRATEGIES: dict[str, type[RoundRobinPicker | LeastLoadedPicker | AdapterAffinityPicker]] = {
    "round_robin": RoundRobinPicker,
    "least_loaded": LeastLoadedPicker,
    "adapter_affinity": AdapterAffinityPicker,
}
