"""Batching (``worker/batching.py``, docs/batching.md): images/s of a same-adapter stream served
one request per pipeline call vs batched, through the real :class:`Engine`.

The base is the tiny demo SD pipeline (random weights, no download; 64×64, 4 steps as the issue
measured), the adapter a rank-8 LoRA on the UNet's attention saved with diffusers'
``save_lora_weights`` and served from a local folder (the Hub replaced, as in
bench/adapter_switch.py). A round is ``ROUND`` requests with different prompts and seeds,
images encoded as PNG (part of serving): ``one_at_a_time`` calls :meth:`Engine.generate` per
request; a batch size ``b`` calls :meth:`Engine.generate_batch` with ``ROUND / b`` lists of
``b``. Arms run in turns, in a rotating order, so drift hits all alike (the first turn is a
warm-up); figures are medians. torch runs on one thread (on the 2 shared cores of CI a second
thread makes the tiny pipeline ~10× slower, see tests/fixtures/worker.py); pass ``threads``.

``measure() -> {"images_per_s": {"one_at_a_time", "batched"}, "batch_speedup", "max_batch",
"curve": {b: images/s}}``, batched = at ``max_batch`` (4); run it alone with
``python bench/worker_throughput.py --only batching``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from fixtures.folder_hub import UNPINNED_COMMIT, FolderFetcher
from loraplex.worker.batching import BatchItem
from loraplex.worker.pipeline import Engine
from loraplex.worker.settings import WorkerSettings

from loraplex.demo.models import tiny_sd_pipeline
from loraplex.shared.contract import AdapterRef, GenerateRequest

ROUND = 8  # requests per measured round (a multiple of every batch size in the curve)
CURVE = (1, 2, 4, 8)
MAX_BATCH = 4
STEPS = 4
REPO = "bench/lora-batching"


def save_adapter(pipe: object, root: Path) -> AdapterRef:
    gen = torch.Generator().manual_seed(0)
    layers = {}
    for name, module in pipe.unet.named_modules():  # type: ignore[attr-defined]
        if name.endswith(("to_q", "to_k", "to_v", "to_out.0")):
            layers[f"{name}.lora_A.weight"] = torch.randn(8, module.in_features, generator=gen)
            layers[f"{name}.lora_B.weight"] = torch.randn(module.out_features, 8, generator=gen)
    type(pipe).save_lora_weights(root / REPO, unet_lora_layers=layers)
    return AdapterRef(repo_id=REPO, revision=UNPINNED_COMMIT)


def build_engine(root: Path) -> tuple[Engine, AdapterRef]:
    pipe = tiny_sd_pipeline()
    ref = save_adapter(pipe, root)
    settings = WorkerSettings(
        base_model="loraplex-demo/tiny-sd", slot_rank=8, width=64, height=64, max_batch=MAX_BATCH
    )
    return Engine(settings, pipe, FolderFetcher(root)), ref


def stream(ref: AdapterRef) -> list[GenerateRequest]:
    return [
        GenerateRequest(
            prompt=f"a photo of sks, picture {i}", num_inference_steps=STEPS, seed=i, adapter=ref
        )
        for i in range(ROUND)
    ]


def arms(engine: Engine, requests: list[GenerateRequest]) -> dict[str, Callable[[], None]]:
    def one_at_a_time() -> None:
        for request in requests:
            engine.generate(request)

    def batched(size: int) -> Callable[[], None]:
        def run() -> None:
            for start in range(0, len(requests), size):
                chunk = requests[start : start + size]
                outcomes = engine.generate_batch([BatchItem(r) for r in chunk])
                assert not any(isinstance(o, BaseException) for o in outcomes), outcomes

        return run

    return {"one_at_a_time": one_at_a_time} | {f"b{size}": batched(size) for size in CURVE}


def measure(turns: int = 7, threads: int = 1) -> dict:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
            engine, ref = build_engine(Path(tmp))
            runs = arms(engine, stream(ref))
            samples: dict[str, list[float]] = {name: [] for name in runs}
            names = list(runs)
            for turn in range(turns + 1):
                for name in names[turn % len(names) :] + names[: turn % len(names)]:
                    started = time.perf_counter()
                    runs[name]()
                    if turn:  # the first turn warms every arm up
                        samples[name].append(ROUND / (time.perf_counter() - started))
    finally:
        torch.set_num_threads(before)
    rate = {name: statistics.median(values) for name, values in samples.items()}
    one, batched = rate["one_at_a_time"], rate[f"b{MAX_BATCH}"]
    return {
        "images_per_s": {"one_at_a_time": round(one, 2), "batched": round(batched, 2)},
        "batch_speedup": round(batched / one, 3),
        "max_batch": MAX_BATCH,
        "curve": {size: round(rate[f"b{size}"], 2) for size in CURVE},
    }
