"""A real worker's ``/v1/state`` carries what the router's placement prices from.

One worker (tiny demo base on CPU, the fixture Hub through the real huggingface_hub client)
generates with an adapter; its state then shows the measured switch seconds of that tier, the
seconds per generation, and the adapter commit in its disk cache (but never the base).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fixtures.hub import point_client_at
from fixtures.worker import (
    WorkerServer,
    one_torch_thread,  # noqa: F401 - pytest fixture
    tiny_worker_settings,
)

from loraplex.demo.models import LORA_R4
from loraplex.shared.contract import Headers, WorkerState

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture
def worker(hub_server, tmp_path: Path) -> Iterator[WorkerServer]:
    with pytest.MonkeyPatch.context() as patch:
        point_client_at(patch, hub_server.url, tmp_path)
        settings = tiny_worker_settings(tmp_path / "hub", disk_scan_interval_s=0)
        with WorkerServer.serving(settings) as server:
            yield server


def test_state_reports_measured_load_seconds_and_the_disk_tier(worker: WorkerServer) -> None:
    def state() -> WorkerState:
        answer = httpx.get(f"{worker.url}/v1/state", headers=worker.headers, timeout=10)
        return WorkerState.model_validate(answer.json())

    before = state()
    assert before.load_seconds == {} and before.disk_cached_adapters == []
    assert before.generate_seconds is None  # nothing served yet (the warm-up is not a request)
    assert before.running_seconds == 0.0 and before.in_flight == 0  # idle: nothing running
    body = {"prompt": "a fox", "seed": 1, "adapter": {"repo_id": LORA_R4, "revision": "main"}}
    answer = httpx.post(f"{worker.url}/v1/generate", json=body, headers=worker.headers, timeout=60)
    assert answer.status_code == 200, answer.text
    tier = answer.headers[Headers.SWITCH_TIER]
    after = state()
    assert tier in ("hub", "disk") and set(after.load_seconds) == {tier}
    assert after.load_seconds[tier] == pytest.approx(
        float(answer.headers[Headers.SWITCH_MS]) / 1000, rel=1e-3, abs=1e-6
    )
    assert after.generate_seconds == pytest.approx(
        float(answer.headers[Headers.COMPUTE_MS]) / 1000, rel=1e-3, abs=1e-6
    )
    assert after.disk_cached_adapters == [answer.headers[Headers.ACTIVE_ADAPTER]]
