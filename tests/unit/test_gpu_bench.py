"""bench/gpu.py end to end on CPU: ``--tiny`` builds an SDXL-shaped UNet and a Flux-shaped
transformer from their configs, installs the real slot, fuses and restores through the worker's
``Merger`` (100 cycles), runs diffusers' own seed cycle (peft), batch 1 vs 4 and ``torch.compile``
over the static slot, and prints one JSON line with every figure; without CUDA
and without ``--tiny`` it prints a ``skipped`` line (``make bench`` runs it with no arguments).

Nothing is mocked. To keep this test short, the compile section runs for the tiny Flux only, with
dynamo's ``eager`` backend (same graphs and guards, so the same recompile count; the tiny UNet's
trace alone takes ~15 s on this shared CPU). ``python bench/gpu.py --tiny`` compiles both."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu.py"
FIGURES = (
    "adapter_mb",
    "slot_mb",
    "switch_ms",
    "memcpy_ms",
    "switch_over_memcpy",
    "switch_gbps",
    "seed_cycle_ms",
    "seed_over_switch",
    "base_gen_ms",
    "hooked_gen_ms",
    "hook_overhead_pct",
    "fused_gen_ms",
    "fused_overhead_pct",
    "fuse_ms",
    "restore_ms",
    "first_fuse_ms",
    "base_step_ms",
    "hooked_step_ms",
    "fused_step_ms",
)
BATCH = ("batch1_images_per_s", "batch4_images_per_s", "batch_speedup")
COMPILED = ("compile_s", "eager_gen_ms", "compiled_gen_ms", "static_switch_ms")


def _bench(cwd: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_tiny_run_reports_every_figure(tmp_path: Path) -> None:
    partial = tmp_path / "gpu.json"
    args = ("--tiny", "--compile-backend", "eager", "--compile-models", "flux")
    result = _bench(tmp_path, *args, "--gen-reps", "2", "--json-out", str(partial))
    assert json.loads(partial.read_text()) == result  # the file holds the final state too
    assert (result["device"], result["tiny"], result["rank"]) == ("cpu", True, 32)
    assert result["torch"].startswith("2.")
    for name in ("sdxl", "flux"):
        figures = result[name]
        assert figures["dtype"] == "float32"
        assert "errors" not in figures, figures["errors"]
        for key in FIGURES:
            assert isinstance(figures[key], int | float) and math.isfinite(figures[key]), key
        for key in ("adapter_mb", "switch_ms", "memcpy_ms", "seed_cycle_ms", "fuse_ms"):
            assert figures[key] > 0, key
        # a rank-32 all-module adapter fills the rank-32 slot (plus its fp32 scales)
        assert figures["adapter_mb"] <= figures["slot_mb"] < figures["adapter_mb"] * 1.01
        assert figures["seed_over_switch"] > 10  # diffusers' cycle vs one slot switch
        assert figures["restore_bit_exact"] is True  # after 100 cycles through worker/merge.py
        assert figures["fuse_cycles"] == 100 and figures["pristine_mb"] > 0
        assert figures["fused_vs_hooked_max_abs"] < 1e-4  # fp32: fused == hooked
        assert figures["seed_base_bit_exact"] in (True, False)  # computed, not assumed
    assert result["sdxl"]["slot_modules"]["conv2d"] > 0  # plain convs are in the slot
    assert result["sdxl"]["skipped"] == {"compile": "not in --compile-models"}
    for key in BATCH:
        assert result["sdxl"][key] > 0, key
    flux = result["flux"]
    assert flux["skipped"] == {"batch": "UNet only"}
    assert flux["compile_backend"] == "eager"
    assert flux["graphs"] == 2  # slot on, base
    assert flux["recompiles_across_switches"] == 0
    for key in COMPILED:
        assert flux[key] > 0, key


@pytest.mark.slow  # importing torch alone takes seconds on this CPU
def test_without_cuda_and_tiny_it_skips(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    assert _bench(tmp_path, env=env) == {
        "skipped": "no CUDA device; run with --tiny for the CPU smoke version"
    }
