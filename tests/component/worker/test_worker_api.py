"""The worker over real HTTP on loopback: contract, headers, state, metrics, bad input, queue,
and its closed API (the router's secret; access re-checked for cached gated/private adapters).

One worker (tiny demo base, 64×64, 2 steps) serves the module; the Hub is the fixture server.
Where the device must be held busy (queue tests), the engine's ``generate`` is wrapped by a
gate the test opens: that is the only stand-in, documented on those tests.
"""

from __future__ import annotations

import asyncio
import threading
import time
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
from loraplex.worker.app import create_app
from loraplex.worker.pipeline import Engine

from loraplex.demo.models import LORA_R4, LORA_R8_ALPHA16
from loraplex.shared.contract import Headers, Limits, WorkerState

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
BASE_BODY = {"prompt": "a photo of sks", "seed": 3}


@pytest.fixture(scope="module")
def hub_cache(hub_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    cache = tmp_path_factory.mktemp("worker-api-hf")
    with pytest.MonkeyPatch.context() as patch:
        point_client_at(patch, hub_server.url, cache)
        yield cache / "hub"


@pytest.fixture(scope="module")
def worker(hub_cache: Path) -> Iterator[WorkerServer]:
    settings = tiny_worker_settings(hub_cache, queue_capacity=2, max_overtake=1)
    with WorkerServer.serving(settings) as server:
        yield server


@pytest.fixture(scope="module")
def pristine_base(worker: WorkerServer) -> bytes:
    """The base image before this module's worker ever saw an adapter."""
    response = generate(worker)
    assert response.status_code == 200
    return response.content


def generate(
    worker: WorkerServer, token: str | None = None, secret: str | None = "", **body: object
) -> httpx.Response:
    """POST /v1/generate as the router would: the worker secret (``secret=""``: the worker's
    own; None: none), and ``token`` as the user's Hub token when given."""
    headers = dict(worker.headers) if secret == "" else {}
    if secret:
        headers[Headers.WORKER_SECRET] = secret
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(
        f"{worker.url}/v1/generate", json={**BASE_BODY, **body}, headers=headers, timeout=30
    )


def test_base_image_with_timing_headers(worker: WorkerServer, pristine_base: bytes) -> None:
    response = generate(worker)
    assert response.headers["content-type"] == "image/png"
    assert response.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert response.content == pristine_base  # same seed, same bytes
    assert response.headers[Headers.SWITCH_TIER] == "none"
    assert float(response.headers[Headers.COMPUTE_MS]) > 0
    assert float(response.headers[Headers.SWITCH_MS]) >= 0
    assert response.headers[Headers.QUEUE_DEPTH] == "0"
    assert response.headers[Headers.ACTIVE_ADAPTER] == ""


def test_adapter_request_reports_tier_commit_and_state(worker: WorkerServer) -> None:
    first = generate(worker, adapter={"repo_id": LORA_R4, "revision": "main"})
    assert first.status_code == 200, first.text
    assert first.headers[Headers.SWITCH_TIER] in ("hub", "disk")
    active = first.headers[Headers.ACTIVE_ADAPTER]
    repo, _, commit = active.partition("@")
    assert repo == LORA_R4 and len(commit) == 40
    assert first.headers[Headers.ADAPTER_COMMIT] == commit
    again = generate(worker, adapter={"repo_id": LORA_R4, "revision": commit})
    assert again.headers[Headers.SWITCH_TIER] == "active"
    assert again.content == first.content
    state = WorkerState.model_validate(
        httpx.get(f"{worker.url}/v1/state", headers=worker.headers).json()
    )
    assert state.ready and state.active_adapter == active
    assert active in state.resident_adapters and active in state.host_cached_adapters
    assert state.queue_capacity == 2 and state.free_slots == worker.settings.max_adapter_slots - 1


@pytest.mark.parametrize(("fmt", "magic"), [("jpeg", b"\xff\xd8"), ("webp", b"RIFF")])
def test_other_image_formats(worker: WorkerServer, fmt: str, magic: bytes) -> None:
    response = generate(worker, output_format=fmt)
    assert response.headers["content-type"] == f"image/{fmt}"
    assert response.content.startswith(magic)


BAD_PARAMETERS = [
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"num_inference_steps": Limits.MAX_STEPS + 1}, "num_inference_steps"),
    ({"width": 65}, "width"),
    ({"height": 4096}, "height"),
    ({"width": 2048, "height": 2048}, "pixels is over the budget"),
    ({"guidance_scale": -1}, "guidance_scale"),
    ({"prompt": "x" * (Limits.MAX_PROMPT_CHARS + 1)}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"adapter": {"repo_id": "https://evil.example/x"}}, "adapter.repo_id"),
    ({"adapter": {"repo_id": LORA_R4, "revision": "../etc"}}, "adapter.revision"),
    ({"unknown_field": 1}, "unknown_field"),
]


@pytest.mark.parametrize(("body", "named"), BAD_PARAMETERS, ids=[b[1] for b in BAD_PARAMETERS])
def test_bad_parameters_are_400_naming_the_field(worker, body: dict, named: str) -> None:
    response = generate(worker, **body)
    assert response.status_code == 400
    assert named in response.json()["error"]


BAD_ADAPTERS = [
    ("loraplex-test/does-not-exist", None, 404, "not found"),
    ("pickle_only", None, 422, "pickle"),
    ("corrupt", None, 422, "safetensors"),
    ("wrong_arch", None, 422, "shape mismatch"),
    ("non_finite", None, 422, "NaN or infinite values"),
    ("multi_file", None, 422, "style_a.safetensors, style_b.safetensors"),
    ("gated", None, 401, "token"),
    ("gated", "hf_not_the_right_one", 403, "refused"),
    ("private", None, 401, "without a token"),
    ("private", "hf_not_the_right_one", 404, "not found"),
]


@pytest.mark.parametrize(("repo", "token", "status", "text"), BAD_ADAPTERS)
def test_bad_adapters_answer_json_errors_and_base_stays_bit_exact(
    worker, pristine_base: bytes, demo_models, repo, token, status: int, text: str
) -> None:
    assert generate(worker, adapter={"repo_id": LORA_R8_ALPHA16}).status_code == 200
    repo_id = getattr(demo_models.test_repos, repo, repo)
    response = generate(worker, token, adapter={"repo_id": repo_id})
    assert response.status_code == status, response.text
    assert text in response.json()["error"]
    assert generate(worker).content == pristine_base


def test_adapter_over_the_size_limit_is_413(worker, pristine_base: bytes) -> None:
    fetcher = worker.runtime.engine.fetcher
    fetcher.max_adapter_bytes = 100
    try:
        response = generate(worker, adapter={"repo_id": "loraplex-demo/lora-list-base"})
    finally:
        fetcher.max_adapter_bytes = worker.settings.max_adapter_bytes
    assert response.status_code == 413
    assert "MAX_ADAPTER_BYTES" in response.json()["error"]
    assert generate(worker).content == pristine_base


def test_gated_adapter_with_the_right_token(worker, demo_models, hub_server) -> None:
    adapter = {"repo_id": demo_models.test_repos.gated}
    response = generate(worker, hub_server.gated_token, adapter=adapter)
    assert response.status_code == 200, response.text


def test_metrics_expose_switch_inference_queue_and_cache_series(worker) -> None:
    generate(worker, adapter={"repo_id": LORA_R4})
    text = httpx.get(f"{worker.ops_url}/metrics").text
    for series in (
        'loraplex_worker_adapter_switch_seconds_count{tier="none"}',
        'loraplex_worker_adapter_switch_seconds_bucket{le="0.001",tier="hub"}',
        'loraplex_worker_adapter_switch_seconds_count{tier="slow"}',
        "loraplex_worker_inference_seconds_count",
        "loraplex_worker_queue_depth 0.0",
        "loraplex_worker_resident_adapters",
        "loraplex_worker_resident_adapter_bytes",
        "loraplex_worker_host_adapters",
        "loraplex_worker_host_adapter_bytes",
        'loraplex_worker_requests_total{code="200"}',
    ):
        assert series in text, series
    resident = next(
        line for line in text.splitlines() if line.startswith("loraplex_worker_resident_adapters ")
    )
    assert float(resident.split()[1]) >= 1


def test_the_metrics_port_answers_errors_in_the_documented_shape(worker) -> None:
    """No generation there, and a wrong path or method is {"error"}, not the framework's."""
    for method, path, status in (
        ("POST", "/v1/generate", 404),
        ("GET", "/v1/state", 404),
        ("POST", "/metrics", 405),
    ):
        resp = httpx.request(method, f"{worker.ops_url}{path}", json={})
        assert resp.status_code == status, (method, path)
        assert set(resp.json()) == {"error"}, resp.text


@pytest.fixture
def gate(worker: WorkerServer, monkeypatch: pytest.MonkeyPatch):
    """Hold the device busy: each generation waits for ``gate.open`` (stand-in for a slow GPU)."""
    engine: Engine = worker.runtime.engine
    opened, entered = threading.Event(), threading.Event()
    calls: list[str] = []
    original = engine.generate

    def gated(request, token=None, cancel=None):
        calls.append(request.prompt)
        entered.set()
        assert opened.wait(30), "test never opened the gate"
        return original(request, token, cancel)

    monkeypatch.setattr(engine, "generate", gated)
    yield type("Gate", (), {"open": opened, "entered": entered, "calls": calls})
    opened.set()


def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


async def test_full_queue_is_429_with_retry_after_and_gone_clients_are_dropped(
    worker: WorkerServer, gate
) -> None:
    executor = worker.runtime.executor
    async with httpx.AsyncClient(base_url=worker.url, headers=worker.headers, timeout=30) as client:

        def post(prompt: str):
            return asyncio.create_task(
                client.post("/v1/generate", json={**BASE_BODY, "prompt": prompt})
            )

        running = post("running")
        await asyncio.to_thread(gate.entered.wait, 10)
        kept = post("kept")
        async with httpx.AsyncClient(
            base_url=worker.url, headers=worker.headers, timeout=30
        ) as leaving_client:
            leaving = asyncio.create_task(
                leaving_client.post("/v1/generate", json={**BASE_BODY, "prompt": "leaving"})
            )
            await asyncio.to_thread(wait_for, lambda: executor.depth == 2)
            full = await client.post("/v1/generate", json=BASE_BODY)
            assert full.status_code == 429
            assert int(full.headers["retry-after"]) >= 1
            assert "queue is full" in full.json()["error"]
            dropped_before = executor.queue.dropped
            leaving.cancel()  # the client goes away while its request waits
        await asyncio.to_thread(wait_for, lambda: executor.queue.dropped == dropped_before + 1)
        assert executor.depth == 1
        gate.open.set()
        assert (await running).status_code == 200
        assert (await kept).status_code == 200
    assert gate.calls == ["running", "kept"]
    metrics = httpx.get(f"{worker.ops_url}/metrics").text
    assert "loraplex_worker_dropped_requests_total 1.0" in metrics


async def test_same_adapter_requests_overtake_at_most_max_overtake(worker, gate) -> None:
    """With max_overtake=1 and the gate shut, queue B then A; A (same as running) goes first."""
    executor = worker.runtime.executor
    adapter_a = {"repo_id": LORA_R4}
    adapter_b = {"repo_id": LORA_R8_ALPHA16}
    async with httpx.AsyncClient(base_url=worker.url, headers=worker.headers, timeout=30) as client:

        def post(prompt: str, adapter: dict):
            body = {**BASE_BODY, "prompt": prompt, "adapter": adapter}
            return asyncio.create_task(client.post("/v1/generate", json=body))

        first = post("a-running", adapter_a)
        await asyncio.to_thread(gate.entered.wait, 10)
        b = post("b-waiting", adapter_b)
        await asyncio.to_thread(wait_for, lambda: executor.depth == 1)
        a = post("a-later", adapter_a)
        await asyncio.to_thread(wait_for, lambda: executor.depth == 2)
        gate.open.set()
        for task in (first, b, a):
            assert (await task).status_code == 200
    assert gate.calls == ["a-running", "a-later", "b-waiting"]


def test_readyz_is_503_until_the_warm_up_generation_is_done(hub_cache: Path) -> None:
    release = threading.Event()

    def slow_load(settings):
        assert release.wait(30), "test never released the load"
        return Engine.load(settings)

    server = WorkerServer(tiny_worker_settings(hub_cache), engine_factory=slow_load).start()
    try:
        assert httpx.get(f"{server.ops_url}/healthz").status_code == 200
        ready = httpx.get(f"{server.ops_url}/readyz")
        assert ready.status_code == 503 and "warming up" in ready.json()["error"]
        early = generate(server)
        assert early.status_code == 503 and int(early.headers["retry-after"]) >= 1
        assert early.json()["estimated_time"] > 0
        state = httpx.get(f"{server.url}/v1/state", headers=server.headers)
        assert state.json()["ready"] is False
        release.set()
        server.wait_ready()
        assert generate(server).status_code == 200
    finally:
        release.set()
        server.stop()


def test_a_base_that_cannot_load_fails_liveness_with_the_reason(hub_cache: Path) -> None:
    settings = tiny_worker_settings(hub_cache, base_model="loraplex-test/no-such-base")
    server = WorkerServer(settings).start()
    try:
        wait_for(lambda: httpx.get(f"{server.ops_url}/healthz").status_code == 503)
        error = httpx.get(f"{server.ops_url}/readyz").json()["error"]
        assert "loraplex-test/no-such-base" in error and "not found" in error
    finally:
        server.stop()


def test_any_load_failure_fails_liveness(hub_cache: Path) -> None:
    """E.g. a model_index.json naming a pipeline class this diffusers lacks (AttributeError):
    the worker must not sit unready forever while liveness says it is fine."""

    def unknown_pipeline_class(settings):
        raise AttributeError("module diffusers has no attribute 'FuturePipeline'")

    server = WorkerServer(
        tiny_worker_settings(hub_cache), engine_factory=unknown_pipeline_class
    ).start()
    try:
        wait_for(lambda: httpx.get(f"{server.ops_url}/healthz").status_code == 503)
        assert "FuturePipeline" in httpx.get(f"{server.ops_url}/healthz").json()["error"]
    finally:
        server.stop()


# --- the closed API: only the router (the worker secret) -------------------------------------


@pytest.mark.parametrize(
    ("secret", "status", "text"),
    [(None, 401, "router only"), ("not-the-worker-secret-at-all", 403, "not this worker's")],
    ids=["no-secret", "wrong-secret"],
)
def test_generate_and_state_need_the_worker_secret(
    worker: WorkerServer, demo_models, secret: str | None, status: int, text: str
) -> None:
    """A caller that is not the router gets the documented error shape, and nothing else: no
    image, no adapter names (state lists private repos' commits)."""
    headers = {Headers.WORKER_SECRET: secret} if secret else {}
    for response in (
        generate(worker, secret=secret, adapter={"repo_id": LORA_R4}),
        generate(worker, secret=secret, prompt=""),  # checked before the body: not a 400
        httpx.post(f"{worker.url}/v1/generate", content=b"{not json", headers=headers),
        httpx.get(f"{worker.url}/no/such/path", headers=headers),  # no route map either
        httpx.get(f"{worker.url}/v1/state", headers=headers),
    ):
        assert response.status_code == status, response.text
        assert set(response.json()) == {"error"} and text in response.json()["error"]
        assert demo_models.test_repos.private not in response.text


def test_health_and_metrics_live_only_on_the_metrics_port(worker: WorkerServer) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{worker.ops_url}{path}").status_code == 200, path
        assert httpx.get(f"{worker.url}{path}", headers=worker.headers).status_code == 404, path
    for path in ("/docs", "/openapi.json"):
        assert httpx.get(f"{worker.url}{path}", headers=worker.headers).status_code == 404, path
    assert httpx.post(f"{worker.ops_url}/v1/generate", json=BASE_BODY).status_code == 404
    assert httpx.get(f"{worker.ops_url}/v1/state").status_code == 404


def test_without_a_secret_the_worker_serves_only_on_loopback(hub_cache: Path) -> None:
    with pytest.raises(ValueError, match="LORAPLEX_WORKER_SECRET"):
        create_app(tiny_worker_settings(hub_cache, host="0.0.0.0", secret=None))
    open_worker = create_app(tiny_worker_settings(hub_cache, secret=None))  # 127.0.0.1
    assert open_worker.title == "loraplex worker"


# --- access re-checked for cached gated/private adapters ---------------------------------------


@pytest.mark.parametrize(
    ("repo", "refused_status", "refused_text"),
    [("private", 404, "not found"), ("gated", 403, "refused")],
)
def test_a_cached_closed_adapter_still_needs_the_users_token(
    worker: WorkerServer, demo_models, hub_server, repo: str, refused_status: int, refused_text
) -> None:
    """Loaded once with the right token (now resident and active), the adapter is refused to
    a caller without a token (401) or with a token the Hub refuses (as the Hub answers), by
    commit and by branch, and still served to the right token."""
    repo_id = getattr(demo_models.test_repos, repo)
    first = generate(worker, hub_server.gated_token, adapter={"repo_id": repo_id})
    assert first.status_code == 200, first.text
    commit = first.headers[Headers.ADAPTER_COMMIT]
    state = httpx.get(f"{worker.url}/v1/state", headers=worker.headers).json()
    assert state["active_adapter"] == f"{repo_id}@{commit}"
    for revision in (commit, "main"):
        adapter = {"repo_id": repo_id, "revision": revision}
        anonymous = generate(worker, adapter=adapter)
        assert anonymous.status_code == 401, anonymous.text
        assert "token" in anonymous.json()["error"]
        refused = generate(worker, "hf_not_the_right_one", adapter=adapter)
        assert refused.status_code == refused_status, refused.text
        assert refused_text in refused.json()["error"]
        again = generate(worker, hub_server.gated_token, adapter=adapter)
        assert again.status_code == 200, again.text
        assert again.content == first.content


def test_access_answers_are_cached_per_token_for_the_ttl(
    worker: WorkerServer, demo_models, hub_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One Hub auth-check per (repo, token) per access_ttl_seconds; public adapters none."""
    fetcher = worker.runtime.engine.fetcher
    now = [time.monotonic()]  # the fetcher's clock, frozen (earlier answers were stamped by it)
    monkeypatch.setattr(fetcher, "_clock", lambda: now[0])
    repo_id = demo_models.test_repos.gated
    adapter = {"repo_id": repo_id}
    assert generate(worker, hub_server.gated_token, adapter=adapter).status_code == 200
    checks = hub_server.count(f"/api/models/{repo_id}/auth-check")
    for _ in range(3):
        assert generate(worker, hub_server.gated_token, adapter=adapter).status_code == 200
    assert hub_server.count(f"/api/models/{repo_id}/auth-check") == checks
    now[0] += worker.settings.access_ttl_seconds + 1
    assert generate(worker, hub_server.gated_token, adapter=adapter).status_code == 200
    assert hub_server.count(f"/api/models/{repo_id}/auth-check") == checks + 1
    before = hub_server.count("/auth-check")
    assert generate(worker, adapter={"repo_id": LORA_R4}).status_code == 200
    assert hub_server.count("/auth-check") == before
