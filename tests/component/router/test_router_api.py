"""The router over real HTTP on loopback: public APIs, errors, hold, retries, metrics.

Workers are :class:`fixtures.router_stubs.StubWorker` — real HTTP servers implementing the
worker contract without a pipeline (the router never looks at pixels). Cards come from a
:class:`LocalCardSource` directory written here. Hub resolution through the real
huggingface_hub client is in ``test_router_hub.py``; real workers in ``test_router_workers.py``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from fixtures.router_stubs import StubWorker, serve_app, stub_workers, write_card_repos
from loraplex.router.app import create_app
from loraplex.router.settings import RouterSettings
from PIL import Image

from loraplex.shared.contract import GenerateRequest, WorkerState

BASE = "org/base"
CARDS = {
    "u/style": "base_model: org/base\ntags: [lora]",
    "u/listed": "base_model: [org/unserved, org/base]\nbase_model_relation: adapter",
    "u/finetune": "base_model: org/base\ntags: [diffusers]",
    "u/unserved": "base_model: org/unserved\ntags: [lora]",
}


def write_cards(root: Path) -> Path:
    return write_card_repos(root, CARDS)


@dataclass
class Env:
    url: str
    client: httpx.AsyncClient
    workers: list[StubWorker]
    settings: RouterSettings

    async def metrics(self) -> str:
        return (await self.client.get("/metrics")).text


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with stub_workers(BASE, 2) as workers:
        settings = RouterSettings(
            static_pools={BASE: [w.url for w in workers], "org/cold": ["http://127.0.0.1:9"]},
            models_dir=write_cards(tmp_path),
            hold_timeout_s=0.3,
            estimated_warmup_s=42,
            state_poll_interval_s=0.05,
        )
        async with (
            serve_app(create_app(settings)) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as client,
        ):
            yield Env(url, client, workers, settings)


def prompt(**parameters: object) -> dict[str, object]:
    return {"inputs": "a red fox", "parameters": parameters}


async def test_hf_api_routes_a_lora_and_returns_png(env: Env) -> None:
    resp = await env.client.post("/models/u/style", json=prompt(seed=3, num_inference_steps=2))
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(resp.content)).size == (8, 8)
    sent = [req for w in env.workers for req in w.seen]
    assert len(sent) == 1
    assert sent[0].adapter is not None and str(sent[0].adapter) == "u/style@main"
    assert (sent[0].seed, sent[0].num_inference_steps) == (3, 2)
    # The answering replica is named only with debug_replica_header (tests/security).
    assert "x-loraplex-worker" not in resp.headers


async def test_curl_form_content_type_is_read_as_json(env: Env) -> None:
    """``curl -d '{...}'`` sends application/x-www-form-urlencoded; the HF API reads JSON."""
    body = b'{"inputs": "a red fox", "parameters": {"seed": 5}}'
    form = {"content-type": "application/x-www-form-urlencoded"}
    resp = await env.client.post("/models/u/style", content=body, headers=form)
    assert resp.status_code == 200, resp.text
    assert [r.seed for w in env.workers for r in w.seen] == [5]
    bad = await env.client.post("/models/u/style", content=b"inputs=a+fox", headers=form)
    assert bad.status_code == 400 and "error" in bad.json()


async def test_list_base_model_lora_header_and_accept(env: Env) -> None:
    resp = await env.client.post("/models/u/listed", json=prompt())
    assert resp.status_code == 200
    resp = await env.client.post(
        f"/models/{BASE}", json=prompt(), headers={"lora": "u/style", "accept": "image/webp"}
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "image/webp"
    webp = [r for w in env.workers for r in w.seen if r.output_format == "webp"]
    assert len(webp) == 1 and str(webp[0].adapter) == "u/style@main"
    base_only = await env.client.post(f"/models/{BASE}", json=prompt())
    assert base_only.status_code == 200


@pytest.mark.parametrize(
    ("model_id", "status", "needle"),
    [
        ("u/finetune", 422, "not a LoRA"),
        ("u/unserved", 422, "org/unserved, which is not served"),
        ("u/nothing", 404, "no model"),
        ("bad..id", 400, "not a valid Hub repo id"),
    ],
)
async def test_resolution_errors(env: Env, model_id: str, status: int, needle: str) -> None:
    resp = await env.client.post(f"/models/{model_id}", json=prompt())
    assert resp.status_code == status
    assert needle in resp.json()["error"]
    if status == 422:
        assert BASE in resp.json()["error"]  # the message lists the served bases
    assert not any(w.seen for w in env.workers)


async def test_bad_parameters_are_400_with_field_names(env: Env) -> None:
    resp = await env.client.post("/models/u/style", json=prompt(width=4096, steps=3))
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert "parameters.width" in error and "parameters.steps" in error


async def test_hf_target_size_reaches_the_worker_as_width_and_height(env: Env) -> None:
    """The HF task spec's ``target_size``; ``scheduler`` is refused by name, not as unknown."""
    body = prompt(target_size={"width": 64, "height": 128}, seed=11)
    assert (await env.client.post("/models/u/style", json=body)).status_code == 200
    seen = next(r for w in env.workers for r in w.seen if r.seed == 11)
    assert (seen.width, seen.height) == (64, 128)
    resp = await env.client.post("/models/u/style", json=prompt(scheduler="DPM"))
    assert resp.status_code == 400 and "per-request schedulers" in resp.json()["error"]


async def test_pool_without_ready_replica_holds_then_503(env: Env) -> None:
    started = time.monotonic()
    held = asyncio.create_task(env.client.post("/models/org/cold", json=prompt()))

    async def pending_seen() -> bool:
        return 'loraplex_router_pending{base_model="org/cold"} 1.0' in await env.metrics()

    deadline = time.monotonic() + 5
    while not await pending_seen():
        assert time.monotonic() < deadline, "pending gauge never rose"
    resp = await held
    assert time.monotonic() - started >= env.settings.hold_timeout_s
    assert resp.status_code == 503
    assert resp.json()["estimated_time"] == 42 and resp.headers["retry-after"] == "42"
    assert 'loraplex_router_pending{base_model="org/cold"} 0.0' in await env.metrics()


async def test_wait_for_model_false_answers_503_at_once(env: Env) -> None:
    body = {**prompt(), "options": {"wait_for_model": False}}
    started = time.monotonic()
    resp = await env.client.post("/models/org/cold", json=body)
    assert resp.status_code == 503 and time.monotonic() - started < env.settings.hold_timeout_s
    resp = await env.client.post(
        "/models/org/cold", json=prompt(), headers={"x-wait-for-model": "false"}
    )
    assert resp.status_code == 503 and "estimated_time" in resp.json()


async def test_held_request_proceeds_when_a_replica_becomes_ready(tmp_path: Path) -> None:
    async with stub_workers(BASE, 1, ready=False) as (worker,):
        settings = RouterSettings(
            static_pools={BASE: [worker.url]},
            models_dir=write_cards(tmp_path),
            hold_timeout_s=10,
            state_poll_interval_s=0.05,
        )
        async with serve_app(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as c:
            held = asyncio.create_task(c.post("/models/u/style", json=prompt(), timeout=10))
            deadline = time.monotonic() + 5
            while 'pending{base_model="org/base"} 1.0' not in (await c.get("/metrics")).text:
                assert time.monotonic() < deadline, "request was never held"
            assert not held.done()
            worker.ready = True
            resp = await held
            assert resp.status_code == 200


async def test_failed_replica_is_retried_on_another(env: Env) -> None:
    broken, healthy = env.workers
    broken.fail_status = 500
    for _ in range(6):
        answered = len(healthy.seen)
        resp = await env.client.post("/models/u/style", json=prompt())
        assert resp.status_code == 200
        assert len(healthy.seen) == answered + 1  # the healthy replica served it
        broken.drop_connection = not broken.drop_connection


async def test_lone_replica_failing_once_is_held_for_and_retried(tmp_path: Path) -> None:
    """One replica whose connection drops (a restart): the request waits for it to be ready
    again instead of failing."""
    async with stub_workers(BASE, 1, drop_next=1) as (worker,):
        settings = RouterSettings(
            static_pools={BASE: [worker.url]},
            models_dir=write_cards(tmp_path),
            state_poll_interval_s=0.05,
            hold_timeout_s=5,
        )
        async with serve_app(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as c:
            resp = await c.post("/models/u/style", json=prompt(), timeout=10)
            assert resp.status_code == 200 and len(worker.seen) == 2
    # No seed given: the router drew one before the first try, so the retry asked for the
    # same image the first try would have returned.
    first, retried = worker.seen
    assert first.seed is not None and retried.seed == first.seed


async def test_all_replicas_failing_is_502_and_worker_4xx_passes_through(env: Env) -> None:
    for worker in env.workers:
        worker.fail_status = 500
    resp = await env.client.post("/models/u/style", json=prompt())
    assert resp.status_code == 502 and "failed after 2 attempt" in resp.json()["error"]
    for worker in env.workers:
        worker.fail_status = 413
        worker.ready = True
    # Wait for the poller to bring the replicas back (they were marked failed).
    deadline = time.monotonic() + 5
    while (resp := await env.client.post("/models/u/style", json=prompt())).status_code == 502:
        assert time.monotonic() < deadline
    assert resp.status_code == 413 and resp.json() == {"error": "stub failure"}


async def test_a_request_level_502_does_not_take_replicas_out(env: Env) -> None:
    """A worker's 502 (say the Hub failed an adapter download) is about that request: retried
    elsewhere, reported with the worker's message, and the replicas stay ready for others."""
    for worker in env.workers:
        worker.fail_status = 502
    resp = await env.client.post("/models/u/style", json=prompt())
    assert resp.status_code == 502 and "stub failure" in resp.json()["error"]
    for worker in env.workers:
        worker.fail_status = None
    no_wait = {"x-wait-for-model": "false"}
    assert (await env.client.post(f"/models/{BASE}", json=prompt(), headers=no_wait)).is_success


async def test_full_queues_are_429(env: Env) -> None:
    for worker in env.workers:
        worker.fail_status = 429
    resp = await env.client.post("/models/u/style", json=prompt())
    assert resp.status_code == 429 and "retry-after" in resp.headers


async def test_deadline_gives_504(tmp_path: Path) -> None:
    async with stub_workers(BASE, 1, delay_s=5) as (worker,):
        settings = RouterSettings(
            static_pools={BASE: [worker.url]},
            models_dir=write_cards(tmp_path),
            request_timeout_s=0.3,
        )
        async with serve_app(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as c:
            resp = await c.post("/models/u/style", json=prompt(), timeout=10)
            assert resp.status_code == 504 and "deadline" in resp.json()["error"]


async def test_deadline_during_hold_gives_504_not_503(tmp_path: Path) -> None:
    """A pool that never gets ready: the hold would last 5 s, the request's deadline is 0.3 s."""
    settings = RouterSettings(
        static_pools={"org/cold": ["http://127.0.0.1:9"]},
        models_dir=write_cards(tmp_path),
        request_timeout_s=0.3,
        hold_timeout_s=5,
    )
    async with serve_app(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as c:
        started = time.monotonic()
        resp = await c.post("/models/org/cold", json=prompt(), timeout=10)
        assert resp.status_code == 504 and "deadline" in resp.json()["error"]
        assert time.monotonic() - started < 3


async def test_client_disconnect_cancels_the_upstream_request(tmp_path: Path) -> None:
    async with stub_workers(BASE, 1, delay_s=30) as (worker,):
        settings = RouterSettings(
            static_pools={BASE: [worker.url]}, models_dir=write_cards(tmp_path)
        )
        async with serve_app(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as c:
            request = asyncio.create_task(c.post("/models/u/style", json=prompt(), timeout=60))
            deadline = time.monotonic() + 5
            while worker.in_flight == 0:
                assert time.monotonic() < deadline, "request never reached the worker"
                await asyncio.sleep(0.01)
            request.cancel()  # closes the client connection
            while worker.cancelled == 0:
                assert time.monotonic() < deadline, "upstream request was not cancelled"
                await asyncio.sleep(0.01)
            assert worker.in_flight == 0


async def test_metrics_contract_names_and_labels(env: Env) -> None:
    await env.client.post("/models/u/style", json=prompt())
    await env.client.post(f"/models/{BASE}", json=prompt())
    await env.client.post("/models/u/nothing", json=prompt())
    text = await env.metrics()
    assert (
        'loraplex_router_requests_total{base_model="org/base",code="200",route="adapter"} 1.0'
        in text
    )
    assert (
        'loraplex_router_requests_total{base_model="org/base",code="200",route="base"} 1.0' in text
    )
    assert (
        'loraplex_router_requests_total{base_model="none",code="404",route="adapter"} 1.0' in text
    )
    assert "loraplex_router_resolve_cache_total" in text
    assert "loraplex_router_request_seconds_bucket" in text
    assert "u/style" not in text  # no per-adapter label


async def test_models_health_ready(env: Env) -> None:
    models = (await env.client.get("/v1/models")).json()
    by_id = {m["id"]: m for m in models["data"]}
    assert by_id[BASE]["ready_replicas"] == 2 and by_id["org/cold"]["ready_replicas"] == 0
    assert (await env.client.get("/healthz")).status_code == 200
    assert (await env.client.get("/readyz")).status_code == 200


async def test_openai_sdk_unchanged(env: Env) -> None:
    from openai import OpenAI

    def client_code() -> tuple[object, object]:  # what a user writes, unchanged
        client = OpenAI(base_url=f"{env.url}/v1", api_key="unused", max_retries=0)
        b64 = client.images.generate(
            model="u/style", prompt="a fox", n=2, size="64x64", response_format="b64_json"
        )
        url = client.images.generate(model="u/style", prompt="a fox", response_format="url")
        return b64, url

    result, as_url = await asyncio.to_thread(client_code)  # the router serves on this loop
    assert len(result.data) == 2
    for image in result.data:
        assert Image.open(io.BytesIO(base64.b64decode(image.b64_json))).format == "PNG"
    assert as_url.data[0].url.startswith("data:image/png;base64,")
    sizes = {(r.width, r.height) for w in env.workers for r in w.seen}
    assert (64, 64) in sizes


async def test_hf_inference_client_unchanged(env: Env) -> None:
    from huggingface_hub import InferenceClient

    def client_code() -> Image.Image:  # what a user writes, unchanged
        client = InferenceClient(base_url=f"{env.url}/models/u/style")
        return client.text_to_image("a fox", seed=7, num_inference_steps=2)

    image = await asyncio.to_thread(client_code)
    assert image.size == (8, 8)
    assert any(r.seed == 7 for w in env.workers for r in w.seen)


class FirstSeedFails(StubWorker):
    """Seed 0 fails at once; other seeds answer a little later (so they are left unread)."""

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        payload = GenerateRequest.model_validate_json(await request.read())
        if payload.seed == 0:
            return web.json_response({"error": "bad seed"}, status=422)
        await asyncio.sleep(0.2)  # answer after seed 0's 422
        return web.Response(body=self.body, content_type="image/png")


async def test_unread_streamed_answers_release_their_replica(tmp_path: Path) -> None:
    """OpenAI n=2 where the first image fails: the second, streamed answer is never read, and
    must still give back its replica's in-flight count (or picking skews for good)."""
    worker = FirstSeedFails(BASE)
    await worker.start()
    try:
        settings = RouterSettings(
            static_pools={BASE: [worker.url]},
            models_dir=write_cards(tmp_path),
            buffer_limit_bytes=10,  # every answer streams
        )
        app = create_app(settings)
        async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
            body = {"model": BASE, "prompt": "a fox", "n": 2, "seed": 0}
            resp = await c.post("/v1/images/generations", json=body)
            assert resp.status_code == 422
            pool = app.state.runtime.registry.get(BASE)
            deadline = time.monotonic() + 5
            while any(r.own_inflight for r in pool.replicas.values()):
                assert time.monotonic() < deadline, "an unread answer kept its replica busy"
                await asyncio.sleep(0.02)
            ok = await c.post("/v1/images/generations", json={**body, "seed": 1})
            assert ok.status_code == 200 and len(ok.json()["data"]) == 2
            assert all(r.own_inflight == 0 for r in pool.replicas.values())
    finally:
        await worker.stop()


class HugeState(StubWorker):
    """A broken or hostile worker: a valid /v1/state answer of ~4 MiB, streamed without a
    length (so only reading it shows its size)."""

    async def _state(self, request: web.Request) -> web.StreamResponse:
        self.resident = [f"org/lora-{i:058d}@main" for i in range(60_000)]
        body = (await super()._state(request)).body
        answer = web.StreamResponse()
        await answer.prepare(request)
        for start in range(0, len(body), 65536):
            await answer.write(body[start : start + 65536])
        return answer


async def test_an_oversized_state_answer_takes_the_replica_out_unread(tmp_path: Path) -> None:
    worker = HugeState(BASE)
    await worker.start()
    try:
        settings = RouterSettings(
            static_pools={BASE: [worker.url]},
            models_dir=write_cards(tmp_path),
            state_poll_interval_s=0.05,
            hold_timeout_s=0.2,
        )
        app = create_app(settings)
        async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
            models = (await c.get("/v1/models")).json()["data"]
            assert models[0]["ready_replicas"] == 0
            resp = await c.post(f"/models/{BASE}", json=prompt())
            assert resp.status_code == 503
    finally:
        await worker.stop()


async def test_a_broken_worker_answer_never_logs_the_users_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A gated adapter forwards the caller's token; a malformed worker answer makes aiohttp
    raise an error whose repr holds the request headers — the log must not show them."""

    state = (
        WorkerState(base_model=BASE, ready=True, queue_depth=0, queue_capacity=4, free_slots=4)
        .model_dump_json()
        .encode()
    )

    async def malformed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read(65536)
        if request.startswith(b"GET /v1/state"):  # healthy state, broken generations
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d"
            writer.write(head % len(state) + b"\r\nConnection: close\r\n\r\n" + state)
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(malformed, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cards = write_cards(tmp_path)
    (cards / "u/gated").mkdir(parents=True)
    (cards / "u/gated/README.md").write_text(
        f"---\nbase_model: {BASE}\ntags: [lora]\ngated: true\n---\n"
    )
    settings = RouterSettings(
        static_pools={BASE: [f"http://127.0.0.1:{port}"]},
        models_dir=cards,
        models_dir_token="hf_do_not_log_me",  # the token that opens the gated card
        attempts=1,
        hold_timeout_s=0.2,
    )
    try:
        async with serve_app(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as c:
            secret = {"authorization": "Bearer hf_do_not_log_me"}
            resp = await c.post("/models/u/gated", json=prompt(), headers=secret, timeout=10)
            assert resp.status_code >= 500
    finally:
        server.close()
    assert any("failed before answering" in r.getMessage() for r in caplog.records), [
        (r.name, r.getMessage()) for r in caplog.records
    ]
    assert not any("hf_do_not_log_me" in r.getMessage() for r in caplog.records)
