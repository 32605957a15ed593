"""The router's deadline toward workers (stub workers over loopback; fast, no pixels).

Checked: every attempt sends the time left of the request's deadline in
``x-loraplex-deadline-ms`` (relative, never more than the router has left); a worker's 504
(that budget ran out there) ends the request with 504 and is not retried on another replica;
and a router deadline that passes while a worker works closes the upstream connection (the
worker's handler is cancelled), so the worker can stop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from aiohttp import web
from fixtures.router_stubs import StubWorker, serve_app
from loraplex.router.app import create_app
from loraplex.router.settings import RouterSettings

from loraplex.shared.contract import Headers

BASE = "org/base"
ADAPTER = "u/style"
BODY = {"inputs": "a red fox", "parameters": {}}


@dataclass
class RecordingWorker(StubWorker):
    """A stub worker that also records the deadline header of each generate request."""

    deadlines: list[str | None] = field(default_factory=list)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        self.deadlines.append(request.headers.get(Headers.DEADLINE_MS))
        return await super()._generate(request)


@asynccontextmanager
async def routed(
    tmp_path: Path, count: int, timeout_s: float, **worker: object
) -> AsyncIterator[tuple[httpx.AsyncClient, list[RecordingWorker]]]:
    (tmp_path / ADAPTER).mkdir(parents=True)
    card = "---\nbase_model: org/base\ntags: [lora]\n---\n"
    (tmp_path / ADAPTER / "README.md").write_text(card)
    workers = [RecordingWorker(BASE, **worker) for _ in range(count)]  # type: ignore[arg-type]
    try:
        for stub in workers:
            await stub.start()
        settings = RouterSettings(
            static_pools={BASE: [w.url for w in workers]},
            models_dir=tmp_path,
            request_timeout_s=timeout_s,
        )
        async with serve_app(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as c:
            yield c, workers
    finally:
        for stub in workers:
            await stub.stop()


async def test_each_attempt_sends_the_time_left(tmp_path: Path) -> None:
    async with routed(tmp_path, 1, timeout_s=30) as (client, (worker,)):
        assert (await client.post(f"/models/{ADAPTER}", json=BODY)).status_code == 200
    (sent,) = worker.deadlines
    assert sent is not None and 25_000 < int(sent) <= 30_000


async def test_a_workers_504_is_the_deadline_and_not_retried(tmp_path: Path) -> None:
    async with routed(tmp_path, 2, timeout_s=30, fail_status=504) as (client, workers):
        response = await client.post(f"/models/{ADAPTER}", json=BODY, timeout=10)
    assert response.status_code == 504
    assert sum(len(w.seen) for w in workers) == 1  # no other replica was tried


async def test_an_expired_router_deadline_closes_the_upstream_connection(tmp_path: Path) -> None:
    async with routed(tmp_path, 1, timeout_s=0.5, delay_s=30) as (client, (worker,)):
        response = await client.post(f"/models/{ADAPTER}", json=BODY, timeout=10)
        assert response.status_code == 504 and "deadline" in response.json()["error"]
        deadline = time.monotonic() + 5
        while worker.cancelled == 0:  # aiohttp cancels the handler when the socket closes
            assert time.monotonic() < deadline, "the upstream connection stayed open"
            await asyncio.sleep(0.01)
    assert worker.deadlines[0] is not None and int(worker.deadlines[0]) <= 500
