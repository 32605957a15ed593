"""Fleet-wide placement through the real router: cold adapters go home, hot ones spread.

The router (its app over real HTTP on loopback, the default PlacementPicker) sends to two
:class:`fixtures.router_stubs.StubWorker` servers that speak the worker contract and report
``GET /v1/state`` (they export no load seconds, so the router prices with its defaults, as for
an older worker). Homes are recomputed here with :func:`loraplex.router.homes.homes` over the
workers' URLs, the way every router replica computes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fixtures.router_stubs import StubWorker, serve_app, stub_workers, write_card_repos
from loraplex.router.app import create_app
from loraplex.router.homes import homes
from loraplex.router.settings import RouterSettings

BASE = "org/base"
COLD = [f"u/cold-{i:02d}" for i in range(16)]
HOT = "u/hot"
CARDS = {repo: f"base_model: {BASE}\ntags: [lora]" for repo in [*COLD, HOT]}
BODY = {"inputs": "a fox", "parameters": {"num_inference_steps": 2}}


@dataclass
class Env:
    client: httpx.AsyncClient
    workers: list[StubWorker]

    def served(self, repo: str) -> dict[str, list[str]]:
        """Worker URL → the adapter keys of ``repo`` it was sent."""
        return {
            w.url: [str(r.adapter) for r in w.seen if r.adapter and r.adapter.repo_id == repo]
            for w in self.workers
        }


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with stub_workers(BASE, 2) as workers:
        settings = RouterSettings(
            static_pools={BASE: [w.url for w in workers]},
            models_dir=write_card_repos(tmp_path, CARDS),
            state_poll_interval_s=0.05,
            hot_window_requests=20,  # a share of 1/4 = 5 of the last 20 requests
            max_homes=2,
            max_queue_per_replica=4,  # loose bound: homes, not bounded load, decide here
        )
        async with (
            serve_app(create_app(settings)) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as client,
        ):
            yield Env(client, workers)


async def test_a_cold_adapter_goes_to_its_home_and_a_hot_one_to_more_homes(env: Env) -> None:
    urls = [w.url for w in env.workers]
    for repo in COLD:  # one request each, one after the other: both workers idle every time
        assert (await env.client.post(f"/models/{repo}", json=BODY)).status_code == 200
    for repo in COLD:
        served = env.served(repo)
        [key] = [k for keys in served.values() for k in keys]
        assert served[homes(key, urls)[0]] == [key], f"{repo} did not go to its home"
    assert all(w.seen for w in env.workers)  # the homes split the catalogue between them

    for worker in env.workers:
        worker.delay_s = 0.3  # requests overlap, so queues form
    for repo in COLD[:3]:  # three at once for each: a share of 4/20 stays below 1/4
        await _concurrently(env, repo, 3)
        busy = sum(1 for keys in env.served(repo).values() if keys)
        assert busy == 1, f"{repo} left its one home though the home was within the bound"
    for _ in range(3):  # rounds of three at once: 9 of the last 20 requests, two homes
        await _concurrently(env, HOT, 3)
    spread = env.served(HOT)
    assert all(spread.values()), f"the hot adapter stayed on one replica: {spread}"


async def _concurrently(env: Env, repo: str, count: int) -> None:
    answers = await asyncio.gather(
        *(env.client.post(f"/models/{repo}", json=BODY) for _ in range(count))
    )
    assert [a.status_code for a in answers] == [200] * count
