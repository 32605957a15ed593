"""Batching through real engines and a real worker: a batched image equals the request's image
alone (≤ 1e-4 in fp32) for tiny SD with an adapter and for tiny Flux; a request cancelled in a
batch stops alone; a token that may not read the adapter fails alone; over real HTTP,
concurrent same-adapter requests share one pipeline call and each gets its own image.

The Hub is the fixture server. The HTTP test holds the device busy by wrapping the engine's
``generate`` (the path of a lone job) with a gate the test opens — a stand-in for a slow GPU,
as in test_worker_api.py; the batch itself runs unwrapped.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fixtures.engines import engine_for
from fixtures.worker import (
    WorkerServer,
    one_torch_thread,  # noqa: F401 - pytest fixture
    tiny_worker_settings,
)
from loraplex.worker.batching import BatchItem
from loraplex.worker.generation import Generated
from loraplex.worker.pipeline import Engine
from loraplex.worker.queue import Cancelled, CancelReason, CancelToken, DeviceExecutor
from PIL import Image

from loraplex.demo.models import LORA_FLUX, LORA_R4, TINY_FLUX, TINY_SD
from loraplex.shared.contract import AdapterRef, GenerateRequest, Headers
from loraplex.shared.errors import Forbidden, Unauthorized

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
TOLERANCE = 1e-4
WAIT_S = 30.0


async def depth_reaches(executor: DeviceExecutor, depth: int) -> None:
    """Return once ``depth`` jobs wait in ``executor``'s queue (callers bound it with WAIT_S)."""
    while executor.depth != depth:
        await asyncio.sleep(0.01)


def requests_for(adapter: str | None, negative: bool) -> list[GenerateRequest]:
    ref = AdapterRef(repo_id=adapter) if adapter else None
    texts = [("a photo of sks", "blurry"), ("a red fox", ""), ("a castle at night", "dark")]
    return [
        GenerateRequest(
            prompt=prompt,
            negative_prompt=neg if negative else None,
            width=64,
            height=64,
            num_inference_steps=2,
            guidance_scale=5.0,
            seed=seed,
            adapter=ref,
        )
        for (prompt, neg), seed in zip(texts, (7, 8, 12345), strict=True)
    ]


def batched_vs_alone(engine: Engine, requests: list[GenerateRequest]) -> list[float]:
    engine.switch_to(requests[0].adapter)
    batch = engine.call_pipeline(requests, [None] * len(requests), "np")
    assert batch.images is not None
    alone = [engine.run_pipe(r, output_type="np")[1][0] for r in requests]
    assert not np.array_equal(alone[0], alone[1])  # different seeds and prompts: other images
    return [float(np.abs(b - a).max()) for b, a in zip(batch.images, alone, strict=True)]


@pytest.fixture(scope="module")
def sd(hub_cache: Path) -> Engine:
    return engine_for(TINY_SD, hub_cache)


@pytest.mark.parametrize("negative", [False, True], ids=["no-negative", "negative"])
def test_sd_batched_images_equal_the_images_alone(sd: Engine, negative: bool) -> None:
    diffs = batched_vs_alone(sd, requests_for(LORA_R4, negative))
    assert max(diffs) <= TOLERANCE, diffs


def test_flux_batched_images_equal_the_images_alone(hub_cache: Path) -> None:
    diffs = batched_vs_alone(engine_for(TINY_FLUX, hub_cache), requests_for(LORA_FLUX, False))
    assert max(diffs) <= TOLERANCE, diffs


class StepClock:
    """A token clock that moves one tick per reading: the engine reads a token once before
    the switch, then once per denoising step, so a deadline of 2 passes at the first step."""

    def __init__(self) -> None:
        self.ticks = itertools.count(1)

    def __call__(self) -> float:
        return float(next(self.ticks))


def test_a_member_cancelled_mid_batch_stops_alone_and_all_cancelled_stop_the_call(
    sd: Engine,
) -> None:
    first, second, _ = requests_for(LORA_R4, False)
    outcomes = sd.generate_batch(
        [BatchItem(first, None, CancelToken(2.0, StepClock())), BatchItem(second)]
    )
    assert isinstance(outcomes[0], Cancelled) and outcomes[0].started
    assert outcomes[0].reason is CancelReason.DEADLINE and "batch of 2" in outcomes[0].detail
    assert isinstance(outcomes[1], Generated) and outcomes[1].batch_size == 2
    assert outcomes[1].image == sd.generate(second).image
    both = sd.generate_batch(
        [BatchItem(r, None, CancelToken(2.0, StepClock())) for r in (first, second)]
    )
    assert all(isinstance(o, Cancelled) for o in both)
    assert all("stopped after 1 of 2 denoising steps" in o.detail for o in both)  # type: ignore[union-attr]


def test_a_token_that_may_not_read_the_adapter_fails_alone(sd, demo_models, hub_server) -> None:
    gated = AdapterRef(repo_id=demo_models.test_repos.gated)
    requests = [r.model_copy(update={"adapter": gated}) for r in requests_for(None, False)]
    right = hub_server.gated_token
    items = [
        BatchItem(requests[0], right),
        BatchItem(requests[1], "hf_wrong"),
        BatchItem(requests[2]),
    ]
    outcomes = sd.generate_batch(items)
    assert isinstance(outcomes[1], Forbidden) and isinstance(outcomes[2], Unauthorized)
    assert isinstance(outcomes[0], Generated) and outcomes[0].batch_size == 1
    assert sd.active is not None and sd.active.repo_id == gated.repo_id


# ---------------------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def worker(hub_cache: Path) -> Iterator[WorkerServer]:
    with WorkerServer.serving(tiny_worker_settings(hub_cache, max_batch=4, queue_capacity=8)) as s:
        yield s


def pixels(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)), dtype=np.int16)


def batch_sizes(worker: WorkerServer) -> tuple[float, float]:
    text = httpx.get(f"{worker.ops_url}/metrics").text
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
    name = "loraplex_worker_batch_size"
    return float(values[f"{name}_count"]), float(values[f"{name}_sum"])


async def test_concurrent_same_adapter_requests_share_one_call_each_its_own_image(
    worker: WorkerServer, demo_models, hub_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine: Engine = worker.runtime.engine
    executor = worker.runtime.executor
    opened, entered = threading.Event(), threading.Event()
    original = engine.generate

    def gated(request, token=None, cancel=None):
        entered.set()
        assert opened.wait(WAIT_S), "test never opened the gate"
        return original(request, token, cancel)

    monkeypatch.setattr(engine, "generate", gated)
    adapter = {"repo_id": demo_models.test_repos.gated}
    bodies = [
        {**r.model_dump(mode="json", exclude_none=True), "adapter": adapter}
        for r in requests_for(None, False)
    ]
    right = {"authorization": f"Bearer {hub_server.gated_token}"}
    before = batch_sizes(worker)
    async with httpx.AsyncClient(base_url=worker.url, headers=worker.headers, timeout=60) as client:

        def post(body: dict, headers: dict):
            return asyncio.create_task(client.post("/v1/generate", json=body, headers=headers))

        holding = post({"prompt": "hold the device", "seed": 1}, {})
        await asyncio.to_thread(entered.wait, WAIT_S)
        batch = [post(body, right) for body in bodies]
        denied = post(bodies[0], {"authorization": "Bearer hf_not_the_right_one"})
        await asyncio.wait_for(depth_reaches(executor, 4), WAIT_S)
        opened.set()
        assert (await holding).status_code == 200
        responses = [await task for task in batch]
        refused = await denied
        monkeypatch.undo()  # lone requests below run unwrapped
        alone = [await client.post("/v1/generate", json=b, headers=right) for b in bodies]
    assert refused.status_code == 403, refused.text
    assert [r.headers[Headers.BATCH_SIZE] for r in responses] == ["3"] * 3
    assert [r.headers[Headers.BATCH_SIZE] for r in alone] == ["1"] * 3
    assert [r.headers[Headers.SWITCH_TIER] for r in alone] == ["active"] * 3
    for together, single in zip(responses, alone, strict=True):
        assert np.abs(pixels(together) - pixels(single)).max() <= 1  # PNG: 1/255 steps
    assert not np.array_equal(pixels(responses[0]), pixels(responses[1]))
    count, total = batch_sizes(worker)
    # Runs: the holding job, the batch of 4 jobs taken together (one denied), 3 lone ones.
    assert (count - before[0], total - before[1]) == (5, 1 + 4 + 3)
