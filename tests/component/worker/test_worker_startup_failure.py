"""Fail loudly: ``loraplex worker`` over a base it cannot load exits non-zero, naming the model
and the reason in its log (Kubernetes then shows CrashLoopBackOff with it), after its
``/readyz`` said ``failed`` with that reason for a moment (``loraplex up`` reads it there).

A real process against the fixture Hub with the real huggingface_hub client, for a LoRA repo
given as the base (no ``model_index.json``); one process only, since starting a worker costs
its torch import (15–60 s on the shared CI cores). The app-level hook the CLI exits through is
checked in-process for a pipeline the worker cannot serve (``NotServable`` at Engine
construction) and a repo that does not exist: the engine factory raises what ``Engine.load``
raises then (a stand-in, so no pipeline needs building).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

import httpx
import pytest
from fixtures.hub import hub_env_vars
from fixtures.threaded_server import ThreadedServer
from fixtures.worker import tiny_worker_settings
from loraplex.worker.app import create_app, create_ops_app
from loraplex.worker.cli import EXIT_LOAD_FAILED

from loraplex.demo.models import TINY_SD
from loraplex.shared.errors import NotFound, NotServable

pytestmark = pytest.mark.slow
EXIT_DEADLINE_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_worker(base: str, hub_url: str, cache: Path, metrics_port: int) -> subprocess.Popen:
    env = {**os.environ, **hub_env_vars(hub_url, cache), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "loraplex", "worker", "--base-model", base]
    cmd += ["--host", "127.0.0.1", "--port", str(free_port())]
    cmd += ["--metrics-port", str(metrics_port), "--log-level", "warning"]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def readiness(url: str) -> dict | None:
    try:
        return httpx.get(url, timeout=1).json()
    except (httpx.TransportError, ValueError):
        return None


def test_a_base_that_cannot_be_served_exits_non_zero_with_the_model_and_reason(
    hub_server, demo_models, tmp_path: Path
) -> None:
    """A LoRA repo given as the base: no model_index.json, no pipeline to load."""
    base, reason = demo_models.demo.adapters[0].repo_id, "model_index.json"
    metrics_port = free_port()
    proc = start_worker(base, hub_server.url, tmp_path / "hf", metrics_port)
    seen_failed: dict | None = None
    started = time.monotonic()
    try:
        while proc.poll() is None:
            assert time.monotonic() - started < EXIT_DEADLINE_S, "the worker did not exit"
            answer = readiness(f"http://127.0.0.1:{metrics_port}/readyz")
            if answer and answer.get("state") == "failed":
                seen_failed = answer
            time.sleep(0.1)  # poll interval; the deadline above bounds the loop
        output = proc.stdout.read() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"\n{base}: exit {proc.returncode} after {time.monotonic() - started:.1f} s")
    assert proc.returncode == EXIT_LOAD_FAILED, output
    failure_lines = [line for line in output.splitlines() if "cannot serve" in line]
    assert failure_lines, output
    assert base in failure_lines[0] and reason in failure_lines[0], failure_lines[0]
    assert seen_failed is not None, "its /readyz never said failed before it exited"
    assert base in seen_failed["reason"] and reason in seen_failed["reason"]


class _OpsServer(ThreadedServer):
    lifespan = "off"  # the API server's lifespan owns the runtime


@pytest.mark.parametrize(
    "error",
    [
        NotServable(
            f"base {TINY_SD} is a StableDiffusionImg2ImgPipeline; this worker serves "
            "text-to-image pipelines: StableDiffusionPipeline, StableDiffusionXLPipeline, "
            "FluxPipeline, StableDiffusion3Pipeline"
        ),
        NotFound(f"no model {TINY_SD} on the Hub"),
    ],
)
def test_a_load_failure_reports_failed_and_calls_the_exit_hook_with_the_reason(
    tmp_path: Path, error: Exception
) -> None:
    def engine_factory(_: object) -> NoReturn:
        raise error

    calls: list[str] = []
    app = create_app(
        tiny_worker_settings(tmp_path), engine_factory=engine_factory, on_load_failed=calls.append
    )
    api, ops = ThreadedServer(app).start(), _OpsServer(create_ops_app(app)).start()
    try:
        deadline = time.monotonic() + 30
        while not calls:
            assert time.monotonic() < deadline, "the load failure was never reported"
            time.sleep(0.02)  # poll interval; the deadline bounds the loop
        assert calls == [f"loading base {TINY_SD} failed: {error}"]
        ready = httpx.get(f"{ops.url}/readyz")
        assert ready.status_code == 503 and ready.json()["state"] == "failed"
        assert ready.json()["reason"] == calls[0]
        assert httpx.get(f"{ops.url}/healthz").status_code == 503
    finally:
        ops.stop()
        api.stop()
