"""Fault matrix, Hub rows: the Hub down, and the Hub slow, under a router.

Real parts: the router app under uvicorn on loopback, :class:`HubCardSource` with the real
``huggingface_hub`` client talking HTTP to the fixture Hub (:class:`fixtures.faults.SlowableHub`:
``.stop()`` refuses connections, ``delay_s`` delays every answer). The worker is a stub
(``fixtures.router_stubs``): what is under test is resolution, not generation.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fixtures.faults import SlowableHub
from fixtures.router_stubs import StubWorker, serve_app, stub_workers
from huggingface_hub import HfApi
from loraplex.router.app import create_app
from loraplex.router.cards import HubCardSource
from loraplex.router.settings import RouterSettings

pytestmark = pytest.mark.slow
BODY = {"inputs": "a fox", "parameters": {"num_inference_steps": 2}}
TIMEOUT_S = 1.0  # the card source's per-lookup deadline
LOOKUP_THREADS = 4


@pytest.fixture
def hub(demo_models) -> Iterator[SlowableHub]:
    server = SlowableHub(demo_models.root).start()
    yield server
    server.delay_s = 0.0
    server.stop()


@asynccontextmanager
async def router(
    hub_url: str, base: str
) -> AsyncIterator[tuple[httpx.AsyncClient, StubWorker, HubCardSource]]:
    """TTL 0: every lookup asks the Hub, so a cached route must come from stale-on-error."""
    async with stub_workers(base, 1) as (worker,):
        config = RouterSettings(static_pools={base: [worker.url]}, resolve_ttl_s=0)
        source = HubCardSource(
            HfApi(endpoint=hub_url), timeout_s=TIMEOUT_S, max_concurrent=LOOKUP_THREADS
        )
        app = create_app(config, card_source=source)
        async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield client, worker, source


def lookup_threads(source: HubCardSource) -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith(source.thread_prefix))


async def test_hub_down_cached_routes_serve_unknown_ids_503_with_retry_after(
    hub: SlowableHub, demo_models
) -> None:
    """Hub refusing connections. Figures: 20 requests for a cached LoRA → 20 × 200 (stale
    routes); 10 for ids never seen → 10 × 503 with Retry-After, 0 × 500/502; after the Hub
    is back, a never-seen id routes (200) on the first try."""
    cached, *others = [spec.repo_id for spec in demo_models.demo.adapters]
    async with router(hub.url, demo_models.base) as (client, worker, _):
        assert (await client.post(f"/models/{cached}", json=BODY)).status_code == 200
        hub.stop()
        codes = [(await client.post(f"/models/{cached}", json=BODY)).status_code for _ in range(20)]
        assert codes == [200] * 20
        unknown = [await client.post(f"/models/org/never-seen-{i}", json=BODY) for i in range(10)]
        assert [r.status_code for r in unknown] == [503] * 10
        assert all(int(r.headers["Retry-After"]) >= 1 for r in unknown)
        assert "retry" in unknown[0].json()["error"]
        hub.start()
        resp = await client.post(f"/models/{others[0]}", json=BODY)
        assert resp.status_code == 200 and worker.seen[-1].adapter.repo_id == others[0]


async def test_hub_slow_lookups_time_out_and_threads_stay_bounded(
    hub: SlowableHub, demo_models
) -> None:
    """Hub answering after 5 s (5× the lookup deadline). Figures: a cached LoRA still 200
    within ~1 s (the deadline, then the stale route); 40 concurrent requests for distinct
    unknown ids → 40 × 503 with Retry-After, all within ~1 s, with at most 4 lookup threads
    alive (the pool's bound); the Hub fast again →
    a never-seen LoRA routes at once."""
    cached, *others = [spec.repo_id for spec in demo_models.demo.adapters]
    async with router(hub.url, demo_models.base) as (client, worker, source):
        assert (await client.post(f"/models/{cached}", json=BODY)).status_code == 200
        hub.delay_s = 5.0
        started = time.monotonic()
        assert (await client.post(f"/models/{cached}", json=BODY)).status_code == 200
        assert time.monotonic() - started < TIMEOUT_S + 1.0

        peak = 0

        async def watch_threads() -> None:
            nonlocal peak
            while True:
                peak = max(peak, lookup_threads(source))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch_threads())
        started = time.monotonic()
        answers = await asyncio.gather(
            *(client.post(f"/models/org/slow-unknown-{i}", json=BODY) for i in range(40))
        )
        took = time.monotonic() - started
        watcher.cancel()
        assert [r.status_code for r in answers] == [503] * 40
        assert all(int(r.headers["Retry-After"]) >= 1 for r in answers)
        assert took < TIMEOUT_S + 2.0
        assert peak <= LOOKUP_THREADS

        hub.delay_s = 0.0
        fresh = others[0]

        async def routes() -> bool:
            return (await client.post(f"/models/{fresh}", json=BODY)).status_code == 200

        deadline = time.monotonic() + 15  # the slow lookups' threads drain within their timeout
        while not await routes():
            assert time.monotonic() < deadline, (
                "a never-seen LoRA did not route after the Hub healed"
            )
            await asyncio.sleep(0.2)
        assert worker.seen[-1].adapter.repo_id == fresh
