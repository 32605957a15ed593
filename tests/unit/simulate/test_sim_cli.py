"""The ``loraplex simulate`` command: flags, config files, traces, plots and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loraplex.cli import main as loraplex_main
from loraplex.simulate.cli import main

FAST = ["--rate", "0.2", "--adapters", "50", "--horizon", "900", "--no-sizing"]


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_dispatcher_runs_simulate_and_prints_a_table(capsys) -> None:
    assert loraplex_main(["simulate", *FAST]) == 0
    out = capsys.readouterr().out
    for name in ("before", "after", "loraplex", "cold p50", "GPU-h", "loads/req"):
        assert name in out


def test_flags_reach_the_simulation(capsys) -> None:
    assert main([*FAST, "--json", "--seed", "5"]) == 0
    figures = _json(capsys)
    assert figures["seed"] == 5 and figures["traffic"]["horizon_s"] == 900
    assert figures["traffic"]["adapters_requested"] <= 50
    assert 0.1 < figures["traffic"]["rate_per_s"] < 0.3


def test_pool_flags_reach_the_loraplex_pools(capsys) -> None:
    assert main([*FAST, "--json", "--rate", "1.0", "--max-replicas", "1"]) == 0
    capped = _json(capsys)["loraplex"]
    assert capped["peak_replicas"] <= 2  # one per base (sdxl, sd15)
    assert main([*FAST, "--json", "--rate", "1.0", "--target-per-replica", "0.05"]) == 0
    assert _json(capsys)["loraplex"]["peak_replicas"] > 5


def test_config_file_is_merged_over_the_preset(tmp_path: Path, capsys) -> None:
    config = tmp_path / "plan.yaml"
    config.write_text(
        "hardware:\n  inference_s: {sdxl: 2.0, sd15: 1.0}\n"
        "scenarios:\n  after_replicas: {sdxl: 4, sd15: 1}\n"
    )
    assert (
        main(
            [
                "--scenario",
                "seed-blog",
                "--config",
                str(config),
                "--horizon",
                "900",
                "--no-sizing",
                "--json",
            ]
        )
        == 0
    )
    figures = _json(capsys)
    assert figures["after"]["peak_replicas"] == 5
    assert figures["traffic"]["distinct_models_per_2min"] > 5  # the preset's traffic stayed
    # 2 s inference + 3 s load: an unpopular LoRA now takes ~5 s after, not ~12 s
    assert figures["after"]["cold_p50_s"] < 6


def test_trace_file_and_plots(tmp_path: Path, capsys) -> None:
    trace = tmp_path / "trace.csv"
    rows = [f"{t * 7.0},me/lora-{t % 5}" for t in range(200)]
    trace.write_text("time,model_id\n" + "\n".join(rows) + "\n")
    plots = tmp_path / "plots"
    code = main(
        [
            "--warmup",
            "0",
            "--trace",
            str(trace),
            "--default-base",
            "sdxl",
            "--no-sizing",
            "--json",
            "--plot",
            str(plots),
        ]
    )
    assert code == 0
    figures = _json(capsys)
    assert figures["traffic"]["requests"] == 200 and figures["traffic"]["adapters_requested"] == 5
    for name in ("latency_cdf.png", "replicas_over_time.png"):
        data = (plots / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trace", "/nonexistent/trace.csv"], "cannot read trace"),
        (["--rate", "-1"], "rate_per_s"),
        (["--base-share", "sdxl=0"], "positive share"),
        (["--trace", "TRACE", "--default-base", "sdxl"], "not longer than the warm-up"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    args: list[str], message: str, capsys, tmp_path: Path
) -> None:
    trace = tmp_path / "short.csv"
    trace.write_text("time,model_id\n1,me/a\n100,me/b\n")
    args = [str(trace) if a == "TRACE" else a for a in args]
    assert main([*args, "--no-sizing"]) == 2
    assert message in capsys.readouterr().err


def test_bad_config_file_names_the_field(tmp_path: Path, capsys) -> None:
    config = tmp_path / "plan.json"
    config.write_text(json.dumps({"hardware": {"pod_start_s": "soon"}}))
    assert main(["--config", str(config), "--no-sizing"]) == 2
    err = capsys.readouterr().err
    assert "pod_start_s" in err and str(config) in err


def test_malformed_flag_values_are_refused(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--burst", "10:5"])
    assert exit_info.value.code == 2
    assert "START_S:DURATION_S:MULTIPLIER" in capsys.readouterr().err


@pytest.mark.slow
def test_same_seed_same_json_across_processes() -> None:
    """String hashing differs per process; the figures must not depend on set order."""
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        cmd = [sys.executable, "-m", "loraplex", "simulate", *FAST, "--json", "--seed", "9"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=60)
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]
    assert json.loads(outputs[0])["loraplex"]["completed"] > 0
