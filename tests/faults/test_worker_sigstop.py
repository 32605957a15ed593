"""Fault matrix, worker rows over ``loraplex up``: a worker hung (SIGSTOP), then back (SIGCONT).

Real parts: ``loraplex up --hub --replicas 2`` as a subprocess (router and two real workers on
the tiny demo base), the local Hub in this process, real signals and HTTP on loopback. The
stack is the soak's (``scripts/soak.py``: ``Hub`` and ``Stack``, loaded from that file so both
drive ``loraplex up`` the same way). The router's debug header ``X-Loraplex-Worker`` names the
replica that served each answer (an opaque id).
"""

from __future__ import annotations

import importlib.util
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from loraplex.demo.models import TINY_SD

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
SOAK = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"
PARAMS = {"width": 64, "height": 64, "num_inference_steps": 2}
STOPPED_S, GRACE_S = 14.0, 5.0  # how long the worker hangs; time the router may take to see it
MARGIN_S = 4.0  # a request this close to the SIGCONT may finish after it without having waited


def load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("loraplex_soak", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def stack(demo_models, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    soak = load_soak()
    hub = soak.Hub(demo_models.root)
    env = {"LORAPLEX_ROUTER_DEBUG_REPLICA_HEADER": "true"}
    running = soak.Stack(hub.url, 2, tmp_path_factory.mktemp("sigstop-cache"), env)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()
        hub.server.should_exit = True


def stream(url: str, models: list[str], until: float, sink: list) -> None:
    """Back-to-back requests until ``until``: (start, end, status, replica id, retry-after)."""
    with httpx.Client(base_url=url, timeout=120) as client:
        i = 0
        while time.monotonic() < until:
            started = time.monotonic()
            body = {"inputs": "a red fox", "parameters": {**PARAMS, "seed": i}}
            answer = client.post(f"/models/{models[i % len(models)]}", json=body)
            sink.append((started, time.monotonic(), answer.status_code,
                         answer.headers.get("x-loraplex-worker"),
                         answer.headers.get("retry-after")))  # fmt: skip
            i += 1


def test_hung_worker_is_taken_out_and_comes_back(stack, demo_models) -> None:
    """Worker replica #0 SIGSTOPped for 14 s under 4 streams of requests, then SIGCONTed.
    Figures: requests lost 0 (every answer 200, or 429/503 with Retry-After); every request
    started from 5 s after the stop until 4 s before the SIGCONT finished before the SIGCONT
    (the router's deadlines and state polls took the hung replica out: none waited on it);
    after SIGCONT the other replica id serves again within 20 s (back in rotation)."""
    models = [TINY_SD] + [spec.repo_id for spec in demo_models.demo.adapters]
    warm: list = []
    stream(stack.url, models, time.monotonic() + 6, warm)
    assert len({r[3] for r in warm if r[2] == 200}) == 2, warm  # both replicas serve

    victim = stack.worker(0)
    results: list = []
    with ThreadPoolExecutor(4) as pool:
        stopped_at = time.monotonic()
        victim.send_signal(signal.SIGSTOP)
        try:
            until = stopped_at + STOPPED_S
            for _ in range(4):
                pool.submit(stream, stack.url, models, until, results)
            time.sleep(STOPPED_S)  # the fault's own duration (not waiting out a race)
        finally:
            victim.send_signal(signal.SIGCONT)
            continued_at = time.monotonic()
    lost = [r for r in results if not (r[2] == 200 or (r[2] in (429, 503) and r[4]))]
    assert lost == [], lost
    late = [r for r in results if stopped_at + GRACE_S <= r[0] <= continued_at - MARGIN_S]
    assert late, "no request started after the grace period"
    assert all(r[1] < continued_at for r in late), [r for r in late if r[1] >= continued_at]
    live = {r[3] for r in late if r[2] == 200}
    assert len(live) == 1, live  # only the replica that was not stopped

    after: list = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not ({r[3] for r in after if r[2] == 200} - live):
        stream(stack.url, models, time.monotonic() + 2, after)
    assert {r[3] for r in after if r[2] == 200} - live, "the SIGCONTed replica never served"
