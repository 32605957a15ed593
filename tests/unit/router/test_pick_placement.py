"""Fleet-wide placement: rendezvous homes, hot-adapter shares, and PlacementPicker's rules."""

from __future__ import annotations

from collections import Counter

import pytest
from loraplex.router.homes import HotAdapters, home_count, homes, ranking, weight
from loraplex.router.pick import (
    STRATEGIES,
    AdapterAffinityPicker,
    LoadSeconds,
    PlacementPicker,
    ReplicaView,
    is_spill,
)

ENDPOINTS = [f"http://r{i}" for i in range(8)]


def key(i: int) -> str:
    return f"org/lora-{i}@" + "0" * 40


def view(endpoint: str, depth: int = 0, active_adapter: str | None = None, **tiers) -> ReplicaView:
    return ReplicaView(endpoint, depth, active_adapter, **tiers)


def test_rendezvous_is_stable_and_moves_about_one_nth_on_scale_out() -> None:
    assert weight("a", "x") == weight("a", "x") != weight("a", "y")
    assert ranking(key(1), ENDPOINTS) == ranking(key(1), list(reversed(ENDPOINTS)))
    grown = [*ENDPOINTS, "http://r8"]
    moved = sum(homes(key(i), ENDPOINTS)[0] != homes(key(i), grown)[0] for i in range(4000))
    assert 0.07 < moved / 4000 < 1.5 / 8  # expected 1/9; every mover moved to the newcomer
    assert all(
        homes(key(i), grown)[0] == "http://r8"
        for i in range(4000)
        if homes(key(i), ENDPOINTS)[0] != homes(key(i), grown)[0]
    )
    spread = Counter(homes(key(i), ENDPOINTS)[0] for i in range(4000))
    assert set(spread) == set(ENDPOINTS) and max(spread.values()) < 1.25 * 4000 / 8


def test_home_count_grows_with_share_up_to_the_bound() -> None:
    assert home_count(0.001, 8, spread=2, max_homes=4) == 1
    assert home_count(0.1, 8, spread=2, max_homes=4) == 2  # ceil(1.6)
    assert home_count(0.5, 8, spread=2, max_homes=4) == 4
    assert home_count(1.0, 2, spread=2, max_homes=4) == 2  # never more than the pool
    assert home_count(0.0, 0, spread=2, max_homes=4) == 1


def test_hot_shares_are_decayed_per_request_and_per_pool() -> None:
    hot = HotAdapters(window_requests=10, max_tracked=3)
    for _ in range(10):
        hot.observe("p", "a")
    assert hot.share("p", "a") == pytest.approx(sum(0.9**i for i in range(10)) / 10)
    for _ in range(30):
        hot.observe("p", "b")
    assert hot.share("p", "a") < 0.05 < 0.9 < hot.share("p", "b")
    assert hot.share("q", "a") == 0.0  # another pool counts its own requests
    for name in ("c", "d", "e"):
        hot.observe("p", name)
    assert hot.share("p", "a") == 0.0  # forgotten: at most 3 tracked per pool


def test_a_cold_adapter_goes_to_its_home_even_when_another_replica_is_idler() -> None:
    picker = PlacementPicker(max_queue_per_replica=2)
    adapter = key(7)
    home = homes(adapter, ENDPOINTS)[0]
    replicas = [view(e, depth=1 if e == home else 0) for e in ENDPOINTS]
    assert picker.pick(replicas, adapter).endpoint == home
    # Two behind the shortest queue: bounded load passes the home over, to its next choice.
    replicas = [view(e, depth=2 if e == home else 0) for e in ENDPOINTS]
    assert picker.pick(replicas, adapter).endpoint == ranking(adapter, ENDPOINTS)[1]


def test_a_warm_copy_beats_a_cold_home_by_the_measured_load_seconds() -> None:
    adapter = key(3)
    home, other = ranking(adapter, ENDPOINTS)[:2]
    slow_hub = LoadSeconds(hub=30.0, generate=5.0)
    replicas = [
        view(home, depth=0, load_seconds=slow_hub),
        view(other, depth=0, host_cached_adapters=frozenset({adapter})),
    ]
    assert PlacementPicker().pick(replicas, adapter).endpoint == other
    # Queue wait counts too: a host copy behind one 5 s generation loses to a 1 s disk read.
    replicas = [
        view(
            home,
            depth=0,
            disk_cached_adapters=frozenset({adapter}),
            load_seconds=LoadSeconds(disk=1.0),
        ),
        view(other, depth=1, host_cached_adapters=frozenset({adapter})),
    ]
    assert PlacementPicker().pick(replicas, adapter).endpoint == home


def test_holding_names_every_tier() -> None:
    a = key(1)
    assert view("x", active_adapter=a).holding(a) == "active"
    assert view("x", resident_adapters=frozenset({a})).holding(a) == "resident"
    assert view("x", host_cached_adapters=frozenset({a})).holding(a) == "host"
    assert view("x", disk_cached_adapters=frozenset({a})).holding(a) == "disk"
    assert view("x").holding(a) == "none"
    costs = LoadSeconds.from_state({"hub": 9.0, "slow": 1.0}, 2.0)
    assert (costs.hub, costs.disk, costs.generate) == (9.0, LoadSeconds().disk, 2.0)
    assert costs.switch("active") == 0.0 and costs.switch("none") == 9.0


def test_a_hot_adapter_gets_more_homes_and_spreads_over_them() -> None:
    picker = PlacementPicker(max_queue_per_replica=4, max_homes=3, hot_window_requests=20)
    adapter = key(11)
    first, second, third = ranking(adapter, ENDPOINTS)[:3]
    assert picker.home_count("", adapter, 8) == 1
    for _ in range(20):
        picker.pick([view(e) for e in ENDPOINTS], adapter)
    assert picker.home_count("", adapter, 8) == 3
    # Its first home is busy: a cold second home wins over the idle non-homes.
    busy = [view(e, depth=1 if e == first else 0) for e in ENDPOINTS]
    assert picker.pick(busy, adapter).endpoint == second
    busier = [view(e, depth=1 if e in (first, second) else 0) for e in ENDPOINTS]
    assert picker.pick(busier, adapter).endpoint == third


def test_base_requests_prefer_no_active_adapter_then_shortest_queue() -> None:
    picker = PlacementPicker()
    plain = view("http://plain", depth=1)
    busy = view("http://busy", depth=0, active_adapter=key(1))
    assert picker.pick([busy, plain], None) is plain
    assert picker.hot.share("", key(1)) == 0.0  # base requests count nothing


def test_strategies_keep_the_old_pickers_selectable() -> None:
    assert STRATEGIES["adapter_affinity"] is PlacementPicker
    assert STRATEGIES["resident_affinity"] is AdapterAffinityPicker
    with pytest.raises(ValueError, match="max_homes"):
        PlacementPicker(max_homes=0)


def test_a_pick_past_the_busy_home_is_a_spill_and_a_home_pick_is_not() -> None:
    adapter = key(7)
    home, second = ranking(adapter, ENDPOINTS)[:2]
    picker = PlacementPicker(max_queue_per_replica=2)
    idle = [view(e) for e in ENDPOINTS]
    chosen = picker.pick(idle, adapter)
    assert chosen.endpoint == home and not is_spill(picker, idle, adapter, chosen)
    busy = [view(e, 3 if e == home else 0) for e in ENDPOINTS]
    spilled = picker.pick(busy, adapter)
    assert spilled.endpoint == second  # ties go by the ranking: spill is consistent
    assert is_spill(picker, busy, adapter, spilled)
    assert not is_spill(AdapterAffinityPicker(), busy, adapter, spilled)  # no homes there
    assert not is_spill(picker, busy, None, spilled)


def test_cold_spill_queue_keeps_a_cold_adapter_home_longer() -> None:
    adapter = key(7)
    home = ranking(adapter, ENDPOINTS)[0]
    busy = [view(e, 3 if e == home else 0) for e in ENDPOINTS]
    assert PlacementPicker(cold_spill_queue=4).pick(busy, adapter).endpoint == home
    warm = [
        view(
            e,
            3 if e == home else 0,
            host_cached_adapters=frozenset({adapter}) if i == 5 else frozenset(),
        )
        for i, e in enumerate(ENDPOINTS)
    ]
    chosen = PlacementPicker(cold_spill_queue=4).pick(warm, adapter)
    assert chosen.endpoint == ENDPOINTS[5] != home  # a warm copy with room still competes
