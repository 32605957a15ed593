"""Run the scenarios and turn their recorders into figures: JSON, a stdout table, a sizing table.

Definitions (also in docs/simulate.md):

* latency — arrival at the router to the last byte of the image (queueing, warm-up, adapter
  switch and inference), completed requests only; rejected requests are counted apart.
* cold adapter — an adapter requested at most ``cold_requests_per_hour`` on average over the
  run, or only once: the long tail, whose requests meet a cold start or an adapter load.
* measured window — after ``warmup_s`` (simulated, not measured, so the fleet is past its
  start-up), for ``horizon_s``; every figure below covers requests arriving in it.
* GPU-hours — every replica from the moment it is asked for (pod start) until it stops,
  clipped to the measured window; cost = GPU-hours × ``gpu_cost_per_hour``.
* loads per request — adapter weight copies onto a GPU (host, disk or Hub tier; a dedicated
  deployment's spawn) divided by requests.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from loraplex.simulate.config import SimConfig
from loraplex.simulate.fleet import Recorder
from loraplex.simulate.scenarios import RUNNERS, SCENARIOS
from loraplex.simulate.static import static_at_same_p95
from loraplex.simulate.traffic import Traffic, cold_adapters, distinct_per_window, load_traffic

TIMELINE_STEP_S = 60.0  # resolution of replicas_over_time in the JSON


@dataclass(frozen=True)
class Run:
    traffic: Traffic
    cold: frozenset[str]
    recorders: dict[str, Recorder]
    figures: dict


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def _gpu_seconds(recorder: Recorder, start_s: float, end_s: float) -> float:
    spans = recorder.gpu_spans
    return sum(max(0.0, min(stop, end_s) - max(start, start_s)) for start, stop in spans)


def _timeline(samples: list[tuple[float, int]]) -> list[list[float]]:
    out: list[list[float]] = []
    for t, alive in samples:
        if not out or t - out[-1][0] >= TIMELINE_STEP_S:
            out.append([round(t, 3), alive])
    return out


def summarize(recorder: Recorder, traffic: Traffic, cold: frozenset[str], cfg: SimConfig) -> dict:
    """One scenario's figures."""
    requests = traffic.measured
    completed = [recorder.latencies[r.index] for r in requests if r.index in recorder.latencies]
    cold_latencies = [
        recorder.latencies[r.index]
        for r in requests
        if r.adapter in cold and r.index in recorder.latencies
    ]
    start, end = traffic.measure_from_s, traffic.horizon_s
    samples = [s for s in recorder.samples if start <= s[0] <= end]
    alive = [s[1] for s in samples] or [0]
    gpu_hours = _gpu_seconds(recorder, start, end) / 3600.0
    measured = {r.index for r in requests}
    rejected = [reason for index, reason in recorder.rejected.items() if index in measured]
    return {
        "requests": len(requests),
        "completed": len(completed),
        "rejected": len(rejected),
        "rejected_by_reason": dict(sorted(Counter(rejected).items())),
        "p50_s": _pct(completed, 50),
        "p95_s": _pct(completed, 95),
        "p99_s": _pct(completed, 99),
        "mean_s": round(float(np.mean(completed)), 3) if completed else None,
        "cold_requests": sum(1 for r in requests if r.adapter in cold),
        "cold_p50_s": _pct(cold_latencies, 50),
        "cold_p95_s": _pct(cold_latencies, 95),
        "cold_p99_s": _pct(cold_latencies, 99),
        "gpu_hours": round(gpu_hours, 3),
        "cost_usd": round(gpu_hours * cfg.hardware.gpu_cost_per_hour, 2),
        "loads_per_request": round(len(measured & recorder.loaded) / len(requests), 4)
        if requests
        else 0.0,
        "switch_tiers": dict(
            sorted(Counter(recorder.tiers[i] for i in measured if i in recorder.tiers).items())
        ),
        "peak_replicas": max(alive),
        "mean_replicas": round(float(np.mean(alive)), 2),
        "replicas_over_time": _timeline(samples),
    }


def simulate(
    cfg: SimConfig, rate_multiplier: float = 1.0, scenarios: tuple[str, ...] = SCENARIOS
) -> Run:
    """Generate (or read) the traffic once and replay it through every scenario."""
    traffic = load_traffic(cfg.traffic, rate_multiplier)
    cold = cold_adapters(traffic, cfg.scenarios.cold_requests_per_hour)
    recorders = {name: RUNNERS[name](traffic, cfg) for name in scenarios}
    measured = traffic.measured
    figures: dict = {
        "traffic": {
            "requests": len(measured),
            "horizon_s": traffic.measured_s,
            "warmup_s": traffic.measure_from_s,
            "rate_per_s": round(len(measured) / traffic.measured_s, 4),
            "bases": {b: sum(r.base == b for r in measured) for b in traffic.bases},
            "adapters_requested": len({r.adapter for r in measured if r.adapter}),
            "distinct_models_per_2min": round(distinct_per_window(traffic, 120.0), 2),
            "cold_adapters": len(cold),
        },
    }
    for name, recorder in recorders.items():
        figures[name] = summarize(recorder, traffic, cold, cfg)
    lora = figures.get("loraplex")
    if cfg.scenarios.static_search and lora is not None and lora["p95_s"] is not None:
        target = cfg.scenarios.static_target_p95_s or lora["p95_s"]
        hours = traffic.measured_s / 3600.0
        static = static_at_same_p95(traffic, cfg, target, lambda n: n * hours)
        if static["gpu_hours"]:
            static["loraplex_over_static_gpu_hours"] = round(
                lora["gpu_hours"] / static["gpu_hours"], 3
            )
        figures["static_at_same_p95"] = static
    return Run(traffic, cold, recorders, figures)


SIZING_KEYS = ("p50_s", "p95_s", "cold_p50_s", "gpu_hours", "peak_replicas", "mean_replicas")


def scaled_limits(cfg: SimConfig, multiplier: float) -> SimConfig:
    """``multiplier``× the traffic gets ``multiplier``× the replica limits a planner set for 1×
    (pool ``max_replicas``, fixed ``after_replicas``), over ``sizing_horizon_s``."""
    data = cfg.model_dump()
    data["traffic"]["horizon_s"] = cfg.sizing_horizon_s
    for pool in [data["default_pool"], *data["pools"].values()]:
        pool["scaling"]["max_replicas"] = math.ceil(pool["scaling"]["max_replicas"] * multiplier)
    after = data["scenarios"]["after_replicas"]
    data["scenarios"]["after_replicas"] = {b: math.ceil(n * multiplier) for b, n in after.items()}
    return SimConfig.model_validate(data)


def sizing(cfg: SimConfig, multipliers: tuple[float, ...]) -> list[dict]:
    """Replay ``multiplier``× the traffic over ``sizing_horizon_s``: what each setup needs."""
    rows = []
    for multiplier in multipliers:
        run = simulate(scaled_limits(cfg, multiplier), multiplier)
        hours = run.traffic.measured_s / 3600.0
        row: dict = {
            "traffic_multiplier": multiplier,
            "rate_per_s": run.figures["traffic"]["rate_per_s"],
        }
        for name in SCENARIOS:
            fig = run.figures[name]
            row[name] = {key: fig[key] for key in SIZING_KEYS}
            row[name]["gpus_per_hour"] = round(fig["gpu_hours"] / hours, 2)
            row[name]["cost_usd_per_hour"] = round(fig["cost_usd"] / hours, 2)
            row[name]["rejected"] = fig["rejected"]
        rows.append(row)
    return rows


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def format_table(figures: dict) -> str:
    """The stdout table: one row per scenario, then the sizing rows if any."""
    columns = [
        ("p50 s", "p50_s"),
        ("p95 s", "p95_s"),
        ("p99 s", "p99_s"),
        ("cold p50", "cold_p50_s"),
        ("cold p95", "cold_p95_s"),
        ("GPU-h", "gpu_hours"),
        ("cost $", "cost_usd"),
        ("loads/req", "loads_per_request"),
        ("peak GPUs", "peak_replicas"),
        ("mean GPUs", "mean_replicas"),
        ("rejected", "rejected"),
    ]
    t = figures["traffic"]
    lines = [
        f"{t['requests']} requests over {t['horizon_s'] / 3600:.2f} h "
        f"({t['rate_per_s']} req/s, {t['adapters_requested']} adapters, "
        f"{t['distinct_models_per_2min']} distinct per 2 min, {t['cold_adapters']} cold)",
        f"{'scenario':<10}" + "".join(f"{head:>11}" for head, _ in columns),
    ]
    for name in SCENARIOS:
        if name in figures:
            lines.append(
                f"{name:<10}" + "".join(f"{_cell(figures[name][k]):>11}" for _, k in columns)
            )
    static = figures.get("static_at_same_p95")
    if static is not None:
        sizes = ", ".join(f"{base} {n}" for base, n in static["replicas"].items())
        lines.append(
            f"static pools at the same p95 ({static['target_p95_s']:.2f} s): {sizes} replicas, "
            f"{_cell(static['gpu_hours'])} GPU-h, p95 {_cell(static['p95_s'])} s"
        )
    for row in figures.get("sizing", []):
        lines.append("")
        lines.append(f"sizing ×{row['traffic_multiplier']:g} ({row['rate_per_s']} req/s):")
        heads = ("p50 s", "p95 s", "cold p50", "GPUs/h", "$ / h", "peak GPUs", "rejected")
        keys = ("p50_s", "p95_s", "cold_p50_s", "gpus_per_hour", "cost_usd_per_hour")
        keys += ("peak_replicas", "rejected")
        lines.append(f"{'scenario':<10}" + "".join(f"{h:>11}" for h in heads))
        for name in SCENARIOS:
            lines.append(f"{name:<10}" + "".join(f"{_cell(row[name][k]):>11}" for k in keys))
    return "\n".join(lines)
