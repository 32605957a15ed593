"""Scenarios: conservation, determinism, and the real router picker and operator policy.

Nothing is mocked: the scenarios run the picker classes of ``loraplex.router.pick`` and the
``ScalingPolicy`` of ``loraplex.operator.scaling``. Two tests swap one of them on purpose to
show that the figures depend on the real object (so a stand-in could not go unnoticed).
"""

from __future__ import annotations

import json

import loraplex.operator.scaling as scaling
import loraplex.router.pick as pick
import pytest

from loraplex.simulate import scenarios
from loraplex.simulate.config import (
    Burst,
    PoolSettings,
    ScalingSettings,
    ScenarioSettings,
    SimConfig,
    SyntheticTraffic,
    TrafficConfig,
)
from loraplex.simulate.results import simulate
from loraplex.simulate.traffic import load_traffic


def small(rate: float = 0.3, seed: int = 7, **changes: object) -> SimConfig:
    traffic = TrafficConfig(
        synthetic=SyntheticTraffic(rate_per_s=rate, adapters=300, zipf_exponent=1.0),
        horizon_s=1800.0,
        seed=seed,
    )
    return SimConfig(traffic=traffic, **changes)


def _assert_conserved(traffic, recorder) -> None:
    done, rejected = set(recorder.latencies), set(recorder.rejected)
    assert not done & rejected, "a request both completed and was rejected"
    assert done | rejected == {r.index for r in traffic.requests}


@pytest.mark.parametrize("name", scenarios.SCENARIOS)
def test_every_request_completes_or_is_rejected(name: str) -> None:
    cfg = small()
    traffic = load_traffic(cfg.traffic)
    recorder = scenarios.RUNNERS[name](traffic, cfg)
    _assert_conserved(traffic, recorder)
    assert not recorder.rejected  # plenty of capacity: nothing is turned away
    assert all(latency > 0 for latency in recorder.latencies.values())


def test_rejections_are_counted_not_lost() -> None:
    """A pool that may not scale times out its held requests; a tiny queue bound sheds load."""
    no_gpus = PoolSettings(scaling=ScalingSettings(min_replicas=0, max_replicas=0))
    cfg = small(default_pool=no_gpus, scenarios=ScenarioSettings(request_timeout_s=60))
    traffic = load_traffic(cfg.traffic)
    recorder = scenarios.run_loraplex(traffic, cfg)
    _assert_conserved(traffic, recorder)
    assert set(recorder.rejected.values()) == {"timeout"} and not recorder.latencies

    burst = SyntheticTraffic(
        rate_per_s=0.3, adapters=20, bursts=(Burst(start_s=600, duration_s=300, multiplier=20),)
    )
    cfg = SimConfig(
        traffic=TrafficConfig(synthetic=burst, horizon_s=1800.0, seed=1),
        scenarios=ScenarioSettings(max_queue_depth=2, after_replicas={"sdxl": 1, "sd15": 1}),
    )
    traffic = load_traffic(cfg.traffic)
    for name in scenarios.SCENARIOS:
        recorder = scenarios.RUNNERS[name](traffic, cfg)
        _assert_conserved(traffic, recorder)
        assert "queue_full" in recorder.rejected.values(), name


def test_same_seed_same_json_other_seed_other_json() -> None:
    first = json.dumps(simulate(small(seed=11)).figures, sort_keys=True)
    assert json.dumps(simulate(small(seed=11)).figures, sort_keys=True) == first
    assert json.dumps(simulate(small(seed=12)).figures, sort_keys=True) != first


def test_loraplex_runs_the_real_picker_and_policy() -> None:
    cfg = small()
    recorder = scenarios.run_loraplex(load_traffic(cfg.traffic), cfg)
    assert recorder.parts, "no pool recorded its parts"
    for picker, policy in recorder.parts.values():
        assert type(picker) is pick.AdapterAffinityPicker
        assert type(policy) is scaling.ScalingPolicy
    after = scenarios.run_after(load_traffic(cfg.traffic), cfg)
    assert {type(p) for p, _ in after.parts.values()} == {pick.RoundRobinPicker}


def test_swapping_the_affinity_picker_changes_the_figures(monkeypatch) -> None:
    cfg = small(rate=0.5)
    real = simulate(cfg, scenarios=("loraplex",)).figures["loraplex"]
    monkeypatch.setattr(scenarios, "AdapterAffinityPicker", lambda _bound: pick.RoundRobinPicker())
    swapped = simulate(cfg, scenarios=("loraplex",)).figures["loraplex"]
    assert swapped["loads_per_request"] > real["loads_per_request"] * 1.1
    assert swapped["switch_tiers"] != real["switch_tiers"]


class _FixedPolicy:
    """A stand-in that ignores the traffic: what a copied-and-drifted policy could look like."""

    def __init__(self, spec) -> None:
        self.spec = spec

    def decide(self, observation):
        return scaling.Decision(replicas=1, reason="fixed")


def test_swapping_the_scaling_policy_changes_the_figures(monkeypatch) -> None:
    cfg = small(rate=0.5)
    real = simulate(cfg, scenarios=("loraplex",)).figures["loraplex"]
    monkeypatch.setattr(scenarios, "ScalingPolicy", _FixedPolicy)
    fixed = simulate(cfg, scenarios=("loraplex",)).figures["loraplex"]
    assert fixed["replicas_over_time"] != real["replicas_over_time"]
    assert fixed["p95_s"] > real["p95_s"]


def test_operator_loop_feeds_the_policy_what_the_operator_measures(monkeypatch) -> None:
    """Every tick the policy sees the operator's CounterRates over the router's counter:
    requests of its base *answered* in the last ``rate_window_s`` (the router counts when it
    answers), and pending only with no ready replica."""
    seen: list = []
    original = scaling.ScalingPolicy.decide

    def spy(self, observation):
        seen.append((self, observation))
        return original(self, observation)

    monkeypatch.setattr(scaling.ScalingPolicy, "decide", spy)
    cfg = small()
    traffic = load_traffic(cfg.traffic)
    recorder = scenarios.run_loraplex(traffic, cfg)
    base_of = {id(policy): base for base, (_, policy) in recorder.parts.items()}
    assert not recorder.rejected  # so every request has an answer time below
    answered_at = {r.index: r.time + recorder.latencies[r.index] for r in traffic.requests}
    interval, window = cfg.scenarios.operator_interval_s, cfg.scenarios.rate_window_s
    assert seen and all(o.now % interval == pytest.approx(0, abs=1e-6) for _, o in seen)
    checked = 0
    for policy, o in seen:
        if window + interval <= o.now <= traffic.horizon_s:
            base = base_of[id(policy)]
            answered = sum(
                1
                for r in traffic.requests
                if r.base == base and o.now - window < answered_at[r.index] <= o.now
            )
            assert o.rate == pytest.approx(answered / window)
            checked += 1
    assert checked > 100
    assert any(o.pending > 0 for _, o in seen)  # min_replicas=0: the first requests are held


def test_operator_timing_defaults_are_the_operators() -> None:
    from loraplex.operator.settings import OperatorSettings

    operator = OperatorSettings()
    knobs = ScenarioSettings()
    assert (knobs.operator_interval_s, knobs.rate_window_s) == (
        operator.interval_s,
        operator.rate_window_s,
    )
