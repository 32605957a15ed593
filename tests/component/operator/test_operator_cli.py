"""``loraplex operator`` as a process: kubeconfig login, a pool served, /metrics and /healthz.

The entry point users run, against the API emulator; a stub router serves /metrics on loopback.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import pathlib
import signal
import sys
from typing import Any

import httpx
import pytest
from fixtures.k8s import TEST_NAMESPACE, eventually

from .test_operator import POOL, POOLS, StubRouter, router  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow


def test_help_lists_the_scope_options(capsys: pytest.CaptureFixture[str]) -> None:
    from loraplex.operator.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--namespace" in out and "--all-namespaces" in out


async def test_operator_process_serves_a_pool_and_metrics(
    k8s: Any,
    k8s_kubeconfig: pathlib.Path,
    router: tuple[StubRouter, str],  # noqa: F811
    unused_tcp_port: int,
) -> None:
    stub, url = router
    stub.rate = 2.0
    env = {
        **os.environ,
        "KUBECONFIG": str(k8s_kubeconfig),
        "LORAPLEX_OPERATOR_PEERING": "",
        "LORAPLEX_OPERATOR_INTERVAL_S": "0.5",
        "LORAPLEX_OPERATOR_RATE_WINDOW_S": "1",
        "LORAPLEX_OPERATOR_METRICS_PORT": str(unused_tcp_port),
        "LORAPLEX_OPERATOR_ROUTER_URLS": json.dumps([url]),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loraplex",
        "operator",
        "--namespace",
        TEST_NAMESPACE,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with k8s.post(POOLS, json=copy.deepcopy(POOL)) as resp:
            assert resp.status == 200
        await eventually(
            lambda: (
                (k8s.get_object("apps/v1/deployments", TEST_NAMESPACE, "tiny-worker") or {})
                .get("spec", {})
                .get("replicas")
                == 2
            ),
            timeout=20,
            message="Deployment scaled to the stub router's 2 req/s",
        )
        base = f"http://127.0.0.1:{unused_tcp_port}"
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{base}/healthz")).status_code == 200
            metrics = (await http.get(f"{base}/metrics")).text
        assert 'loraplex_operator_desired_replicas{base_model="loraplex-test/tiny-sd"' in metrics
        assert "loraplex_operator_observed_rate{" in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, output.decode()[-3000:]
