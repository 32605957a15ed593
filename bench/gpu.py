"""GPU bench: the slot at full size, SDXL UNet (fp16) and Flux.1 transformer (bf16), one JSON line.

Each denoiser is built from its real config (below) with random weights straight on the device
(meta build, ``to_empty``, in-place random init): no pipeline, no download. A "generation" is
``--steps`` direct denoiser calls at 1024² (SDXL: latents (2, 4, 128, 128), CFG batch 2; Flux:
packed latents (1, 4096, 64) + text (1, 512, 4096)). The adapter is rank 32 on every nn.Linear
and plain nn.Conv2d of the denoiser (the worker's slot layout); a second one (rank 16,
attention only) serves the switch and recompile checks. Sections, in order, per model:

* ``adapter``  adapter_mb, slot_mb (the slot reserved at rank 32 for all modules);
* ``switch``   pinned packed adapter → slot (``LoraSlot.load``) vs one pinned memcpy of the
               adapter's own bytes: switch_ms, memcpy_ms, switch_over_memcpy, *_gbps (PCIe);
* ``generate`` base_gen_ms (slot off) vs hooked_gen_ms (slot on): hook_overhead_pct;
* ``fused``    exact fused serving through the worker's ``Merger`` (worker/merge.py): the delta
               folded into the weights, restored from the pristine copy (pinned host):
               first_fuse_ms, fuse_ms, restore_ms, restore_bit_exact (torch.equal with a clone,
               after ``--fuse-cycles`` cycles), base/hooked/fused_step_ms measured in turns,
               fused_overhead_pct, fused_vs_hooked_max_abs;
* ``seed``     the seed's cycle with diffusers' own API on the bare model (load_lora_adapter
               from a host state dict, fuse_lora, unfuse_lora, unload_lora): seed_cycle_ms,
               seed_over_switch, seed_base_bit_exact (is the base what it was after the cycles);
* ``batch``    (UNet only) one generation per call at batch 1 vs 4 images, slot off:
               batch{1,4}_images_per_s, batch_speedup;
* ``compile``  (after both models' eager sections) ``torch.compile`` with the static slot:
               compile_s, eager_gen_ms vs compiled_gen_ms, recompiles_across_switches (dynamo's
               unique_graphs over 5 adapter switches + base calls after warm-up).

A section is skipped (noted under ``skipped``) when the elapsed time plus its rough need passes
``--budget-s``; an out-of-memory error is recorded under ``errors`` and the run goes on. Without a
CUDA device and without ``--tiny`` it prints a ``skipped`` line at once (``make bench`` runs every
bench script with no arguments). ``--tiny`` shrinks both configs so that it runs on CPU in seconds.

Run: ``python bench/gpu.py [--tiny] [--budget-s 420] [--models sdxl,flux]``. Last stdout line:
the JSON object; a short table goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from gpu_sections.adapters import adapter, switch
from gpu_sections.baselines import compiled, seed
from gpu_sections.common import MB, RANK
from gpu_sections.inputs import flux_inputs, sdxl_inputs
from gpu_sections.serving import batch, fused, generate
from loraplex.worker.slot import LoraSlot, PackedAdapter, SlotLayout
from torch import nn
from torch._dynamo.exc import TorchDynamoException

NO_CUDA = {"skipped": "no CUDA device; run with --tiny for the CPU smoke version"}
# fmt: off
SDXL_UNET: dict[str, Any] = dict(  # stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 6 time ids x 256 + 1280 pooled
    norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
)
TINY_SDXL: dict[str, Any] = dict(
    sample_size=16, layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(32, 64),
    transformer_layers_per_block=(1, 1), attention_head_dim=(2, 4), cross_attention_dim=64,
    addition_time_embed_dim=8, projection_class_embeddings_input_dim=80,  # 6 x 8 + 32 pooled
)
FLUX_TRANSFORMER: dict[str, Any] = dict(  # black-forest-labs/FLUX.1-dev, transformer/config.json
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
    guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)
TINY_FLUX: dict[str, Any] = dict(
    in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
    joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6),
)
# fmt: on
# Rough seconds a section needs at full size on one H200 (the budget guard's estimate).
NEED_S = {
    "build": 20,
    "adapter": 10,
    "switch": 5,
    "generate": 20,
    "fused": 40,
    "seed": 40,
    "batch": 30,
}
COMPILE_NEED_S = {"sdxl": 150, "flux": 240}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Run:
    """One model's state across sections, and its figures (``out``)."""

    name: str
    component: str
    config: dict[str, Any]
    dtype: torch.dtype
    device: torch.device
    args: argparse.Namespace
    out: dict[str, Any] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    model: Any = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    layout: SlotLayout | None = None
    slot: LoraSlot | None = None
    a: PackedAdapter | None = None
    b: PackedAdapter | None = None
    a_weights: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)
    saved: list[torch.Tensor] | None = None

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, fn: Callable[[], object]) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return (time.perf_counter() - start) * 1e3

    def median_ms(self, fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
        for _ in range(warmup):
            self.timed(fn)
        return round(statistics.median(self.timed(fn) for _ in range(reps)), 3)

    def generate(self, model: Any = None) -> None:
        for step in self.inputs:
            (self.model if model is None else model)(**step)

    def gen_ms(self, model: Any = None) -> float:
        return self.median_ms(lambda: self.generate(model), self.args.gen_reps)

    def modules(self) -> dict[str, nn.Module]:
        assert self.layout is not None
        return {
            m.name: self.model.get_submodule(m.name.split(".", 1)[1]) for m in self.layout.modules
        }


@torch.no_grad()
def build(run: Run) -> dict[str, Any]:
    """The denoiser from its config on the meta device, then random weights on the device."""
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    cls = UNet2DConditionModel if run.component == "unet" else FluxTransformer2DModel
    with torch.device("meta"):
        model = cls(**run.config)
    model = model.to(run.dtype).to_empty(device=run.device)
    gen = torch.Generator(device=run.device).manual_seed(0)
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            p.normal_(0.0, p[0].numel() ** -0.5, generator=gen)
        else:
            p.fill_(0.0 if name.endswith("bias") else 1.0)
    run.model = model.eval().requires_grad_(False)
    run.inputs = (sdxl_inputs if run.component == "unet" else flux_inputs)(run)
    params = sum(p.numel() for p in model.parameters())
    return {"params_b": round(params / 1e9, 3), "base_mb": round(params * run.dtype.itemsize / MB)}


EAGER_SECTIONS = ("build", "adapter", "switch", "generate", "fused", "seed", "batch")
SECTIONS: dict[str, tuple[Callable[[Run], dict[str, Any]], tuple[str, ...]]] = {
    "build": (build, ()),
    "adapter": (adapter, ("build",)),
    "switch": (switch, ("adapter",)),
    "generate": (generate, ("adapter",)),
    "fused": (fused, ("adapter",)),
    "seed": (seed, ("adapter",)),
    "batch": (batch, ("adapter",)),
    "compile": (compiled, ("adapter",)),
}


def run_section(run: Run, name: str, t0: float) -> None:
    """One section under the time budget; an OOM is recorded, not raised."""
    fn, needs = SECTIONS[name]
    need = 0 if run.args.tiny else COMPILE_NEED_S[run.name] if name == "compile" else NEED_S[name]
    elapsed = time.perf_counter() - t0
    missing = [n for n in needs if n not in run.done]
    if missing:
        run.out.setdefault("skipped", {})[name] = f"needs {', '.join(missing)}"
        return
    if elapsed + need > run.args.budget_s:
        why = f"time budget: {elapsed:.0f} s elapsed + ~{need} s needed > {run.args.budget_s} s"
        run.out.setdefault("skipped", {})[name] = why
        return
    start = time.perf_counter()
    try:
        run.out.update(fn(run))
        run.done.add(name)
    except (torch.cuda.OutOfMemoryError, TorchDynamoException) as exc:
        # out of memory, or torch.compile failing: recorded, and the other sections still run
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        run.out.setdefault("errors", {})[name] = f"{type(exc).__name__}: {first}"
    if name not in run.done and run.device.type == "cuda":
        torch.cuda.empty_cache()  # here, once the traceback no longer holds the frames' tensors
    took = round(time.perf_counter() - start, 2)
    run.out.setdefault("section_s", {})[name] = took
    print(f"[{time.perf_counter() - t0:6.1f} s] {run.name} {name}: {took} s", file=sys.stderr)


def make_runs(args: argparse.Namespace, device: torch.device) -> list[Run]:
    specs = {
        "sdxl": ("unet", SDXL_UNET, TINY_SDXL, torch.float16),
        "flux": ("transformer", FLUX_TRANSFORMER, TINY_FLUX, torch.bfloat16),
    }
    runs = []
    for name in args.models.split(","):
        component, config, tiny, dtype = specs[name]
        if args.dtype != "auto":
            dtype = DTYPES[args.dtype]
        elif device.type == "cpu":
            dtype = torch.float32  # half-precision kernels on CPU are slow or missing
        config = {**config, **tiny} if args.tiny else config
        runs.append(Run(name, component, config, dtype, device, args))
    return runs


TABLE = ("adapter_mb", "slot_mb", "switch_ms", "memcpy_ms", "switch_over_memcpy", "switch_gbps",
         "seed_cycle_ms", "seed_over_switch", "base_gen_ms", "hook_overhead_pct",
         "fused_overhead_pct", "fuse_ms", "restore_ms", "restore_bit_exact", "base_step_ms",
         "hooked_step_ms", "fused_step_ms", "batch1_images_per_s", "batch4_images_per_s",
         "batch_speedup", "compile_s",
         "eager_gen_ms", "compiled_gen_ms", "recompiles_across_switches")  # fmt: skip


def print_table(result: dict[str, Any], names: list[str]) -> None:
    print(f"{'':28}" + "".join(f"{n:>14}" for n in names), file=sys.stderr)
    for key in TABLE:
        cells = "".join(f"{result[n].get(key, '-')!s:>14}" for n in names)
        print(f"{key:28}{cells}", file=sys.stderr)
    for n in names:
        for kind in ("skipped", "errors"):
            for section, why in result[n].get(kind, {}).items():
                print(f"{n} {section} {kind}: {why}", file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--tiny", action="store_true", help="tiny configs: the CPU smoke version (seconds)")
    add("--device", help="torch device (default: cuda if available, else skip unless --tiny)")
    add("--models", default="sdxl,flux", help="comma-separated subset of sdxl,flux")
    add("--dtype", default="auto", choices=("auto", *DTYPES), help="auto: fp16/bf16, fp32 on CPU")
    add("--steps", type=int, default=4, help="denoiser calls per generation")
    add("--budget-s", type=int, default=420, help="skip sections past this many seconds")
    add("--switch-reps", type=int, default=30, help="timed switches (median)")
    add("--gen-reps", type=int, default=3, help="timed generations per figure (median)")
    add("--fuse-cycles", type=int, default=100, help="fuse + restore cycles (restore_bit_exact)")
    add("--seed-reps", type=int, default=3, help="seed cycles (load+fuse+unfuse+unload)")
    add(
        "--compile-backend",
        default="auto",
        help="torch.compile backend (auto: inductor on CUDA, dynamo's eager backend on CPU: "
        "inductor's C++ builds take minutes there; the graphs and guards are the same)",
    )
    add("--compile-models", help="models to compile (default: all of --models; '' for none)")
    add("--json-out", help="also write the JSON here after every section (partial on a kill)")
    args = parser.parse_args(argv)
    named = set(args.models.split(",")) | set(filter(None, (args.compile_models or "").split(",")))
    if unknown := named - {"sdxl", "flux"}:
        parser.error(f"unknown models: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    args = parse_args(argv)
    if args.device is None and not args.tiny and not torch.cuda.is_available():
        print(json.dumps(NO_CUDA))
        return 0
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.tiny and device.type == "cpu":
        torch.set_num_threads(1)  # tiny ops gain nothing; OpenMP spin-waits on a shared CPU
    if args.compile_backend == "auto":
        args.compile_backend = "inductor" if device.type == "cuda" else "eager"
    import diffusers
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    torch.manual_seed(0)
    result: dict[str, Any] = {
        "bench": "gpu",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "tiny": args.tiny,
        "rank": RANK,
        "steps": args.steps,
        "budget_s": args.budget_s,
        "notes": "seed_cycle loads from a host state dict (no disk read): a floor for the seed",
    }
    runs = make_runs(args, device)
    compiling = args.models if args.compile_models is None else args.compile_models
    plan = [(run, name) for run in runs for name in EAGER_SECTIONS]  # compiling never starves
    plan += [(run, "compile") for run in runs if run.name in compiling.split(",")]
    for run in runs:
        if run.name not in compiling.split(","):
            run.out.setdefault("skipped", {})["compile"] = "not in --compile-models"
    for run, name in plan:
        run_section(run, name, t0)
        result[run.name] = {"dtype": str(run.dtype).removeprefix("torch."), **run.out}
        result.pop("wall_s", None)
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        if args.json_out:  # what is done so far survives a kill
            with open(args.json_out, "w") as f:
                f.write(json.dumps(result) + "\n")
    print_table(result, [run.name for run in runs])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
