"""Adapter switch time: the seed's diffusers cycle vs hotswap vs loraplex's slot, side by side.

Builds an SD-1.5-shaped UNet (real channel widths, random weights) inside a pipeline whose other
parts are the tiny demo ones (only the UNet matters for a UNet LoRA switch), and rank-32 LoRAs
on to_q/to_k/to_v/to_out.0 (25.5 MB each in fp32). All in one run, medians per switch:

* ``seed``     — ``load_lora_weights`` from disk + ``fuse_lora``, then ``unfuse_lora`` +
                 ``unload_lora_weights`` (what the seed did per request);
* ``hotswap``  — diffusers' ``load_lora_weights(..., hotswap=True)`` into a prepared adapter;
* ``host``     — loraplex :class:`~loraplex.worker.pipeline.Engine` switch from the host tier;
* ``resident`` — the same from the device-resident tier (on CPU both live in host memory);
* ``disk``     — first use: read + convert into the slot layout (informative);
* ``memcpy``   — one ``copy_`` of the same number of bytes (the floor).

Then 1,000 switches over 50 adapters with a host cache smaller than the set (evictions and
reloads from disk) and the RSS growth over that loop, measured after a first pass has filled
the caches to their configured bytes. The Hub is replaced by a local folder (the bench measures
switching, not downloads). Last line: one JSON object.

Run: ``.venv/bin/python bench/adapter_switch.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import torch
from diffusers.utils import logging as diffusers_logging
from fixtures.folder_hub import FolderFetcher
from loraplex.worker.adapters import PREFERRED_WEIGHT_FILE, AdapterCache
from loraplex.worker.memory import pin_malloc_thresholds
from loraplex.worker.pipeline import Engine
from loraplex.worker.settings import WorkerSettings
from loraplex.worker.slot import SlotLayout

from loraplex.demo.models import tiny_sd_pipeline
from loraplex.shared.contract import AdapterRef

RANK = 32
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # diffusers' dreambooth default
WEIGHT = PREFERRED_WEIGHT_FILE
MB = 1e6

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.float16 if DEVICE.type == "cuda" else torch.float32  # as the worker picks


def sync() -> None:
    """On CUDA, wait for queued copies so a timing covers the work, not its launch."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def sd15_pipeline() -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    pipe = tiny_sd_pipeline()
    torch.manual_seed(0)
    pipe.register_modules(unet=UNet2DConditionModel(sample_size=64, cross_attention_dim=768))
    return pipe.to(DEVICE, DTYPE)


def write_adapters(pipe, root: Path, count: int) -> list[AdapterRef]:
    """``count`` random rank-32 LoRAs in diffusers format under ``root/bench/lora-<i>``."""
    from diffusers import StableDiffusionPipeline

    shapes = [
        (m.name.removeprefix("unet."), m.in_features, m.out_features)
        for m in SlotLayout.for_components({"unet": pipe.unet}, RANK, TARGETS).modules
    ]
    gen = torch.Generator().manual_seed(1)
    refs = []
    for i in range(count):
        layers = {}
        for name, fan_in, fan_out in shapes:
            layers[f"{name}.lora_A.weight"] = torch.randn(RANK, fan_in, generator=gen) * 0.01
            layers[f"{name}.lora_B.weight"] = torch.randn(fan_out, RANK, generator=gen) * 0.01
        repo = f"bench/lora-{i:02d}"
        StableDiffusionPipeline.save_lora_weights(root / repo, unet_lora_layers=layers)
        refs.append(AdapterRef(repo_id=repo, revision=f"{i:040x}"))
    return refs


def timed(fn: Callable[[], object], reps: int) -> float:
    """Median milliseconds of ``fn`` over ``reps`` calls."""
    samples = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def bench_seed(pipe, paths: list[Path], reps: int) -> float:
    it = iter(range(10**9))

    def cycle() -> None:
        path = paths[next(it) % len(paths)]
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="seed")
        pipe.fuse_lora()
        pipe.unfuse_lora()
        pipe.unload_lora_weights()

    return timed(cycle, reps)


def bench_hotswap(pipe, paths: list[Path], reps: int) -> float:
    pipe.enable_lora_hotswap(target_rank=RANK)
    first = paths[0]
    pipe.load_lora_weights(str(first.parent), weight_name=first.name, adapter_name="hs")
    it = iter(range(1, 10**9))

    def swap() -> None:
        path = paths[next(it) % len(paths)]
        pipe.load_lora_weights(
            str(path.parent), weight_name=path.name, adapter_name="hs", hotswap=True
        )

    ms = timed(swap, reps)
    pipe.unload_lora_weights()
    return ms


def rss() -> int:
    return psutil.Process().memory_info().rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    args = parser.parse_args()
    pin_malloc_thresholds()  # as `loraplex worker` does at start-up
    torch.set_grad_enabled(False)
    diffusers_logging.set_verbosity_error()  # one "no text-encoder keys" line per load otherwise
    with tempfile.TemporaryDirectory(prefix="loraplex-bench-") as tmp:
        ms, extra = measure(Path(tmp), quick=args.quick)
    result = {
        "adapter_mb": round(extra["adapter_mb"], 1),
        "memcpy_ms": round(ms["memcpy"], 3),
        "seed_ms": round(ms["seed"], 1),
        "hotswap_ms": round(ms["hotswap"], 1),
        "host_ms": round(ms["host"], 3),
        "resident_ms": round(ms["resident"], 3),
        "seed_over_host": round(ms["seed"] / ms["host"], 1),
        "host_over_memcpy": round(ms["host"] / ms["memcpy"], 2),
        "rss_growth_pct": round(extra["rss_growth_pct"], 2),
    }
    targets = ", ".join(TARGETS)
    print(f"SD-1.5-shaped UNet, rank-{RANK} LoRA on {targets}: {extra['adapter_mb']:.1f} MB")
    print(f"{'path':<34}{'ms/switch (median)':>20}")
    for label, key in [
        ("seed: load+fuse, unfuse+unload", "seed"),
        ("diffusers hotswap", "hotswap"),
        ("loraplex disk (read + convert)", "disk"),
        ("loraplex host tier", "host"),
        ("loraplex resident tier", "resident"),
        ("memcpy of the same bytes", "memcpy"),
    ]:
        print(f"{label:<34}{ms[key]:>20.3f}")
    print(extra["loop"])
    print(json.dumps(result))


def measure(root: Path, *, quick: bool) -> tuple[dict[str, float], dict]:
    """Every timing (ms per switch) plus the adapter size and the RSS loop's outcome."""
    reps_slow, reps_fast, n_adapters, n_switches = (3, 50, 8, 100) if quick else (8, 200, 50, 1000)
    pipe = sd15_pipeline()
    refs = write_adapters(pipe, root, n_adapters)
    paths = [root / r.repo_id / WEIGHT for r in refs]
    ms = {
        "seed": bench_seed(pipe, paths, reps_slow),
        "hotswap": bench_hotswap(pipe, paths, reps_slow),
    }
    settings = WorkerSettings(
        base_model="bench/sd15-shaped",
        slot_rank=RANK,
        resident_cache_bytes=0,
        host_cache_bytes=2**40,
        max_adapter_slots=0,
    )
    engine = Engine(settings, pipe, FolderFetcher(root))
    ms["disk"] = statistics.median(
        timed_once(lambda r=ref: engine.switch_to(r)) for ref in refs[:4]
    )
    nbytes = engine.cache.host.get(engine.fetcher.resolve(refs[0], None)).nbytes
    ms["host"], ms["resident"], ms["memcpy"] = interleaved(engine, refs[:4], nbytes, reps_fast)
    growth, tiers = rss_loop(engine, refs, n_switches, nbytes)
    loop = (
        f"{n_switches} switches over {n_adapters} adapters, tiers {tiers}: "
        f"RSS growth {growth:.2f}% after the caches filled"
    )
    return ms, {"adapter_mb": paths[0].stat().st_size / MB, "rss_growth_pct": growth, "loop": loop}


def timed_once(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - started) * 1000


def interleaved(
    engine: Engine, hot: list[AdapterRef], nbytes: int, reps: int
) -> tuple[float, float, float]:
    """Host-tier switch, resident-tier switch and memcpy, timed in turn in each repetition.

    Interleaving keeps noise from other processes on this machine from landing on one column.
    """
    host_only = engine.cache  # resident budget 0: every hit is a host hit
    resident = AdapterCache(
        resident_bytes=2**40, resident_slots=8, host_bytes=2**40, to_device=engine._to_device
    )
    for ref in hot:
        resident.admit(
            engine.fetcher.resolve(ref, None),
            host_only.host.get(engine.fetcher.resolve(ref, None)),
            nbytes,
        )
    # The floor: the adapter's own bytes copied into the slot buffer, with no cache or
    # bookkeeping (the slot holds every module; the adapter only its own).
    dst = engine.slot.buffer[: nbytes // engine.slot.buffer.element_size()]
    # The host tier's source is pinned on CUDA, so the floor's source is too.
    src = torch.randn(dst.shape, dtype=dst.dtype, pin_memory=DEVICE.type == "cuda")
    samples: dict[str, list[float]] = {"host": [], "resident": [], "memcpy": []}
    for i in range(reps):
        for name, cache in (("host", host_only), ("resident", resident)):
            engine.cache = cache
            started = time.perf_counter()
            switch = engine.switch_to(hot[(2 * i + (name == "resident")) % len(hot)])
            samples[name].append((time.perf_counter() - started) * 1000)
            assert switch.tier.value == name, switch
        started = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        sync()
        samples["memcpy"].append((time.perf_counter() - started) * 1000)
    engine.cache = host_only
    return tuple(statistics.median(samples[k]) for k in ("host", "resident", "memcpy"))


def rss_loop(engine: Engine, refs: list[AdapterRef], switches: int, nbytes: int):
    """Switch ``switches`` times at random over ``refs`` with a host cache of 80% of them."""
    engine.cache = AdapterCache(
        resident_bytes=0,
        resident_slots=0,
        host_bytes=int(len(refs) * 0.8) * nbytes,
        to_device=engine._to_device,
    )
    rng = random.Random(0)
    for ref in refs:  # fill the caches to their configured bytes
        engine.switch_to(ref)
    engine.switch_to(None)
    before = rss()
    tiers: dict[str, int] = {}
    for _ in range(switches):
        tier = engine.switch_to(rng.choice(refs)).tier.value
        tiers[tier] = tiers.get(tier, 0) + 1
    after = rss()
    return (after - before) / before * 100, tiers


if __name__ == "__main__":
    main()
