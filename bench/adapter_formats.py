"""Adapter formats through the slot: per format its tier, host-tier switch vs memcpy vs the seed.

Bases are real diffusers pipelines whose denoisers have full production widths, built from
configs with random weights (no downloads): an SD-1.5-shaped UNet with a CLIP-L-sized text
encoder, and a Flux.1-shaped transformer (24 heads × 128, joint width 4096) cut to one double
and one single block so it fits this machine. Adapters are written by the demo writers
(``loraplex.demo.adapters``) at rank 32 in the formats trainers emit. Per format:

* ``tier``        — where the first load lands (``disk``: converted into the slot; ``slow``);
* ``switch_ms``   — median host-tier switch between two adapters of that format (the engine's
  own ``switch_to``, resident tier off so every hit is a host hit);
* ``memcpy_ms``   — median copy of the adapter's own bytes into the slot buffer (the floor),
  alternating between the same two adapters as the switches;
* ``seed_ms``     — the seed's cycle on the same file: ``load_lora_weights`` + ``fuse_lora``,
  ``unfuse_lora`` + ``unload_lora_weights``; ``seed_over_switch`` and ``switch_over_memcpy``;
* ``adapter_mb`` (the packed adapter) and ``slot_mb`` (the whole slot).

The formats are written at the slot's rank (32), where a switch's copies merge into long runs;
one more row writes the attention adapter at rank 16, the worst case (one copy per A_r / Bt_r).

Then compiled mode on the tiny demo SD base: ``torch.compile`` of the UNet (``--backend``,
default inductor), the first generation (compile included), later generations, and the graphs
dynamo captured across switches among adapters of different module sets and a base request
(``recompiles``: 0 is the goal). One JSON line at the end; medians, not means.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging
from fixtures.folder_hub import UNPINNED_COMMIT, FolderFetcher
from loraplex.worker.adapters import AdapterKey
from loraplex.worker.pipeline import Engine
from loraplex.worker.settings import WorkerSettings

from loraplex.demo import adapters as demo_adapters
from loraplex.demo import models as demo
from loraplex.shared.contract import AdapterRef, GenerateRequest

RANK = 32
MB = 1e6


def median_ms(fn: Callable[[], object], reps: int) -> float:
    samples = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def sd15_shaped():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    pipe = demo.tiny_sd_pipeline()
    torch.manual_seed(0)
    text_config = CLIPTextConfig(
        vocab_size=len(pipe.tokenizer), hidden_size=768, intermediate_size=3072,
        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
    )  # fmt: skip
    pipe.register_modules(
        unet=UNet2DConditionModel(sample_size=64, cross_attention_dim=768),
        text_encoder=CLIPTextModel(text_config),
    )
    return pipe


def flux_shaped():
    from diffusers import FluxTransformer2DModel

    pipe = demo.tiny_flux_pipeline()
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
        guidance_embeds=True,
    )  # fmt: skip
    pipe.register_modules(transformer=transformer)
    return pipe


# (label, base builder, demo adapter whose format and module set is used)
FORMATS: list[tuple[str, Callable, str]] = [
    ("sd15 attention (diffusers)", sd15_shaped, demo.LORA_R4),
    ("sd15 kohya network: attn+ff+proj (kohya)", sd15_shaped, demo.LORA_KOHYA_NETWORK),
    ("sd15 attn + text encoder (kohya lora_te_)", sd15_shaped, demo.LORA_KOHYA_TE),
    ("sd15 LoCon: attn + resnet convs (kohya)", sd15_shaped, demo.LORA_LOCON),
    ("sd15 attention (PEFT)", sd15_shaped, demo.LORA_PEFT),
    ("flux all modules (diffusers)", flux_shaped, demo.LORA_FLUX),
]


def all_specs() -> dict[str, demo_adapters.AdapterSpec]:
    specs = demo.ADAPTERS + demo.SDXL_ADAPTERS + demo.EXTRA_ADAPTERS
    return {s.repo_id: s for s in specs}


def measure_format(pipe, spec, root: Path, reps: int, rank: int = RANK) -> dict:
    """Figures for ``spec``'s format and module set at ``rank`` in a slot of rank RANK."""
    conv = {"conv_rank": rank // 2} if spec.conv_rank else {}
    pair = []
    for i in range(2):
        repo = f"bench/{spec.repo_id.split('/')[1]}-{i}"
        sized = dataclasses.replace(spec, repo_id=repo, rank=rank, alpha=rank / 2, seed=i, **conv)
        demo_adapters.write_adapter(pipe, sized, root / repo)
        pair.append(AdapterRef(repo_id=repo))
    settings = WorkerSettings(
        base_model="bench/base",
        slot_rank=RANK,
        resident_cache_bytes=0,
        max_adapter_slots=0,
        host_cache_bytes=2**40,
    )
    engine = Engine(settings, pipe, FolderFetcher(root))
    tier = engine.switch_to(pair[0]).tier.value
    engine.switch_to(pair[1])
    turn = iter(range(10**9))
    switch_ms = median_ms(lambda: engine.switch_to(pair[next(turn) % 2]), reps)
    packed = [engine.cache.host.get(AdapterKey(ref.repo_id, UNPINNED_COMMIT)) for ref in pair]
    nbytes = packed[0].nbytes
    # The floor: the same two adapters' bytes, alternating as the switches do (so neither
    # side reads from a warm CPU cache the other does not have), into the slot buffer.
    dst = engine.slot.buffer[: packed[0].flat.numel()]
    srcs = [p.flat[: dst.numel()] for p in packed]
    memcpy_ms = median_ms(lambda: dst.copy_(srcs[next(turn) % 2]), reps)
    engine.switch_to(None)
    engine.slot.remove()
    path = FolderFetcher(root).cached_path(
        engine.fetcher.weight_file(AdapterKey(pair[0].repo_id, ""), None)
    )

    def seed_cycle() -> None:
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="seed")
        pipe.fuse_lora()
        pipe.unfuse_lora()
        pipe.unload_lora_weights()

    seed_ms = median_ms(seed_cycle, 3)
    return {
        "tier": tier,
        "switch_ms": round(switch_ms, 3),
        "memcpy_ms": round(memcpy_ms, 3),
        "seed_ms": round(seed_ms, 1),
        "seed_over_switch": round(seed_ms / switch_ms, 1),
        "switch_over_memcpy": round(switch_ms / memcpy_ms, 2),
        "adapter_mb": round(nbytes / MB, 2),
        "slot_mb": round(engine.slot.nbytes / MB, 1),
    }


def measure_compiled(root: Path, backend: str) -> dict:
    """Compiled tiny SD: first/later generation ms and graphs captured across switches."""
    from torch._dynamo.utils import counters

    demo.build_demo_models(root, sdxl=False, dit=False)
    torch._dynamo.reset()
    settings = WorkerSettings(
        base_model=demo.TINY_SD, slot_rank=8, compile=True, compile_backend=backend,
        width=64, height=64, num_inference_steps=4, warmup_steps=4,
    )  # fmt: skip
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(root / demo.TINY_SD)
    pipe.set_progress_bar_config(disable=True)
    engine = Engine(settings, pipe, FolderFetcher(root))
    started = time.perf_counter()
    engine.warm_up()  # base graph and slot-on graph: the compile happens here
    first_s = time.perf_counter() - started
    graphs = counters["stats"]["unique_graphs"]
    request = GenerateRequest(prompt="a photo of sks", seed=1)
    later = []
    for repo in [demo.LORA_R4, demo.LORA_TEXT_ENCODER, demo.LORA_R8_ALPHA16, None, demo.LORA_KOHYA]:
        ref = None if repo is None else AdapterRef(repo_id=repo)
        later.append(
            median_ms(lambda r=ref: engine.generate(request.model_copy(update={"adapter": r})), 1)
        )
    return {
        "backend": backend,
        "first_generation_s": round(first_s, 2),
        "later_generation_ms": round(statistics.median(later), 1),
        "graphs_after_warm_up": graphs,
        "recompiles": counters["stats"]["unique_graphs"] - graphs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, eager backend")
    parser.add_argument("--backend", default=None, help="torch.compile backend (inductor)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    diffusers_logging.set_verbosity_error()
    reps = 10 if args.quick else 40
    specs = all_specs()
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="loraplex-formats-") as tmp:
        root = Path(tmp)
        pipes: dict[Callable, object] = {}
        for label, build, repo_id in FORMATS:
            pipe = pipes.setdefault(build, build())
            result[label] = figures = measure_format(pipe, specs[repo_id], root, reps)
            print(f"{label:<44} {figures}", file=sys.stderr)
        # Below the slot's rank A_r and Bt_r are not back to back in the slot: the copy runs
        # cannot merge, so this is the switch's worst case for the same bytes.
        low = "sd15 attention rank 16 in the rank-32 slot (diffusers)"
        figures = measure_format(pipes[sd15_shaped], specs[demo.LORA_R4], root, reps, rank=16)
        result[low] = figures
        print(f"{low:<44} {figures}", file=sys.stderr)
        backend = args.backend or ("eager" if args.quick else "inductor")
        result["compiled"] = measure_compiled(root / "demo", backend)
    fast = [v for k, v in result.items() if k != "compiled"]
    result["min_seed_over_switch"] = min(f["seed_over_switch"] for f in fast)
    result["max_switch_over_memcpy"] = max(f["switch_over_memcpy"] for f in fast)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
