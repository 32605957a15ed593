"""``loraplex worker`` as a real process: starts from the Hub, reads a gated adapter with its
own ``HF_TOKEN``, serves the router-only API and the health/metrics port, and on SIGTERM
finishes the request in progress before exiting; without a secret it refuses a public address."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fixtures.hub import hub_env_vars

from loraplex.demo.models import TINY_SD
from loraplex.shared.contract import Headers

pytestmark = pytest.mark.slow
START_DEADLINE_S = 90.0
SECRET = "cli-test-worker-secret-0123456789"
ROUTER = {Headers.WORKER_SECRET: SECRET}  # what the router sends


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else "worker exited"
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz").status_code == 200
    except httpx.TransportError:
        return False


def test_cli_worker_serves_and_finishes_the_request_in_progress_on_sigterm(
    hub_server, demo_models, tmp_path: Path
) -> None:
    port, metrics_port = free_port(), free_port()
    url, ops_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}"
    env = {
        **os.environ,
        **hub_env_vars(hub_server.url, tmp_path / "hf"),
        "OMP_NUM_THREADS": "1",
        "LORAPLEX_WORKER_WIDTH": "64",
        "LORAPLEX_WORKER_HEIGHT": "64",
        "LORAPLEX_WORKER_SLOT_RANK": "8",
        "LORAPLEX_WORKER_WARMUP_STEPS": "1",
        "HF_TOKEN": hub_server.gated_token,  # the worker's own token opens gated adapters
        "LORAPLEX_WORKER_SECRET": SECRET,
    }
    cmd = [sys.executable, "-m", "loraplex", "worker", "--base-model", TINY_SD]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port)]
    cmd += ["--log-level", "warning"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for(lambda: ready(ops_url), START_DEADLINE_S, proc)
        # Health is on the metrics port; the API port answers nobody but the router.
        assert httpx.get(f"{url}/readyz").status_code == 401
        assert httpx.get(f"{url}/readyz", headers=ROUTER).status_code == 404
        gated = {"prompt": "x", "seed": 1, "adapter": {"repo_id": demo_models.test_repos.gated}}
        assert httpx.post(f"{url}/v1/generate", json=gated, timeout=60).status_code == 401
        response = httpx.post(f"{url}/v1/generate", json=gated, headers=ROUTER, timeout=60)
        assert response.status_code == 200, response.text
        result: dict[str, httpx.Response] = {}
        body = {"prompt": "a long one", "num_inference_steps": 60, "seed": 1}

        def long_request() -> None:
            result["response"] = httpx.post(
                f"{url}/v1/generate", json=body, headers=ROUTER, timeout=120
            )

        thread = threading.Thread(target=long_request)
        thread.start()
        state = lambda: httpx.get(f"{url}/v1/state", headers=ROUTER).json()  # noqa: E731
        wait_for(lambda: state()["in_flight"] == 1, 30, proc)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the 60-step request runs for seconds more: the API is draining
        assert httpx.get(f"{ops_url}/healthz").status_code == 200, "liveness during the drain"
        thread.join(timeout=120)
        response = result["response"]
        assert response.status_code == 200
        assert response.content[:4] == b"\x89PNG"
        # uvicorn re-raises the captured SIGTERM once shut down (exit by signal, the convention).
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        output = proc.stdout.read() if proc.stdout else ""
        assert "Traceback" not in output, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_worker_without_a_secret_refuses_a_public_address() -> None:
    env = {k: v for k, v in os.environ.items() if k != "LORAPLEX_WORKER_SECRET"}
    cmd = [sys.executable, "-m", "loraplex", "worker", "--base-model", TINY_SD]
    result = subprocess.run(
        [*cmd, "--host", "0.0.0.0"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "LORAPLEX_WORKER_SECRET" in result.stderr and "127.0.0.1" in result.stderr
