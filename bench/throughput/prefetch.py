"""Prefetch: the device time a queue of cold requests spends switching, prefetch off vs on.

Setup (all real parts on loopback): a local Hub (``loraplex.localhub``, real HTTP, uvicorn in a
thread) serving 20 LoRA repos whose file downloads share a link paced at 50 MB/s (the Hub's
test-only ``bytes_per_s``); the real worker app (``create_app``: DeviceExecutor + Engine +
Prefetcher) under uvicorn; the real huggingface_hub client between them, with an empty HF cache
per run, so every adapter is cold (a Hub download) in both runs.

Model: the tiny demo pipeline with its UNet replaced by one of SD-1.5's channel widths
(320/640, one cross-attention level, random weights) and a VAE that downsamples 8× (64 px
images, 8×8 latents); adapters are diffusers-format rank-128 LoRAs of kohya's default network
(attention, feed-forward, proj_in/out), 26 MB each in fp32 — 0.53 s each over the link.
Generation: 6 steps without guidance, about 0.7 s per image on one free CPU thread (more when
the cores are shared): longer than one adapter's download, so the prefetch of the next jobs runs
ahead while the device generates (a GPU generates faster, but its Hub downloads are no
faster: SD-1.5 LoRAs are 10-200 MB and a 50-step 512² image takes ~1-3 s). The 20 requests
(one per adapter) are sent at once; each answer's ``x-loraplex-switch-ms`` is the device's
switch time (a prefetch wait included).

Figures: median switch ms off / on, ``prefetch_speedup`` = off / on (goal ≥ 10), wall time of
the whole queue, and the tiers the "on" run reported. Run alone:
``.venv/bin/python bench/throughput/prefetch.py`` (one JSON line; ~1-2 min on 2 CPU cores).
"""

from __future__ import annotations

import json
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import torch
import uvicorn
from loraplex.worker.app import create_app
from loraplex.worker.fetch import HubFetcher
from loraplex.worker.pipeline import Engine, pick_device, pick_dtype
from loraplex.worker.settings import WorkerSettings

from loraplex.demo.adapters import KOHYA_NETWORK_TARGETS
from loraplex.demo.lora_state import peft_lora_state
from loraplex.demo.pipelines import tiny_sd_pipeline
from loraplex.localhub.server import HubState, create_hub_app
from loraplex.localhub.store import RepoStore
from loraplex.shared.contract import Headers

ADAPTERS = 20
RANK = 128
LINK_BYTES_PER_S = 50e6
STEPS = 6  # ~0.7 s per image on one free CPU thread: longer than a 0.53 s download
BASE = "bench/sd15-width"
READY_TIMEOUT_S = 120.0


def sd15_width_pipeline() -> Any:
    """The tiny pipeline with an SD-1.5-width UNet and an 8× VAE (see the module docstring)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    pipe = tiny_sd_pipeline()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(320, 640),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,  # the tiny text encoder's width
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=64,
    )
    pipe.register_modules(unet=unet, vae=vae)
    pipe.vae_scale_factor = 8
    pipe.image_processor.config.vae_scale_factor = 8
    return pipe


def write_adapters(pipe: Any, root: Path) -> tuple[list[str], int]:
    """``ADAPTERS`` random LoRA repos under ``root``; returns their ids and the file size."""
    from diffusers import StableDiffusionPipeline

    gen = torch.Generator().manual_seed(1)
    repos = []
    for i in range(ADAPTERS):
        state, meta = peft_lora_state(pipe.unet, RANK, RANK, KOHYA_NETWORK_TARGETS, gen)
        repo = f"bench/prefetch-lora-{i:02d}"
        StableDiffusionPipeline.save_lora_weights(
            root / repo, unet_lora_layers=state, unet_lora_adapter_metadata=meta
        )
        repos.append(repo)
    size = (root / repos[0] / "pytorch_lora_weights.safetensors").stat().st_size
    return repos, size


@contextmanager
def serving(app: Any, lifespan: str) -> Iterator[str]:
    """``app`` under uvicorn in a thread on a free loopback port; yields its URL."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan=lifespan, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.01)  # uvicorn has no thread-safe "started" event
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()


@contextmanager
def hub_client_at(url: str) -> Iterator[None]:
    """Point huggingface_hub in this process at ``url`` (restored afterwards)."""
    from huggingface_hub import constants, hf_api

    saved = {
        (constants, "ENDPOINT"): url,
        (constants, "HUGGINGFACE_CO_URL_TEMPLATE"): url
        + "/{repo_id}/resolve/{revision}/{filename}",
        (constants, "HF_HUB_OFFLINE"): False,
        (constants, "HF_HUB_DISABLE_TELEMETRY"): True,
        (hf_api.api, "endpoint"): url,
    }
    before = {target: getattr(*target) for target in saved}
    for (module, name), value in saved.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for (module, name), value in before.items():
            setattr(module, name, value)


def run_queue(repos: list[str], cache: Path, prefetch: bool) -> dict[str, Any]:
    """One worker, cold cache, all requests at once; returns switch ms, tiers, wall time."""
    settings = WorkerSettings(
        base_model=BASE,
        cache_dir=cache,
        slot_rank=RANK,
        width=64,
        height=64,
        num_inference_steps=STEPS,
        guidance_scale=1.0,
        warmup_steps=1,
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        queue_capacity=ADAPTERS + 1,
        max_overtake=0,
        prefetch=prefetch,
    )

    def factory(s: WorkerSettings) -> Engine:
        fetcher = HubFetcher(
            cache_dir=s.cache_dir, max_adapter_bytes=s.max_adapter_bytes, branch_ttl_s=60.0
        )
        device, pipe = pick_device(s.device), sd15_width_pipeline()
        if device.type != "cpu":  # as Engine.load: CUDA + fp16 where there is a GPU
            pipe = pipe.to(device, pick_dtype(s.dtype, device))
        return Engine(s, pipe, fetcher)

    app = create_app(settings, engine_factory=factory)
    with serving(app, "on") as url:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not getattr(app.state, "runtime", None) or not app.state.runtime.ready:
            if time.monotonic() > deadline:
                raise RuntimeError("worker not ready")
            time.sleep(0.05)

        def one(repo: str) -> httpx.Response:
            body = {"prompt": "a photo of sks", "seed": 1, "adapter": {"repo_id": repo}}
            return httpx.post(f"{url}/v1/generate", json=body, timeout=600)

        started = time.perf_counter()
        with ThreadPoolExecutor(len(repos)) as pool:
            answers = list(pool.map(one, repos))
        wall = time.perf_counter() - started
    for answer in answers:
        answer.raise_for_status()
    return {
        "switch_ms": [float(a.headers[Headers.SWITCH_MS]) for a in answers],
        "compute_ms": [float(a.headers[Headers.COMPUTE_MS]) for a in answers],
        "tiers": Counter(a.headers[Headers.SWITCH_TIER] for a in answers),
        "wall_s": wall,
    }


def measure() -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the other core runs the Hub, the HTTP and the prefetch threads
    try:
        with ExitStack() as stack:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="prefetch-")))
            repos, size = write_adapters(sd15_width_pipeline(), root / "hub")
            store = RepoStore(root / "hub")
            hub = create_hub_app(store, HubState(token=None), bytes_per_s=LINK_BYTES_PER_S)
            stack.enter_context(hub_client_at(stack.enter_context(serving(hub, "off"))))
            runs = {
                mode: run_queue(repos, root / f"cache-{mode}", prefetch=mode == "on")
                for mode in ("off", "on")
            }
    finally:
        torch.set_num_threads(threads)
    median = {mode: statistics.median(run["switch_ms"]) for mode, run in runs.items()}
    return {
        "prefetch_device_switch_ms": {mode: round(ms, 2) for mode, ms in median.items()},
        "prefetch_speedup": round(median["off"] / median["on"], 1),
        "prefetch_queue_wall_s": {mode: round(run["wall_s"], 2) for mode, run in runs.items()},
        "prefetch_generate_ms": round(statistics.median(runs["off"]["compute_ms"]), 1),
        "prefetch_tiers_on": dict(runs["on"]["tiers"]),
        "prefetch_adapter_mb": round(size / 1e6, 1),
        "prefetch_adapters": ADAPTERS,
        "prefetch_link_mb_s": LINK_BYTES_PER_S / 1e6,
    }


if __name__ == "__main__":
    print(json.dumps(measure()))
