"""A restart is not a failure: the router over real HTTP on loopback while its workers drop
connections, go down and come back (issue 14, item 1).

Workers are :class:`fixtures.router_stubs.StubWorker` servers that can be stopped and started
again on the same port — a restart as the router sees one: connections reset or refused, state
polls failing, then the replica ready again at the same address. Checked: requests hold and
then answer 200 (never 502) while replicas restart; all replicas down past the hold is a 503
with Retry-After; a replica that keeps dropping connections is backed off, not picked at every
poll; a pool whose workers say their base cannot load answers 503 "failing" with the reason.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from fixtures.router_stubs import StubWorker, serve_app, write_card_repos
from loraplex.router.app import create_app
from loraplex.router.settings import RouterSettings

BASE = "org/base"
BODY = {"inputs": "a red fox", "parameters": {}}


@dataclass
class RestartingWorker(StubWorker):
    """A stub worker that can go down and come back on the same port (a restart)."""

    port: int = 0
    load_error: str | None = None  # reported in /v1/state, as a worker whose base failed

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        self.port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _state(self, request: web.Request) -> web.Response:
        answer = await super()._state(request)
        if self.load_error is None:
            return answer
        assert isinstance(answer.body, bytes)
        state = {**json.loads(answer.body), "ready": False, "load_error": self.load_error}
        return web.json_response(state)


@dataclass
class Env:
    client: httpx.AsyncClient
    workers: list[RestartingWorker]

    async def pending(self) -> float:
        text = (await self.client.get("/metrics")).text
        for line in text.splitlines():
            if line.startswith(f'loraplex_router_pending{{base_model="{BASE}"}}'):
                return float(line.split()[-1])
        return 0.0


@asynccontextmanager
async def routed(
    tmp_path: Path, count: int = 2, delay_s: float = 0.0, **settings: Any
) -> AsyncIterator[Env]:
    """``count`` workers (each answering after ``delay_s``) behind a router with ``settings``."""
    workers = [RestartingWorker(BASE, delay_s=delay_s) for _ in range(count)]
    for worker in workers:
        await worker.start()
    config = RouterSettings(
        static_pools={BASE: [w.url for w in workers]},
        models_dir=write_card_repos(tmp_path, {"u/style": f"base_model: {BASE}\ntags: [lora]"}),
        state_poll_interval_s=0.05,
        state_timeout_s=0.5,
        **{"hold_timeout_s": 10.0, "request_timeout_s": 20.0, **settings},
    )
    try:
        async with (
            serve_app(create_app(config)) as url,
            httpx.AsyncClient(base_url=url, timeout=30) as client,
        ):
            yield Env(client, workers)
    finally:
        for worker in workers:
            await worker.stop()


async def until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)  # poll interval; the deadline bounds the wait


async def test_replicas_that_drop_connections_and_restart_lose_no_request(tmp_path: Path) -> None:
    """Load at concurrency 6 while one replica drops connections, then both go down at once
    and come back one after the other: every answer is 200, none a 502."""
    async with routed(tmp_path, delay_s=0.02, pick_strategy="round_robin") as env:
        first, second = env.workers
        statuses: Counter[int] = Counter()
        stop = asyncio.Event()

        async def user() -> None:
            while not stop.is_set():
                resp = await env.client.post("/models/u/style", json=BODY)
                statuses[resp.status_code] += 1

        users = [asyncio.create_task(user()) for _ in range(6)]
        await until(lambda: _true(sum(statuses.values()) >= 12), 30, "traffic")
        first.drop_connection = True  # it crashes under its requests
        seen = len(first.seen)
        await until(lambda: _true(len(first.seen) > seen), 30, "a dropped connection")
        await first.stop()
        await second.stop()  # both down at the same moment
        await until(lambda: _positive(env.pending()), 30, "requests held for the pool")
        first.drop_connection = False
        await first.start()  # restarted at the same address
        served = len(first.seen)
        await until(lambda: _true(len(first.seen) > served + 3), 30, "the restarted replica")
        await second.start()
        await asyncio.sleep(0.2)  # a little more traffic over both
        stop.set()
        await asyncio.gather(*users)
    print(f"\nstatuses under drops and restarts: {dict(statuses)}")
    assert set(statuses) == {200}, statuses


async def test_all_replicas_down_then_one_back_within_the_hold_answers_200(
    tmp_path: Path,
) -> None:
    async with routed(tmp_path, hold_timeout_s=10) as env:
        for worker in env.workers:
            await worker.stop()
        held = asyncio.create_task(env.client.post("/models/u/style", json=BODY))
        await until(lambda: _positive(env.pending()), 10, "the request to be held")
        await asyncio.sleep(0.3)  # down for a while: the request stays held, not failed
        assert not held.done()
        await env.workers[1].start()
        resp = await held
        assert resp.status_code == 200, resp.text
        assert len(env.workers[1].seen) == 1 and await env.pending() == 0


async def test_all_replicas_down_past_the_hold_is_503_with_retry_after(tmp_path: Path) -> None:
    async with routed(tmp_path, hold_timeout_s=0.4) as env:
        for worker in env.workers:
            await worker.stop()
        started = time.monotonic()
        resp = await env.client.post("/models/u/style", json=BODY)
        assert resp.status_code == 503, resp.text
        assert time.monotonic() - started >= 0.4
        assert int(resp.headers["retry-after"]) >= 1
        error = resp.json()["error"]
        assert "restarting" in error and "scaling up" not in error


async def test_a_spent_retry_budget_is_503_with_retry_after_not_502(tmp_path: Path) -> None:
    """Both replicas answer their polls but drop every generation: the request holds through
    their backoffs and retries until its budget is spent, then 503 with Retry-After."""
    settings = {"retry_budget": 4, "replica_backoff_s": 0.05, "replica_backoff_max_s": 0.1}
    async with routed(tmp_path, **settings) as env:
        for worker in env.workers:
            worker.drop_connection = True
        resp = await env.client.post("/models/u/style", json=BODY)
        assert resp.status_code == 503, resp.text
        assert "retry-after" in resp.headers and "went away" in resp.json()["error"]
        assert sum(len(w.seen) for w in env.workers) == 4  # exactly the budget


async def test_a_replica_that_keeps_dropping_connections_is_backed_off(tmp_path: Path) -> None:
    """It answers its state polls (every 50 ms) but drops generations: without a backoff it
    would get every other request (round robin); with one (1 s, doubling) it sees a few."""
    async with routed(tmp_path, replica_backoff_s=1.0, pick_strategy="round_robin") as env:
        flaky, healthy = env.workers
        flaky.drop_connection = True
        started = time.monotonic()
        statuses = Counter()
        while time.monotonic() - started < 1.5:
            statuses[(await env.client.post("/models/u/style", json=BODY)).status_code] += 1
        assert set(statuses) == {200} and statuses[200] >= 10
        assert 1 <= len(flaky.seen) <= 2, len(flaky.seen)  # out 1 s, then 2 s
        assert len(healthy.seen) == statuses[200]


async def test_a_pool_whose_base_cannot_load_says_failing_at_once(tmp_path: Path) -> None:
    async with routed(tmp_path, count=1, hold_timeout_s=10) as env:
        (worker,) = env.workers
        worker.load_error = "loading base org/base failed: NotServable: no UNet"
        await until(lambda: _failing(env), 5, "the poll to see the failure")
        started = time.monotonic()
        resp = await env.client.post("/models/u/style", json=BODY)
        assert resp.status_code == 503 and time.monotonic() - started < 2  # not held
        error = resp.json()["error"]
        assert "failing" in error and "NotServable: no UNet" in error, error
        assert "scaling up" not in error and "retry-after" in resp.headers
        worker.load_error = None  # fixed and restarted: it serves again
        await until(lambda: _ok(env), 5, "the pool to serve again")


async def _true(value: bool) -> bool:
    return value


async def _positive(value: Any) -> bool:
    return await value > 0


async def _failing(env: Env) -> bool:
    resp = await env.client.post(
        "/models/u/style", json=BODY, headers={"x-wait-for-model": "false"}
    )
    return resp.status_code == 503 and "failing" in resp.json()["error"]


async def _ok(env: Env) -> bool:
    resp = await env.client.post(
        "/models/u/style", json=BODY, headers={"x-wait-for-model": "false"}
    )
    return resp.status_code == 200
