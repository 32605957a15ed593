"""Scenarios: conservation, determinism, and the real router, operator and worker policies.

Nothing is mocked: the scenarios run the picker classes of ``loraplex.router.pick``, the
``ScalingPolicy`` of ``loraplex.operator.scaling``, and the worker's ``AdapterCache`` and
``GroupingQueue``. Some tests swap or spy on one of them on purpose to show that the figures
depend on the real object (so a stand-in could not go unnoticed).
"""

from __future__ import annotations

import json

import loraplex.operator.scaling as scaling
import loraplex.router.pick as pick
import loraplex.worker.adapters as worker_adapters
import loraplex.worker.queue as worker_queue
import pytest
import simpy

from loraplex.simulate import scenarios
from loraplex.simulate.adapters import SingleAdapterSlot
from loraplex.simulate.config import (
    Burst,
    PoolSettings,
    ScalingSettings,
    ScenarioSettings,
    SimConfig,
    SyntheticTraffic,
    TrafficConfig,
)
from loraplex.simulate.fleet import Recorder
from loraplex.simulate.results import simulate
from loraplex.simulate.traffic import Request, load_traffic


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
        assert type(picker) is pick.PlacementPicker
        assert type(policy) is scaling.ScalingPolicy
    after = scenarios.run_after(load_traffic(cfg.traffic), cfg)
    assert {type(p) for p, _ in after.parts.values()} == {pick.RoundRobinPicker}


def test_swapping_the_affinity_picker_changes_the_figures(monkeypatch) -> None:
    cfg = small(rate=0.5)
    real = simulate(cfg, scenarios=("loraplex",)).figures["loraplex"]
    monkeypatch.setattr(scenarios, "PlacementPicker", lambda *_a, **_k: pick.RoundRobinPicker())
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


def test_worker_and_router_defaults_are_theirs() -> None:
    from loraplex.router.settings import RouterSettings
    from loraplex.worker.settings import WorkerSettings

    assert ScenarioSettings().router_attempts == RouterSettings.model_fields["attempts"].default
    assert PoolSettings().max_overtake == WorkerSettings.model_fields["max_overtake"].default


def test_loraplex_replicas_run_the_workers_cache_and_queue(monkeypatch) -> None:
    """The simulated replicas call the worker's own classes: no copy could drift unseen."""
    calls = {"lookup": 0, "admit": 0, "pop": 0}

    def spying(cls, name):
        original = getattr(cls, name)

        def spy(self, *args, **kwargs):
            calls[name] += 1
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, spy)

    spying(worker_adapters.AdapterCache, "lookup")
    spying(worker_adapters.AdapterCache, "admit")
    spying(worker_queue.GroupingQueue, "pop")
    cfg = small()
    traffic = load_traffic(cfg.traffic)
    recorder = scenarios.run_loraplex(traffic, cfg)
    switched = sum(1 for tier in recorder.tiers.values() if tier != "active")
    assert calls["lookup"] >= switched > 0  # every switch away from the active adapter
    assert (
        0
        < calls["admit"]
        == len(recorder.loaded) - sum(1 for i in recorder.loaded if recorder.tiers[i] == "host")
    )
    assert calls["pop"] >= len(recorder.latencies)


def test_the_workers_overtaking_saves_switches() -> None:
    """Three replicas kept ~95 % busy over 30 adapters: queues often hold another request for
    the active adapter, and the worker's GroupingQueue runs it next. (The placement picker
    already sends an adapter's requests to its homes, so it takes a fuller queue than the
    previous picker's ~85 % for overtaking to show.)"""
    traffic_cfg = TrafficConfig(
        synthetic=SyntheticTraffic(rate_per_s=0.33, adapters=30, zipf_exponent=1.0),
        horizon_s=1800.0,
        seed=3,
    )
    pinned = ScalingSettings(min_replicas=3, max_replicas=3)

    def active_share(max_overtake: int) -> float:
        pool = PoolSettings(max_overtake=max_overtake, scaling=pinned)
        figures = simulate(
            SimConfig(traffic=traffic_cfg, default_pool=pool), scenarios=("loraplex",)
        )
        tiers = figures.figures["loraplex"]["switch_tiers"]
        return tiers.get("active", 0) / sum(tiers.values())

    assert active_share(4) > active_share(0) + 0.03  # measured: 0.22 vs 0.15


class _FirstPicker:
    """Always the first view offered: sends requests to a full queue on purpose."""

    def pick(self, views, adapter):
        return views[0]


@pytest.mark.parametrize(("attempts", "rejected"), [(1, [2, 3, 4]), (3, [4])])
def test_a_full_queue_is_retried_on_another_replica(attempts: int, rejected: list[int]) -> None:
    """A worker's 429 (its queue at capacity) sends the request to a replica not yet tried,
    up to the router's ``attempts``; after that it is rejected."""
    env = simpy.Environment()
    cfg = SimConfig(scenarios=ScenarioSettings(max_queue_depth=1, router_attempts=attempts))
    recorder = Recorder(total=5, done=env.event())
    pool = scenarios.Pool(
        env,
        "p",
        _FirstPicker(),
        recorder,
        cfg,
        lambda: SingleAdapterSlot(0, 0),
        10.0,
        max_overtake=0,
    )
    for _ in range(2):
        pool.add_replica(0.0)

    def arrive():
        yield env.timeout(1.0)
        pool.submit(Request(0, env.now, "a", "sdxl", "a"))  # starts on the first replica
        for i in range(1, 5):
            yield env.timeout(0.1)  # one waits on the first, the next starts on the second…
            pool.submit(Request(i, env.now, "a", "sdxl", "a"))

    env.process(arrive())
    env.run(until=100)
    assert sorted(recorder.rejected) == rejected
    assert set(recorder.rejected.values()) <= {"queue_full"}
