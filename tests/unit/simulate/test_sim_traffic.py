"""Traffic: the Zipf generator, bursts, trace files (CSV and JSONL) and their errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from loraplex.simulate.config import Burst, SyntheticTraffic, TrafficConfig
from loraplex.simulate.traffic import (
    TraceError,
    cold_adapters,
    distinct_per_window,
    load_trace,
    load_traffic,
    synthesize,
)


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    spec = SyntheticTraffic(rate_per_s=1.0, adapters=100)
    first, again = synthesize(spec, 600, seed=3), synthesize(spec, 600, seed=3)
    assert first == again
    assert synthesize(spec, 600, seed=4).requests != first.requests


def test_rate_zipf_and_base_share() -> None:
    spec = SyntheticTraffic(
        rate_per_s=5.0, adapters=500, zipf_exponent=1.2, base_share={"a": 0.9, "b": 0.1}
    )
    traffic = synthesize(spec, 2000, seed=1)
    n = len(traffic.requests)
    assert 0.93 * 10_000 < n < 1.07 * 10_000
    times = [r.time for r in traffic.requests]
    assert times == sorted(times) and times[-1] < 2000
    by_base = Counter(r.base for r in traffic.requests)
    assert 0.8 < by_base["a"] / n < 0.97  # adapters' bases are drawn by share
    counts = Counter(r.adapter for r in traffic.requests).most_common()
    # Zipf(1.2): the most popular adapter alone is ~15% of traffic, the 10th ~1%.
    assert counts[0][1] / n > 0.08 and counts[0][1] > 5 * counts[9][1]
    assert all(r.adapter.startswith(f"lora/{r.base}-") for r in traffic.requests)


def test_burst_multiplies_the_rate_inside_its_window() -> None:
    spec = SyntheticTraffic(
        rate_per_s=1.0, adapters=10, bursts=(Burst(start_s=1000, duration_s=500, multiplier=4),)
    )
    traffic = synthesize(spec, 2000, seed=0)
    inside = sum(1000 <= r.time < 1500 for r in traffic.requests)
    before = sum(r.time < 500 for r in traffic.requests)
    assert inside > 3 * before


def test_base_requests_have_no_adapter() -> None:
    spec = SyntheticTraffic(rate_per_s=2.0, adapters=10, base_request_share=0.5)
    traffic = synthesize(spec, 500, seed=0)
    bases = [r for r in traffic.requests if r.adapter is None]
    assert 0.35 < len(bases) / len(traffic.requests) < 0.65
    assert all(r.model_id == r.base for r in bases)


def test_csv_and_jsonl_traces(tmp_path: Path) -> None:
    csv_path = tmp_path / "t.csv"
    csv_path.write_text(
        "time,model_id,base_model\n5,me/lora-b,sdxl\n1.5,me/lora-a,sdxl\n2,sdxl,sdxl\n"
    )
    traffic = load_trace(csv_path, None)
    assert [r.model_id for r in traffic.requests] == ["me/lora-a", "sdxl", "me/lora-b"]
    assert traffic.requests[1].adapter is None and traffic.horizon_s == 5.0
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(
        json.dumps({"time": 3, "model_id": "me/x"})
        + "\n\n"
        + json.dumps({"time": 1, "model_id": "me/y"})
    )
    traffic = load_trace(jsonl, "sd15")
    assert [(r.model_id, r.base) for r in traffic.requests] == [("me/y", "sd15"), ("me/x", "sd15")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time,model_id\n1,me/a\n", "no base_model"),
        ("time,model\n1,me/a\n", "needs the fields"),
        ("time,model_id,base_model\nsoon,me/a,sdxl\n", "not a number"),
        ("time,model_id,base_model\n-1,me/a,sdxl\n", "seconds ≥ 0"),
        ("time,model_id,base_model\n", "no requests"),
    ],
)
def test_bad_trace_says_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(TraceError, match=message):
        load_trace(path, None)


def test_cold_adapters_and_distinct_per_window(tmp_path: Path) -> None:
    rows = ["time,model_id,base_model"] + [f"{t},me/hot,b" for t in range(0, 7200, 60)]
    rows += ["100,me/rare,b", "7199,me/rare2,b"]
    path = tmp_path / "t.csv"
    path.write_text("\n".join(rows) + "\n")
    traffic = load_trace(path, None)
    assert cold_adapters(traffic, max_per_hour=1.0) == {"me/rare", "me/rare2"}
    # 59 whole windows in 7,199 s (the partial last one is dropped): the hot adapter is in
    # every one, me/rare in one, me/rare2 only in the partial window.
    assert distinct_per_window(traffic, 120.0) == pytest.approx(60 / 59)


def test_a_trace_replayed_faster_keeps_its_warm_up_in_proportion(tmp_path: Path) -> None:
    """Sizing at 100× replays a 2 h trace in 72 s: its 600 s warm-up must shrink too."""
    trace = tmp_path / "two-hours.csv"
    rows = "".join(f"{t},me/lora-{t % 7},sdxl\n" for t in range(0, 7200, 10))
    trace.write_text("time,model_id,base_model\n" + rows)
    cfg = TrafficConfig(trace=trace, warmup_s=600.0)
    normal = load_traffic(cfg)
    fast = load_traffic(cfg, rate_multiplier=100.0)
    assert len(fast.requests) == len(normal.requests)
    assert fast.horizon_s == pytest.approx(normal.horizon_s / 100, rel=0.01)
