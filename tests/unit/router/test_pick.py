"""Replica picking strategies: pure functions of the replica views."""

from __future__ import annotations

from collections import Counter

import pytest
from loraplex.router.pick import (
    AdapterAffinityPicker,
    LeastLoadedPicker,
    NoReplicaError,
    ReplicaView,
    RoundRobinPicker,
)

A = "org/a@" + "1" * 40
B = "org/b@" + "2" * 40


def view(name: str, depth: int = 0, active: str | None = None, resident=(), host=()):
    return ReplicaView(
        endpoint=f"http://{name}",
        queue_depth=depth,
        active_adapter=active,
        resident_adapters=frozenset(resident),
        host_cached_adapters=frozenset(host),
    )


@pytest.mark.parametrize(
    "picker", [RoundRobinPicker(), LeastLoadedPicker(), AdapterAffinityPicker()]
)
def test_empty_pool_raises_a_clear_error(picker) -> None:
    with pytest.raises(NoReplicaError, match="no ready replica"):
        picker.pick([], A)


def test_round_robin_cycles_through_every_replica() -> None:
    replicas = [view("r0", 5), view("r1"), view("r2")]
    picker = RoundRobinPicker()
    got = [picker.pick(replicas, A).endpoint for _ in range(6)]
    assert got == ["http://r0", "http://r1", "http://r2"] * 2


def test_least_loaded_picks_shortest_queue_and_rotates_ties() -> None:
    picker = LeastLoadedPicker()
    replicas = [view("r0", 3, active=A), view("r1", 1), view("r2", 1)]
    got = {picker.pick(replicas, A).endpoint for _ in range(4)}
    assert got == {"http://r1", "http://r2"}


def test_affinity_prefers_active_then_resident_then_host_then_cold() -> None:
    picker = AdapterAffinityPicker(max_queue_per_replica=4)
    cold = view("cold", 0)
    host = view("host", 1, host=[A])
    resident = view("resident", 1, resident=[A])
    active = view("active", 1, active=A)
    assert picker.pick([cold, host, resident, active], A) is active
    assert picker.pick([cold, host, resident], A) is resident
    assert picker.pick([cold, host], A) is host
    assert picker.pick([cold, view("busy", 2)], A) is cold


def test_affinity_spreads_a_hot_adapter_once_its_replica_is_full() -> None:
    picker = AdapterAffinityPicker(max_queue_per_replica=2)
    full = view("full", 2, active=A)
    idle = view("idle", 0, active=B)
    assert picker.pick([full, idle], A) is idle
    # Below the bound, affinity wins over a shorter queue elsewhere.
    assert picker.pick([view("warm", 1, active=A), idle], A).endpoint == "http://warm"


def test_affinity_bound_is_relative_to_the_shortest_queue() -> None:
    picker = AdapterAffinityPicker(max_queue_per_replica=2)
    cold_short = view("cold", 3)
    # Far beyond the shortest queue: the least-loaded replica takes it.
    assert picker.pick([view("warm", 9, active=A), cold_short], A) is cold_short
    # Under heavy load every queue is long; within the bound of the shortest, warm still wins
    # (an absolute bound of 2 would have dropped affinity here).
    assert picker.pick([view("warm", 4, active=A), cold_short], A).endpoint == "http://warm"
    assert picker.pick([view("w", 3, resident=[A]), cold_short], A).endpoint == "http://w"


def test_affinity_base_request_prefers_replica_without_active_adapter() -> None:
    picker = AdapterAffinityPicker()
    plain = view("plain", 1)
    with_adapter = view("lora", 0, active=A)
    assert picker.pick([with_adapter, plain], None) is plain


def test_affinity_rotates_between_equal_replicas() -> None:
    picker = AdapterAffinityPicker()
    replicas = [view("r0"), view("r1"), view("r2")]
    counts = Counter(picker.pick(replicas, A).endpoint for _ in range(30))
    assert counts == Counter({"http://r0": 10, "http://r1": 10, "http://r2": 10})


def test_affinity_rejects_a_non_positive_bound() -> None:
    with pytest.raises(ValueError, match="max_queue_per_replica"):
        AdapterAffinityPicker(max_queue_per_replica=0)


def test_views_are_frozen_and_hashable() -> None:
    # Frozen dataclass: views can key dicts/sets in the simulator.
    assert len({view("r0"), view("r0")}) == 1
