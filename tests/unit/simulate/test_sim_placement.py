"""Size-priced tiers, the workers' measured load seconds, and the static pool at the same p95.

Nothing is mocked: the replicas run the worker's AdapterCache and LoadCosts, the pools the
router's PlacementPicker; the static search runs the same pools at fixed sizes.
"""

from __future__ import annotations

import json

import pytest

from loraplex.simulate import scenarios, static
from loraplex.simulate.adapters import WorkerAdapters
from loraplex.simulate.cli import main
from loraplex.simulate.config import (
    DIURNAL,
    HardwareProfile,
    PoolSettings,
    ScalingSettings,
    ScenarioSettings,
    SimConfig,
    SyntheticTraffic,
    TierBandwidth,
    TrafficConfig,
)
from loraplex.simulate.results import simulate
from loraplex.simulate.traffic import load_traffic

MB = 1_000_000


def test_tier_seconds_follow_the_adapters_size() -> None:
    tiers = TierBandwidth(hub_mb_per_s=100, hub_latency_s=0.5, disk_mb_per_s=1000)
    small, big = (tiers.seconds("hub", n * MB) for n in (50, 200))
    assert big > small > tiers.seconds("disk", 50 * MB) > tiers.seconds("host", 50 * MB)
    assert tiers.seconds("host", 200 * MB) == pytest.approx(4 * tiers.seconds("host", 50 * MB))
    assert tiers.seconds("resident", 200 * MB) == tiers.resident_s
    assert big - small == pytest.approx(
        150 / 100 + 150 / 1000 + 150 * tiers.convert_s_per_mb + 0.015
    )
    hw = HardwareProfile(tiers=tiers, adapter_mb={"sdxl": 200.0})
    assert hw.hub_load_s("sdxl") == pytest.approx(big)
    assert HardwareProfile().hub_load_s("sdxl") == HardwareProfile().switch_s.hub  # flat preset


def test_sized_worker_tiers_count_bytes() -> None:
    cache = WorkerAdapters.sized(
        TierBandwidth().seconds,
        slots=1,
        host_bytes=250 * MB,
        disk=10_000 * MB,
        nbytes_of=lambda _a: 100 * MB,
    )
    for name in ("a", "b", "c"):
        cache.switch(name)
    assert cache.host == ("c", "b")  # 3 × 100 MB > 250 MB
    switch = cache.switch("a")
    assert (switch.tier, switch.nbytes) == ("disk", 100 * MB)
    assert cache.disk_names() == frozenset({"a", "b", "c"})


def _small(**scenario: object) -> SimConfig:
    return SimConfig(
        traffic=TrafficConfig(
            synthetic=SyntheticTraffic(rate_per_s=0.3, adapters=200, zipf_exponent=1.1),
            horizon_s=1800.0,
            warmup_s=300.0,
            seed=5,
        ),
        hardware=HardwareProfile(tiers=TierBandwidth()),
        default_pool=PoolSettings(host_cache_gb=2.0, scaling=ScalingSettings(min_replicas=1)),
        scenarios=ScenarioSettings(**scenario),
    )


def test_picker_prices_from_the_load_seconds_the_simulated_workers_measured(
    monkeypatch,
) -> None:
    cfg = _small()
    traffic = load_traffic(cfg.traffic)
    seen = []

    class Spy(scenarios.PlacementPicker):
        def pick(self, replicas, adapter):
            seen.extend(replicas)
            return super().pick(replicas, adapter)

    monkeypatch.setattr(scenarios, "PlacementPicker", Spy)
    scenarios.run_loraplex(traffic, cfg)
    hub = cfg.hardware.hub_load_s("sdxl")
    measured = [v.load_seconds.hub for v in seen if v.pool == "loraplex/sdxl"]
    assert measured[0] == 5.0  # before its first Hub load a replica shows the default
    assert measured[-1] == pytest.approx(hub, rel=1e-3)  # then what it measured
    assert any(v.disk_cached_adapters for v in seen)


def test_static_search_finds_the_smallest_pool_meeting_the_target() -> None:
    cfg = _small()
    traffic = load_traffic(cfg.traffic)
    target = 14.0
    n, latencies = static.smallest_pool(traffic, cfg, "sdxl", target)
    assert n is not None and n >= 2 and latencies
    own = static.base_traffic(traffic, "sdxl")
    fewer, rejected = static._latencies(static.run_static(own, cfg, {"sdxl": n - 1}), own)
    assert not static._meets(fewer, rejected, target)  # one replica less misses it


def test_static_at_same_p95_is_reported_next_to_loraplex() -> None:
    figures = simulate(_small(static_search=True), scenarios=("loraplex",)).figures
    static_fig, lora = figures["static_at_same_p95"], figures["loraplex"]
    assert static_fig["found"] and static_fig["target_p95_s"] == lora["p95_s"]
    assert static_fig["p95_s"] <= lora["p95_s"]
    assert static_fig["gpu_hours"] == pytest.approx(sum(static_fig["replicas"].values()) * 0.5)
    assert static_fig["loraplex_over_static_gpu_hours"] == pytest.approx(
        lora["gpu_hours"] / static_fig["gpu_hours"], abs=1e-3
    )


def test_diurnal_preset_is_the_issues_day() -> None:
    synthetic = DIURNAL.traffic.synthetic
    assert DIURNAL.traffic.horizon_s == 86_400 and synthetic.diurnal_amplitude == 0.8
    assert (synthetic.adapters, synthetic.zipf_exponent) == (2500, 1.1)
    assert synthetic.base_share == {"sdxl": 0.92, "sd15": 0.08}
    assert DIURNAL.scenarios.static_search and DIURNAL.hardware.tiers is not None


def test_cli_diurnal_json_has_the_static_pool_at_the_same_p95(capsys) -> None:
    """The preset through the CLI, shortened to an hour of a smaller catalogue."""
    args = ["--scenario", "diurnal", "--json", "--horizon", "3600", "--warmup", "300"]
    assert main([*args, "--adapters", "300"]) == 0
    figures = json.loads(capsys.readouterr().out)
    static_fig = figures["static_at_same_p95"]
    assert static_fig["found"] and set(static_fig["replicas"]) == {"sdxl", "sd15"}
    assert static_fig["target_p95_s"] == figures["loraplex"]["p95_s"] >= static_fig["p95_s"]
