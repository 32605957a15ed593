"""Prefetch through the real worker app (DeviceExecutor + Engine + Prefetcher) and the real
huggingface_hub client against a fixture Hub on loopback.

The Hub serves copies of a few demo repos in this module's own folder (one repo is rewritten to
move its branch). To make "the job waited in the queue while its adapter was prefetched" happen
for sure, a base request holds the device: the engine's ``generate`` is wrapped by a gate the
test opens once the prefetch is admitted — the only stand-in, as in test_worker_api.py.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pytest
from fixtures.hub import HubServer, point_client_at
from fixtures.worker import (
    WorkerServer,
    one_torch_thread,  # noqa: F401 - pytest fixture
    tiny_worker_settings,
)
from loraplex.worker.prefetch import Prefetcher

from loraplex.demo.models import LORA_R4, LORA_R8_ALPHA16, TINY_SD
from loraplex.shared.contract import Headers

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
MOVING = "loraplex-test/prefetch-moving"
WEIGHT = "pytorch_lora_weights.safetensors"
BODY = {"prompt": "a photo of sks", "seed": 3}


@pytest.fixture(scope="module")
def hub(demo_models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    root = tmp_path_factory.mktemp("prefetch-hub")
    private = demo_models.test_repos.private
    for repo in (TINY_SD, LORA_R4, private, demo_models.test_repos.corrupt):
        shutil.copytree(demo_models.path(repo), root / repo)
    shutil.copytree(demo_models.path(LORA_R8_ALPHA16), root / MOVING)
    (root / ".hub-access.json").write_text(json.dumps({"gated": [], "private": [private]}))
    server = HubServer(root).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def worker(hub: HubServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerServer]:
    cache = tmp_path_factory.mktemp("prefetch-hf")
    with pytest.MonkeyPatch.context() as patch:
        point_client_at(patch, hub.url, cache)
        with WorkerServer.serving(tiny_worker_settings(cache / "hub", branch_ttl_seconds=0)) as s:
            yield s


def post(worker: WorkerServer, token: str | None = None, **adapter: str) -> httpx.Response:
    headers = dict(worker.headers)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {**BODY, "adapter": adapter} if adapter else BODY
    return httpx.post(f"{worker.url}/v1/generate", json=body, headers=headers, timeout=30)


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def prefetcher_of(worker: WorkerServer) -> Prefetcher:
    prefetcher = worker.runtime.prefetcher
    assert prefetcher is not None, "prefetch is on by default"
    return prefetcher


def behind_a_busy_device(
    worker: WorkerServer,
    monkeypatch: pytest.MonkeyPatch,
    send: Callable[[], httpx.Response],
    until: str = "admitted",
) -> httpx.Response:
    """Hold the device with a base request, ``send`` a request behind it, open the device once
    that request's prefetch is over (the event ``until``); returns its answer."""
    engine = worker.runtime.engine
    opened, entered = threading.Event(), threading.Event()
    original = engine.generate

    def gated(request, *args, **kwargs):
        if request.adapter is None:
            entered.set()
            assert opened.wait(30), "the test never opened the device"
        return original(request, *args, **kwargs)

    monkeypatch.setattr(engine, "generate", gated)
    prefetcher = prefetcher_of(worker)
    before = prefetcher.events[until]
    with ThreadPoolExecutor(2) as pool:
        holder: Future[httpx.Response] = pool.submit(post, worker)
        assert entered.wait(15), "the base request never reached the device"
        queued = pool.submit(send)
        try:
            wait_for(lambda: prefetcher.events[until] > before, f"the prefetch ({until})")
        finally:
            opened.set()
        assert holder.result().status_code == 200
        return queued.result()


def metric(worker: WorkerServer, line_start: str) -> float:
    text = httpx.get(f"{worker.ops_url}/metrics").text
    found = [ln for ln in text.splitlines() if ln.startswith(line_start)]
    return float(found[0].split()[-1]) if found else 0.0


def test_a_prefetched_cold_adapter_switches_from_the_host_tier(worker, hub, monkeypatch) -> None:
    hits = metric(worker, 'loraplex_worker_prefetch_switches_total{outcome="hit"}')
    downloads = hub.count(f"/{LORA_R4}/resolve/", method="GET")
    response = behind_a_busy_device(worker, monkeypatch, lambda: post(worker, repo_id=LORA_R4))
    assert response.status_code == 200, response.text
    assert response.headers[Headers.SWITCH_TIER] == "host"  # only the copy was left
    assert hub.count(f"/{LORA_R4}/resolve/", method="GET") == downloads + 1  # once, by prefetch
    assert metric(worker, 'loraplex_worker_prefetch_switches_total{outcome="hit"}') == hits + 1
    assert metric(worker, "loraplex_worker_prefetch_downloading_bytes") == 0


def test_another_users_prefetch_never_opens_a_private_adapter(
    worker, hub, demo_models, monkeypatch
) -> None:
    private = demo_models.test_repos.private
    owner = behind_a_busy_device(
        worker, monkeypatch, lambda: post(worker, hub.gated_token, repo_id=private)
    )
    assert owner.status_code == 200, owner.text
    assert owner.headers[Headers.SWITCH_TIER] == "host"
    commit = owner.headers[Headers.ADAPTER_COMMIT]
    assert f"{private}@{commit}" in worker.runtime.engine.snapshot().host
    # The commit sits in the host tier; other callers still get the Hub's answer for them.
    for token, status in (("hf_not_the_right_one", 404), (None, 401)):
        for revision in (commit, "main"):
            refused = post(worker, token, repo_id=private, revision=revision)
            assert refused.status_code == status, (token, revision, refused.text)


def test_a_moved_branch_is_prefetched_at_its_new_commit(worker, hub, monkeypatch) -> None:
    first = post(worker, repo_id=MOVING)
    assert first.status_code == 200, first.text
    old_commit = first.headers[Headers.ADAPTER_COMMIT]
    shutil.copyfile(hub.root / LORA_R4 / WEIGHT, hub.root / MOVING / WEIGHT)  # push: main moves
    moved = behind_a_busy_device(worker, monkeypatch, lambda: post(worker, repo_id=MOVING))
    assert moved.status_code == 200, moved.text
    assert moved.headers[Headers.ADAPTER_COMMIT] != old_commit
    assert moved.headers[Headers.SWITCH_TIER] == "host"  # the new commit, prefetched
    assert moved.content != first.content  # other weights: not the stale adapter's image


def test_a_failed_prefetch_answers_its_job_as_before_and_leaves_the_rest(
    worker, demo_models, monkeypatch
) -> None:
    corrupt = demo_models.test_repos.corrupt
    failed = behind_a_busy_device(
        worker, monkeypatch, lambda: post(worker, repo_id=corrupt), until="failed"
    )
    assert failed.status_code == 422, failed.text  # the device's own load: today's answer
    assert "not a valid safetensors file" in failed.json()["error"]
    assert not any(entry.startswith(corrupt) for entry in worker.runtime.engine.snapshot().host)
    after = post(worker, repo_id=LORA_R4)
    assert after.status_code == 200 and worker.runtime.executor.depth == 0
