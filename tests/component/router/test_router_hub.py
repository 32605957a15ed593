"""Resolution through the real ``huggingface_hub`` client against the Hub-compatible server.

The router runs on loopback with :class:`HubCardSource` pointed at the fixture Hub (real
``HfApi.model_info``/``auth_check`` over HTTP) and one stub worker behind the tiny-sd pool; the
demo and test repos come from the ``demo_models`` fixture.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fixtures.router_stubs import StubWorker, serve_app, stub_workers
from huggingface_hub import HfApi
from loraplex.router.app import create_app
from loraplex.router.cards import HubCardSource
from loraplex.router.settings import RouterSettings

BODY = {"inputs": "a fox", "parameters": {"num_inference_steps": 2}}


@asynccontextmanager
async def router(
    hub_url: str, base: str, **settings: object
) -> AsyncIterator[tuple[httpx.AsyncClient, StubWorker]]:
    async with stub_workers(base, 1) as (worker,):
        config = RouterSettings(static_pools={base: [worker.url]}, **settings)
        source = HubCardSource(HfApi(endpoint=hub_url), timeout_s=5)
        app = create_app(config, card_source=source)
        async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=20) as client:
            yield client, worker


@pytest.fixture
async def via_hub(hub_server, demo_models) -> AsyncIterator[tuple[httpx.AsyncClient, StubWorker]]:
    async with router(hub_server.url, demo_models.base) as pair:
        yield pair


def sha_of(hub_url: str, repo_id: str, token: str | None = None) -> str:
    info = HfApi(endpoint=hub_url).model_info(repo_id, token=token or False)
    assert info.sha
    return info.sha


async def test_every_demo_adapter_routes_to_tiny_sd_pinned_to_its_commit(
    via_hub, hub_server, demo_models
) -> None:
    client, worker = via_hub
    ids = [spec.repo_id for spec in demo_models.demo.adapters] + [demo_models.test_repos.tag_only]
    for repo_id in ids:
        resp = await client.post(f"/models/{repo_id}", json=BODY)
        assert resp.status_code == 200, (repo_id, resp.text)
        sent = worker.seen[-1].adapter
        assert sent is not None
        assert (sent.repo_id, sent.revision) == (repo_id, sha_of(hub_server.url, repo_id))


async def test_the_base_itself_and_the_lora_header(via_hub, demo_models) -> None:
    client, worker = via_hub
    assert (await client.post(f"/models/{demo_models.base}", json=BODY)).status_code == 200
    assert worker.seen[-1].adapter is None
    lora = demo_models.demo.adapters[0].repo_id
    resp = await client.post(f"/models/{demo_models.base}", json=BODY, headers={"lora": lora})
    assert resp.status_code == 200 and worker.seen[-1].adapter.repo_id == lora


async def test_gated_and_private_need_the_right_token(via_hub, hub_server, demo_models) -> None:
    client, worker = via_hub
    repos = demo_models.test_repos
    good = {"authorization": f"Bearer {hub_server.gated_token}"}
    wrong = {"authorization": "Bearer hf_wrong"}
    assert (await client.post(f"/models/{repos.gated}", json=BODY)).status_code == 401
    assert (
        await client.post(f"/models/{repos.gated}", json=BODY, headers=wrong)
    ).status_code == 403
    assert (await client.post(f"/models/{repos.gated}", json=BODY, headers=good)).status_code == 200
    # The route cached for the good token is not served to a caller without it.
    assert (await client.post(f"/models/{repos.gated}", json=BODY)).status_code == 401
    assert (await client.post(f"/models/{repos.private}", json=BODY)).status_code == 401
    assert (
        await client.post(f"/models/{repos.private}", json=BODY, headers=good)
    ).status_code == 200
    assert len(worker.seen) == 2
    # The worker downloads a gated/private adapter with the caller's token; nothing else gets it.
    assert worker.authorizations == [good["authorization"]] * 2
    lora = demo_models.demo.adapters[0].repo_id
    assert (await client.post(f"/models/{lora}", json=BODY, headers=good)).status_code == 200
    assert worker.authorizations[-1] is None


@pytest.mark.parametrize(
    ("repo", "status", "needle"),
    [
        ("finetune", 422, "not a LoRA"),
        ("unserved_base", 422, "other-org/unserved-base"),
        ("wrong_task", 422, "text-classification"),
    ],
)
async def test_not_servable(via_hub, demo_models, repo: str, status: int, needle: str) -> None:
    client, _ = via_hub
    resp = await client.post(f"/models/{getattr(demo_models.test_repos, repo)}", json=BODY)
    assert resp.status_code == status
    assert needle in resp.json()["error"] and demo_models.base in resp.json()["error"]


async def test_unknown_is_404_and_malformed_is_400_without_a_hub_call(via_hub, hub_server) -> None:
    client, _ = via_hub
    resp = await client.post("/models/loraplex-demo/no-such-lora", json=BODY)
    assert resp.status_code == 404
    before = len(hub_server.requests)
    for bad in ("a..b/c", "org/na me", "-org/x"):
        assert (await client.post(f"/models/{bad}", json=BODY)).status_code == 400
    assert len(hub_server.requests) == before


async def test_hub_stopped_after_warm_up_cached_ids_still_route(
    isolated_hub_server, demo_models
) -> None:
    lora = demo_models.demo.adapters[0].repo_id
    hub = isolated_hub_server
    # TTL 0: every lookup goes to the Hub, so the second one must fall back to the stale entry.
    async with router(hub.url, demo_models.base, resolve_ttl_s=0) as (client, worker):
        assert (await client.post(f"/models/{lora}", json=BODY)).status_code == 200
        hub.stop()
        resp = await client.post(f"/models/{lora}", json=BODY)
        assert resp.status_code == 200 and worker.seen[-1].adapter.repo_id == lora
        metrics = (await client.get("/metrics")).text
        assert 'loraplex_router_resolve_cache_total{outcome="stale"} 1.0' in metrics
        never_seen = demo_models.demo.adapters[1].repo_id
        resp = await client.post(f"/models/{never_seen}", json=BODY)
        assert resp.status_code == 503 and "retry" in resp.json()["error"]  # issue 14
        assert int(resp.headers["Retry-After"]) >= 1
