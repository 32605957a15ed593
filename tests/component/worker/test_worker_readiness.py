"""A real worker's ``/readyz`` on its way to ready: the base download from the fixture Hub with
its byte counts, the states in order, and the JSON shape (503 until ready, 200 then); and the
progress log of a big adapter download.

The fixture Hub holds back the UNet's weights until the test has seen the download under way:
the tiny base downloads in well under a second otherwise. Nothing else is stood in for: the
worker downloads through huggingface_hub and loads with diffusers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
from fixtures.hub import HubServer, point_client_at
from fixtures.worker import (
    WorkerServer,
    one_torch_thread,  # noqa: F401 - pytest fixture
    tiny_worker_settings,
)
from loraplex.worker import fetch
from loraplex.worker.progress import LogPolicy

from loraplex.demo.models import LORA_R4
from loraplex.shared.contract import AdapterRef

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
ORDER = ["starting", "downloading", "loading", "warming_up", "ready"]
HELD = "/unet/diffusion_pytorch_model.safetensors"


def wait_for(check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)  # poll interval; the deadline bounds the wait


@pytest.fixture
def holding_hub(demo_models) -> Iterator[tuple[HubServer, threading.Event]]:
    """A fixture Hub whose UNet weights download only once the event is set."""
    server = HubServer(demo_models.root)
    release = threading.Event()

    @server.app.middleware("http")
    async def hold_the_unet(request, call_next):
        if request.method == "GET" and request.url.path.endswith(HELD):
            while not release.is_set():
                await asyncio.sleep(0.01)  # the test's gate, polled
        return await call_next(request)

    server.start()
    yield server, release
    release.set()
    server.stop()


def test_readyz_goes_through_the_download_in_order_to_ready(
    holding_hub: tuple[HubServer, threading.Event], tmp_path: Path, monkeypatch
) -> None:
    hub, release = holding_hub
    point_client_at(monkeypatch, hub.url, tmp_path / "hf")
    worker = WorkerServer(tiny_worker_settings(tmp_path / "hf" / "hub")).start()
    seen: list[tuple[int, dict]] = []

    def poll() -> dict:
        answer = httpx.get(f"{worker.ops_url}/readyz")
        seen.append((answer.status_code, answer.json()))
        return seen[-1][1]

    try:
        wait_for(lambda: poll()["downloaded_bytes"] > 0)
        under_way = seen[-1][1]
        release.set()
        wait_for(lambda: poll()["state"] == "ready")
    finally:
        release.set()
        worker.stop()
    assert under_way["state"] == "downloading"
    assert set(under_way) == {"state", "downloaded_bytes", "total_bytes", "error"}
    assert 0 < under_way["downloaded_bytes"] < under_way["total_bytes"]
    states = [body["state"] for _, body in seen]
    assert states == sorted(states, key=ORDER.index), states  # forward only
    assert all(code == 503 and "error" in body for code, body in seen[:-1])
    code, ready = seen[-1]
    assert code == 200
    total = under_way["total_bytes"]
    assert ready == {
        "status": "ready",
        "state": "ready",
        "downloaded_bytes": total,
        "total_bytes": total,
    }


def test_readyz_of_a_failed_load_has_the_reason(hub_server: HubServer, tmp_path: Path, monkeypatch):
    point_client_at(monkeypatch, hub_server.url, tmp_path / "hf")
    settings = tiny_worker_settings(tmp_path / "hf" / "hub", base_model="loraplex-test/no-such")
    worker = WorkerServer(settings).start()
    try:
        wait_for(lambda: httpx.get(f"{worker.ops_url}/readyz").json()["state"] == "failed")
        answer = httpx.get(f"{worker.ops_url}/readyz")
    finally:
        worker.stop()
    body = answer.json()
    assert answer.status_code == 503
    assert "loraplex-test/no-such" in body["reason"] and body["error"] == body["reason"]
    assert body["downloaded_bytes"] == 0 and body["total_bytes"] == 0


def test_a_big_adapter_download_logs_its_progress(hf_env, monkeypatch, caplog) -> None:
    """Every adapter counts as big here, and the log may speak at every decile: the tiny file
    (one chunk) gives one progress line, counted by huggingface_hub's bars, and the last line."""
    monkeypatch.setattr(fetch, "LOGGED_DOWNLOAD_BYTES", 0)
    eager = LogPolicy(min_interval_s=0.0)
    monkeypatch.setattr(fetch, "DownloadLog", partial(fetch.DownloadLog, policy=eager))
    caplog.set_level(logging.INFO, logger=fetch.__name__)
    fetcher = fetch.HubFetcher(
        cache_dir=hf_env.cache_dir / "hub", max_adapter_bytes=2**30, branch_ttl_s=60
    )
    key = fetcher.resolve(AdapterRef(repo_id=LORA_R4), None)
    weight = fetcher.weight_file(key, None)
    path = fetcher.download(weight, None)
    lines = [r.getMessage() for r in caplog.records if r.name == fetch.__name__]
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"downloading adapter {key}: ") and "(100%) at " in lines[0]
    assert lines[1].startswith(f"downloaded adapter {key}: ")
    assert path.stat().st_size == weight.size
