"""Cancellation through the router: the real router app in front of a real worker (tiny SD on
CPU, in a thread of this process, open on loopback), both on loopback.

Checked: a client that gives up through the router stops the worker's generation within about
a step (the router cancels its upstream call, aiohttp closes the connection, the worker sees
the disconnect), and a router deadline that passes mid-run answers 504 and stops the worker
too (the budget reaches the worker in ``x-loraplex-deadline-ms`` and the connection closes).
A "long" generation is 256×256 with 30 steps (~1 s per step here on an idle core).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
from fixtures.hub import point_client_at
from fixtures.router_stubs import serve_app
from fixtures.worker import (
    WorkerServer,
    one_torch_thread,  # noqa: F401 - pytest fixture
    tiny_worker_settings,
)
from huggingface_hub import HfApi
from loraplex.router.app import create_app
from loraplex.router.cards import HubCardSource
from loraplex.router.settings import RouterSettings

from loraplex.demo.models import TINY_SD
from loraplex.shared.contract import Headers

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
LONG_PARAMETERS = {"width": 256, "height": 256, "num_inference_steps": 30, "seed": 5}
LONG = {"inputs": "a long one", "parameters": LONG_PARAMETERS}
SMALL = {"inputs": "a small one", "parameters": {"seed": 3}}
WAIT_S = 60.0


@dataclass
class Worker:
    server: WorkerServer
    step_s: float  # upper bound on one long-size step (a 1-step run, text encoder and decode)

    def cancelled(self, reason: str) -> float:
        registry = self.server.runtime.metrics.registry
        value = registry.get_sample_value("loraplex_worker_cancelled_total", {"reason": reason})
        return value or 0.0

    def steps_done(self) -> int:
        job = self.server.runtime.executor.running
        return job.cancel.steps_done if job is not None and job.cancel is not None else 0


@pytest.fixture(scope="module")
def worker(hub_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    cache = tmp_path_factory.mktemp("router-cancel-hf")
    with pytest.MonkeyPatch.context() as patch:
        point_client_at(patch, hub_server.url, cache)
        server = WorkerServer(tiny_worker_settings(cache / "hub", secret=None)).start()
        try:
            server.wait_ready()
            body = {"prompt": "x", **LONG_PARAMETERS, "num_inference_steps": 1}
            one_step = httpx.post(f"{server.url}/v1/generate", json=body, timeout=WAIT_S)
            assert one_step.status_code == 200, one_step.text
            yield Worker(server, float(one_step.headers[Headers.COMPUTE_MS]) / 1000)
        finally:
            server.stop()


async def wait_for(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def router_client(
    worker: Worker, hub_server, timeout_s: float
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a real router app whose one pool is ``worker``."""
    settings = RouterSettings(
        static_pools={TINY_SD: [worker.server.url]},
        state_poll_interval_s=0.2,
        request_timeout_s=timeout_s,
    )
    app = create_app(settings, card_source=HubCardSource(HfApi(endpoint=hub_server.url)))
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=WAIT_S) as client:
        yield client


async def test_a_client_giving_up_through_the_router_stops_the_worker(
    worker: Worker, hub_server
) -> None:
    gone_before = worker.cancelled("client_gone")
    async with router_client(worker, hub_server, timeout_s=120) as client:
        long = asyncio.create_task(client.post(f"/models/{TINY_SD}", json=LONG))
        await wait_for(lambda: worker.steps_done() >= 1 or long.done())
        assert not long.done(), "the long generation ended before its first step was seen"
        running = worker.server.runtime.executor.running
        assert running is not None and running.cancel is not None
        budget_s = (running.cancel.deadline or 0) - time.monotonic()
        assert 60 < budget_s <= 120  # the router's remaining deadline reached the worker
        long.cancel()
        left = time.monotonic()
        await wait_for(lambda: worker.cancelled("client_gone") == gone_before + 1)
        stopped = time.monotonic() - left
        print(f"\nclient left the router → worker stopped in {stopped:.2f} s")
        assert stopped < 2 * worker.step_s + 1.0
        answer = await client.post(f"/models/{TINY_SD}", json=SMALL)
        assert answer.status_code == 200
        metrics = (await client.get("/metrics")).text
    assert 'code="499"' in metrics  # the router counted the client's departure


async def test_a_router_deadline_mid_run_is_504_and_stops_the_worker(
    worker: Worker, hub_server
) -> None:
    deadline_before = worker.cancelled("deadline")
    timeout_s = 1.5 * worker.step_s + 1.0  # resolve and pick, then into the second step or so
    async with router_client(worker, hub_server, timeout_s=timeout_s) as client:
        sent = time.monotonic()
        response = await client.post(f"/models/{TINY_SD}", json=LONG)
        answered = time.monotonic() - sent
        assert response.status_code == 504, response.text
        assert "deadline" in response.json()["error"]
        await wait_for(lambda: worker.cancelled("deadline") == deadline_before + 1)
        stopped = time.monotonic() - sent
        print(
            f"\nrouter deadline {timeout_s:.2f} s → 504 after {answered:.2f} s, worker "
            f"stopped after {stopped:.2f} s"
        )
        assert answered < timeout_s + 1.0
        assert stopped < timeout_s + worker.step_s + 1.0
        assert worker.server.runtime.executor.in_flight == 0
        small = await client.post(f"/models/{TINY_SD}", json=SMALL)
        assert small.status_code == 200
