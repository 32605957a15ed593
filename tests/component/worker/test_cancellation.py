"""Cancellation end to end on a real worker over loopback (tiny SD on CPU, one torch thread).

A "long" generation is 256×256 with 30 steps: ~1 s per step here, ~30 s in all (512² costs
~12 s per step, too slow to test with). Checked: a client that leaves mid-run, a deadline
header that runs out mid-run, and one that runs out while the job waits, each free the device
within about one step (bounds are relative to a step measured in the same module), are
counted as cancelled (not 200), and leave the base and the adapter slot exact for what comes
next. Nothing sleeps to paper over a race: the tests wait on the worker's state with deadlines.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from fixtures.hub import point_client_at
from fixtures.worker import (
    WorkerServer,
    one_torch_thread,  # noqa: F401 - pytest fixture
    tiny_worker_settings,
)

from loraplex.demo.models import LORA_R4, LORA_R8_ALPHA16
from loraplex.shared.contract import Headers, WorkerState

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
SMALL = {"prompt": "a photo of sks", "seed": 3}  # the worker's 64×64, 2-step defaults
LONG_STEPS = 30
LONG = {"prompt": "a long one", "seed": 5, "width": 256, "height": 256}
LONG_BODY = {**LONG, "num_inference_steps": LONG_STEPS}
WAIT_S = 60.0


@dataclass
class Served:
    worker: WorkerServer
    references: dict[str | None, bytes]  # small images before any cancellation: base, adapters
    step_s: float  # upper bound on one long-size step (a 1-step run: + text encoder + decode)


@pytest.fixture(scope="module")
def served(hub_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    cache = tmp_path_factory.mktemp("worker-cancel-hf")
    with pytest.MonkeyPatch.context() as patch:
        point_client_at(patch, hub_server.url, cache)
        worker = WorkerServer(tiny_worker_settings(cache / "hub")).start()
        try:
            worker.wait_ready()
            references = {a: small(worker, a).content for a in (None, LORA_R4, LORA_R8_ALPHA16)}
            one_step = post(worker, {**LONG, "num_inference_steps": 1})
            step_s = float(one_step.headers[Headers.COMPUTE_MS]) / 1000
            yield Served(worker, references, step_s)
        finally:
            worker.stop()


def post(worker: WorkerServer, body: dict, **headers: str) -> httpx.Response:
    response = httpx.post(
        f"{worker.url}/v1/generate",
        json=body,
        headers={**worker.headers, **headers},
        timeout=WAIT_S,
    )
    assert response.status_code in (200, 504), response.text
    return response


def small(worker: WorkerServer, adapter: str | None = None) -> httpx.Response:
    body = {**SMALL, "adapter": {"repo_id": adapter}} if adapter else SMALL
    response = post(worker, body)
    assert response.status_code == 200
    return response


async def wait_for(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def steps_done(worker: WorkerServer) -> int:
    """Denoising steps the job on the device has finished (0 when none runs)."""
    job = worker.runtime.executor.running
    return job.cancel.steps_done if job is not None and job.cancel is not None else 0


def counters(worker: WorkerServer) -> dict[str, float]:
    """The worker's request and cancel counters, by their exposition name and labels."""
    text = httpx.get(f"{worker.ops_url}/metrics").text
    prefixes = ("loraplex_worker_requests_total", "loraplex_worker_cancelled_total")
    prefixes += ("loraplex_worker_dropped_requests_total", "loraplex_worker_inference_seconds_c")
    return {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in text.splitlines())
        if name.startswith(prefixes)
    }


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


CODE = 'loraplex_worker_requests_total{{code="{}"}}'
CANCELLED = 'loraplex_worker_cancelled_total{{reason="{}"}}'
INFERENCES = "loraplex_worker_inference_seconds_count"
DROPPED = "loraplex_worker_dropped_requests_total"


async def start_long(worker: WorkerServer, client: httpx.AsyncClient, body: dict, **headers):
    """POST ``body`` in a task; return it once the worker has finished one denoising step."""
    task = asyncio.create_task(client.post("/v1/generate", json=body, headers=headers))
    await wait_for(lambda: steps_done(worker) >= 1 or task.done())
    assert not task.done(), "the long generation ended before its first step was seen"
    return task


async def test_a_client_leaving_mid_run_frees_the_device_within_a_step(served: Served) -> None:
    """The issue's reproduction: before the fix, the next request waited for all 30 steps."""
    worker = served.worker
    before = counters(worker)
    async with httpx.AsyncClient(
        base_url=worker.url, headers=worker.headers, timeout=WAIT_S
    ) as leaving:
        long = await start_long(worker, leaving, LONG_BODY)
        long.cancel()  # the client gives up: httpx closes the connection
        left = time.monotonic()
    next_answer = await asyncio.to_thread(small, worker)
    elapsed = time.monotonic() - left
    print(f"\nclient left → next answer in {elapsed:.2f} s (one step ≤ {served.step_s:.2f} s)")
    assert next_answer.content == served.references[None]
    assert elapsed < 2 * served.step_s + 1.0
    changes = delta(before, counters(worker))
    assert changes == {
        CODE.format(499): 1,
        CANCELLED.format("client_gone"): 1,
        CODE.format(200): 1,  # the small one only
        INFERENCES: 1,
    }


async def test_a_deadline_passing_mid_run_answers_504_and_frees_the_device(
    served: Served,
) -> None:
    worker = served.worker
    budget_s = 1.5 * served.step_s  # runs out during the second or third step
    before = counters(worker)
    sent = time.monotonic()
    response = await asyncio.to_thread(
        post, worker, LONG_BODY, **{Headers.DEADLINE_MS: str(int(budget_s * 1000))}
    )
    answered = time.monotonic() - sent
    print(f"\ndeadline {budget_s:.2f} s → 504 after {answered:.2f} s")
    assert response.status_code == 504
    error = response.json()["error"]
    assert "deadline" in error and f"of {LONG_STEPS} denoising steps" in error
    assert answered < budget_s + served.step_s + 1.0
    started = time.monotonic()
    assert small(worker).content == served.references[None]
    assert time.monotonic() - started < served.step_s + 1.0  # the device was free at once
    changes = delta(before, counters(worker))
    assert changes == {
        CODE.format(504): 1,
        CANCELLED.format("deadline"): 1,
        CODE.format(200): 1,
        INFERENCES: 1,
    }


async def test_a_waiting_job_whose_deadline_passes_is_dropped_unstarted(served: Served) -> None:
    worker = served.worker
    before = counters(worker)
    async with httpx.AsyncClient(
        base_url=worker.url, headers=worker.headers, timeout=WAIT_S
    ) as client:
        long = await start_long(worker, client, LONG_BODY)
        sent = time.monotonic()
        queued = await client.post("/v1/generate", json=SMALL, headers={Headers.DEADLINE_MS: "300"})
        waited = time.monotonic() - sent
        assert worker.runtime.executor.running is not None  # the long one still runs
        long.cancel()
    assert queued.status_code == 504 and "queue" in queued.json()["error"]
    assert waited < 0.3 + served.step_s  # answered at its deadline, not after the long one
    await wait_for(lambda: worker.runtime.executor.in_flight == 0)
    changes = delta(before, counters(worker))
    assert changes == {
        CODE.format(504): 1,
        CODE.format(499): 1,
        CANCELLED.format("deadline"): 1,
        CANCELLED.format("client_gone"): 1,
        DROPPED: 1,
    }


async def test_cancelled_runs_leave_base_and_slot_exact(served: Served) -> None:
    """A base run and an adapter run each stopped mid-run; what follows matches fresh runs."""
    worker = served.worker
    budget = {Headers.DEADLINE_MS: str(int(1.5 * served.step_s * 1000))}
    adapter_run = {**LONG_BODY, "adapter": {"repo_id": LORA_R4}}
    assert (await asyncio.to_thread(post, worker, adapter_run, **budget)).status_code == 504
    state_answer = httpx.get(f"{worker.url}/v1/state", headers=worker.headers)
    state = WorkerState.model_validate(state_answer.json())
    assert state.active_adapter is not None and state.active_adapter.startswith(LORA_R4 + "@")
    assert state.queue_depth == 0 and state.in_flight == 0
    assert small(worker).content == served.references[None]
    assert small(worker, LORA_R8_ALPHA16).content == served.references[LORA_R8_ALPHA16]
    assert (await asyncio.to_thread(post, worker, LONG_BODY, **budget)).status_code == 504
    assert small(worker, LORA_R4).content == served.references[LORA_R4]
    assert small(worker).content == served.references[None]


def test_a_bad_deadline_header_is_400(served: Served) -> None:
    worker = served.worker
    headers = {**worker.headers, Headers.DEADLINE_MS: "soon"}
    response = httpx.post(f"{worker.url}/v1/generate", json=SMALL, headers=headers)
    assert response.status_code == 400 and Headers.DEADLINE_MS in response.json()["error"]


def test_metrics_export_both_cancel_reasons(served: Served) -> None:
    text = httpx.get(f"{served.worker.ops_url}/metrics").text
    for reason in ("client_gone", "deadline"):
        assert CANCELLED.format(reason) in text


def test_served_fixture_reference_images_differ(served: Served) -> None:
    """Guard for the exactness test: the adapters change the image, so equality means something."""
    assert len(set(served.references.values())) == 3
