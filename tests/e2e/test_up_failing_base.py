"""End to end: ``loraplex up`` over a base its workers cannot load stops by itself, well within
2 minutes, exiting non-zero with the model id and the reason on its console (issue 14).

The base is broken on purpose: a copy of the demo base's ``model_index.json`` and card without
any of the component folders it names, so the real worker's real load fails (the worker
reports ``failed`` on its ``/readyz`` and exits 3; the supervisor gives up on the base).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures.models import DemoModels

from loraplex.embedded.up import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
BROKEN = "broken-org/no-components"
GIVE_UP_LIMIT_S = 120.0


def test_a_base_that_cannot_be_served_stops_up_with_its_id_and_reason(
    demo_models: DemoModels, tmp_path: Path
) -> None:
    repo = tmp_path / "models" / BROKEN
    repo.mkdir(parents=True)
    for name in ("model_index.json", "README.md"):
        shutil.copy(demo_models.path(demo_models.base) / name, repo / name)
    cmd = [sys.executable, "-m", "loraplex", "up", "--models", str(tmp_path / "models")]
    cmd += ["--replicas", "1", "--port", str(free_port("127.0.0.1"))]
    cmd += ["--cache-dir", str(tmp_path / "hf-cache")]
    started = time.monotonic()
    result = subprocess.run(
        cmd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=GIVE_UP_LIMIT_S + 60,
    )
    took = time.monotonic() - started
    print(f"\nloraplex up gave up after {took:.1f} s with exit code {result.returncode}")
    console = result.stdout + result.stderr
    assert result.returncode == 1, console[-3000:]
    assert took < GIVE_UP_LIMIT_S, console[-3000:]
    stopping = [line for line in console.splitlines() if line.endswith("; stopping")]
    assert stopping and BROKEN in stopping[-1] and "cannot be served" in stopping[-1], stopping
    assert "loading base" in stopping[-1] and "failed" in stopping[-1]  # the worker's reason
    assert "is serving on" not in console
