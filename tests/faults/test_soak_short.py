"""The soak (``scripts/soak.py``, ``make soak``) in its short form, as part of ``make test``.

Real parts: everything the soak runs (``loraplex up --hub --replicas 2`` as a subprocess, the
local Hub, real SIGKILL/SIGSTOP/SIGCONT, Hub delays, HTTP on loopback); the demo models come
from the session fixture. Figures (from its JSON line): requests lost 0; router and worker RSS
growth <= 5 % after warm-up; router and worker fd growth <= 5; ``loraplex up`` still running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
SOAK = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"


def test_short_soak_loses_nothing_and_leaks_nothing(demo_models, tmp_path: Path) -> None:
    argv = [sys.executable, str(SOAK), "--duration", "25", "--warmup", "6"]
    argv += ["--fault-every", "4", "--models", str(demo_models.root)]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=400, cwd=tmp_path, env=dict(os.environ)
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stdout[-2000:] + done.stderr[-4000:]
    figures = json.loads(lines[-1])
    assert figures["stack_alive"], figures
    assert figures["lost"] == 0, figures
    assert figures["requests"] >= 10 and sum(figures["faults"].values()) >= 1, figures
    for key in ("router_rss_growth_pct", "worker_rss_growth_pct"):
        assert figures[key] is None or figures[key] <= 5.0, figures
    for key in ("router_fd_growth", "worker0_fd_growth"):
        assert figures[key] is None or figures[key] <= 5, figures
    assert figures["ok"] and done.returncode == 0, figures
