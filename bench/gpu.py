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
from loraplex.worker.merge import Merger
from loraplex.worker.slot import ATTENTION_TARGETS, LoraSlot, PackedAdapter, SlotLayout
from torch import nn
from torch._dynamo.exc import TorchDynamoException

RANK, B_RANK, MB = 32, 16, 1e6
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
BATCHES, TIMED_CYCLES = (1, 4), 5
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


def pct(value: float, base: float) -> float:
    return round((value - base) / base * 100, 2)


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


def _random(run: Run, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, device=run.device, dtype=run.dtype)


def sdxl_inputs(run: Run) -> list[dict[str, Any]]:
    cfg, batch, side = run.config, 2, run.config["sample_size"]  # batch 2: CFG
    tokens = 8 if run.args.tiny else 77
    pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
    px = side * 8
    time_ids = torch.tensor([[px, px, 0, 0, px, px]] * batch, device=run.device, dtype=run.dtype)
    common = {
        "sample": _random(run, batch, cfg["in_channels"], side, side),
        "encoder_hidden_states": _random(run, batch, tokens, cfg["cross_attention_dim"]),
        "added_cond_kwargs": {"text_embeds": _random(run, batch, pooled), "time_ids": time_ids},
        "return_dict": False,
    }
    steps = run.args.steps
    return [
        {**common, "timestep": torch.full((1,), 999 - i * 999 // steps, device=run.device)}
        for i in range(steps)
    ]


def flux_inputs(run: Run) -> list[dict[str, Any]]:
    cfg, side, txt = run.config, (8 if run.args.tiny else 64), (8 if run.args.tiny else 512)
    pos = torch.arange(side * side, device=run.device)
    img_ids = torch.stack([torch.zeros_like(pos), pos // side, pos % side], dim=1).to(run.dtype)
    common = {
        "hidden_states": _random(run, 1, side * side, cfg["in_channels"]),
        "encoder_hidden_states": _random(run, 1, txt, cfg["joint_attention_dim"]),
        "pooled_projections": _random(run, 1, cfg["pooled_projection_dim"]),
        "img_ids": img_ids,
        "txt_ids": torch.zeros(txt, 3, device=run.device, dtype=run.dtype),
        "guidance": torch.full((1,), 3.5, device=run.device, dtype=torch.float32),
        "return_dict": False,
    }
    steps = run.args.steps
    return [
        {**common, "timestep": torch.full((1,), 1 - i / steps, device=run.device, dtype=run.dtype)}
        for i in range(steps)
    ]


@torch.no_grad()
def random_adapter(
    run: Run, rank: int, names: set[str], seed: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """``{module: (A, B, 1.0)}`` in peft shapes, on the host: |delta| ~ 0.1 of a unit output."""
    assert run.layout is not None
    gen = torch.Generator(device=run.device).manual_seed(seed)
    out = {}
    for m in run.layout.modules:
        if m.name not in names:
            continue
        a = torch.randn(rank, m.in_features, generator=gen, device=run.device, dtype=run.dtype)
        b = torch.randn(m.out_features, rank, generator=gen, device=run.device, dtype=run.dtype)
        a, b = a * m.in_features**-0.5, b * (0.1 * rank**-0.5)
        if m.conv is not None:
            a = a.view(rank, m.conv.in_channels, *m.conv.kernel_size)
            b = b.view(m.out_features, rank, 1, 1)
        out[m.name] = (a.cpu(), b.cpu(), 1.0)
    return out


def adapter(run: Run) -> dict[str, Any]:
    """The slot layout (rank 32, every Linear + plain Conv2d), adapters A and B, the eager slot."""
    run.layout = layout = SlotLayout.for_components({run.component: run.model}, RANK)
    every = {m.name for m in layout.modules}
    attention = {n for n in every if any(n.endswith("." + t) for t in ATTENTION_TARGETS)}
    pin = run.device.type == "cuda"
    run.a_weights = random_adapter(run, RANK, every, seed=1)
    run.a = layout.pack(run.a_weights, dtype=run.dtype, pin_memory=pin)
    run.b = layout.pack(random_adapter(run, B_RANK, attention, 2), dtype=run.dtype, pin_memory=pin)
    run.slot = LoraSlot(run.modules(), layout, dtype=run.dtype, device=run.device)
    linear, conv = layout.count()
    return {
        "adapter_mb": round(run.a.nbytes / MB, 2),
        "adapter_b_mb": round(run.b.nbytes / MB, 2),
        "slot_mb": round(run.slot.nbytes / MB, 2),
        "slot_modules": {"linear": linear, "conv2d": conv},
        "pinned": pin,
    }


def switch(run: Run) -> dict[str, Any]:
    slot, a, b, reps = run.slot, run.a, run.b, run.args.switch_reps
    assert slot is not None and a is not None and b is not None
    first = run.timed(lambda: slot.load(a))  # builds a's copy plan once
    switch_ms = run.median_ms(lambda: slot.load(a), reps)
    ab_ms = run.median_ms(lambda: (slot.load(b), slot.load(a)), reps) / 2
    dst = torch.empty_like(a.flat, device=run.device)
    memcpy_ms = run.median_ms(lambda: dst.copy_(a.flat, non_blocking=a.flat.is_pinned()), reps)
    slot.deactivate()
    gb = a.nbytes / 1e9
    return {
        "first_switch_ms": round(first, 3),
        "switch_ms": switch_ms,
        "switch_ab_ms": round(ab_ms, 3),
        "memcpy_ms": memcpy_ms,
        "switch_over_memcpy": round(switch_ms / memcpy_ms, 2),
        "switch_gbps": round(gb / (switch_ms / 1e3), 2),
        "memcpy_gbps": round(gb / (memcpy_ms / 1e3), 2),
    }


def in_turns(run: Run, setups: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Median generation ms per state, measured in turns so that drift hits all alike; each
    setup (untimed) puts the model in its state. The first turn is a warm-up."""
    times: dict[str, list[float]] = {name: [] for name in setups}
    for turn in range(run.args.gen_reps + 1):
        for name, setup in setups.items():
            setup()
            ms = run.timed(run.generate)
            if turn:
                times[name].append(ms)
    return {name: round(statistics.median(t), 3) for name, t in times.items()}


@torch.no_grad()
def generate(run: Run) -> dict[str, Any]:
    slot, a = run.slot, run.a
    assert slot is not None and a is not None
    ms = in_turns(run, {"base": slot.deactivate, "hooked": lambda: slot.load(a)})
    slot.deactivate()
    return {
        "base_gen_ms": ms["base"],
        "hooked_gen_ms": ms["hooked"],
        "hook_overhead_pct": pct(ms["hooked"], ms["base"]),
    }


@torch.no_grad()
def fused(run: Run) -> dict[str, Any]:
    """Exact fused serving through the worker's own ``Merger`` (worker/merge.py): the pristine
    copy where the worker keeps it by default (pinned host on CUDA), ``--fuse-cycles`` fuse +
    restore cycles alternating adapters A and B (the first ``TIMED_CYCLES`` of A timed), then
    every weight compared with a clone taken before the first fuse."""
    slot, a, b = run.slot, run.a, run.b
    assert slot is not None and a is not None and b is not None
    weights = [mod.weight for mod in run.modules().values()]
    saved = [w.clone() for w in weights]  # the independent check (device memory)
    merger = Merger(slot, list(run.modules().values()), pristine="host")
    slot.load(a)
    hooked = run.model(**run.inputs[0])[0].float()
    first_fuse_ms = run.timed(merger.fuse)  # also takes the pristine copy
    diff = (run.model(**run.inputs[0])[0].float() - hooked).abs().max().item()
    fuse, restore = [], []
    for i in range(run.args.fuse_cycles):
        merger.restore()
        slot.load(a if i % 2 == 0 else b)
        if i % 2 == 0 and len(fuse) < TIMED_CYCLES:
            fuse.append(run.timed(merger.fuse))
            restore.append(run.timed(merger.restore))
        else:
            merger.fuse()
    merger.restore()
    exact = all(torch.equal(w, s) for w, s in zip(weights, saved, strict=True))

    def arm(state: str) -> Callable[[], None]:
        def setup() -> None:
            merger.restore()
            slot.deactivate()
            if state != "base":
                slot.load(a)
            if state == "fused":
                merger.fuse()

        return setup

    ms = in_turns(run, {state: arm(state) for state in ("base", "hooked", "fused")})
    merger.restore()
    slot.deactivate()
    run.saved = saved
    steps = len(run.inputs)
    return {
        "first_fuse_ms": round(first_fuse_ms, 3),
        "fuse_ms": round(statistics.median(fuse), 3),
        "restore_ms": round(statistics.median(restore), 3),
        "fuse_cycles": run.args.fuse_cycles,
        "restore_bit_exact": exact,
        "restore_from": "pinned host" if run.device.type == "cuda" else "host",
        "pristine_mb": round(merger.pristine_bytes / MB, 1),
        "base_step_ms": round(ms["base"] / steps, 3),
        "hooked_step_ms": round(ms["hooked"] / steps, 3),
        "fused_step_ms": round(ms["fused"] / steps, 3),
        "fused_base_gen_ms": ms["base"],
        "fused_gen_ms": ms["fused"],
        "fused_overhead_pct": pct(ms["fused"], ms["base"]),
        "fused_vs_hooked_max_abs": diff,
        "hooked_out_max_abs": hooked.abs().max().item(),
    }


def _batched(value: Any, times: int) -> Any:
    """An input with its CFG batch (dim 0 of 2) repeated ``times`` times; others as they are."""
    if isinstance(value, dict):
        return {k: _batched(v, times) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.ndim >= 2 and value.shape[0] == 2:
        return torch.cat([value] * times)
    return value


@torch.no_grad()
def batch(run: Run) -> dict[str, Any]:
    """UNet throughput, slot off: one generation per call at batch 1 vs 4 images (CFG doubles
    the latents); images/s per call = batch / generation time."""
    assert run.slot is not None
    if run.component != "unet":
        run.out.setdefault("skipped", {})["batch"] = "UNet only"
        return {}
    run.slot.deactivate()
    single = run.inputs
    batched = {size: [_batched(step, size) for step in single] for size in BATCHES}

    def use(size: int) -> Callable[[], None]:
        return lambda: setattr(run, "inputs", batched[size])

    try:  # in turns, like the other arms
        ms = in_turns(run, {f"batch{size}": use(size) for size in BATCHES})
    finally:
        run.inputs = single
    out: dict[str, Any] = {}
    for size in BATCHES:
        out[f"batch{size}_gen_ms"] = ms[f"batch{size}"]
        out[f"batch{size}_images_per_s"] = round(size * 1e3 / ms[f"batch{size}"], 3)
    first, last = BATCHES[0], BATCHES[-1]
    ratio = out[f"batch{last}_images_per_s"] / out[f"batch{first}_images_per_s"]
    out["batch_speedup"] = round(ratio, 3)
    return out


@torch.no_grad()
def seed(run: Run) -> dict[str, Any]:
    """The seed's cycle on the same adapter, through diffusers' PeftAdapterMixin."""
    assert run.slot is not None
    run.slot.deactivate()
    state = {}
    for name, (a, b, _scale) in run.a_weights.items():
        path = name.split(".", 1)[1]
        state[f"{path}.lora_A.weight"], state[f"{path}.lora_B.weight"] = a, b
    model = run.model
    phases: dict[str, Callable[[], object]] = {
        "load": lambda: model.load_lora_adapter(state, prefix=None, adapter_name="seed"),
        "fuse": model.fuse_lora,
        "unfuse": model.unfuse_lora,
        "unload": model.unload_lora,
    }
    times: dict[str, list[float]] = {k: [] for k in phases}
    for _ in range(run.args.seed_reps):
        for phase, fn in phases.items():
            times[phase].append(run.timed(fn))
    cycles = [sum(t[i] for t in times.values()) for i in range(run.args.seed_reps)]
    out: dict[str, Any] = {f"seed_{k}_ms": round(statistics.median(v), 2) for k, v in times.items()}
    out["seed_cycle_ms"] = round(statistics.median(cycles), 2)
    if "switch_ms" in run.out:
        out["seed_over_switch"] = round(out["seed_cycle_ms"] / run.out["switch_ms"], 1)
    if run.saved is not None:
        weights = [mod.weight for mod in run.modules().values()]
        out["seed_base_bit_exact"] = all(
            torch.equal(w, s) for w, s in zip(weights, run.saved, strict=True)
        )
        torch._foreach_copy_(weights, run.saved)  # the base as it was, for what follows
        run.saved = None
    return out


@torch.no_grad()
def compiled(run: Run) -> dict[str, Any]:
    """torch.compile over the static slot: two graphs (slot on, base), then switches are data."""
    from torch._dynamo.utils import counters

    assert run.slot is not None and run.layout is not None and run.a and run.b
    run.slot.remove()
    slot = LoraSlot(run.modules(), run.layout, dtype=run.dtype, device=run.device, static=True)
    run.slot = slot
    run.a.plan = run.b.plan = None  # copy plans point into the previous slot's buffer
    static_switch_ms = run.median_ms(lambda: slot.load(run.a), run.args.switch_reps)
    torch._dynamo.reset()
    model = torch.compile(run.model, backend=run.args.compile_backend)
    graphs_before, start = counters["stats"]["unique_graphs"], time.perf_counter()
    breaks_before = sum(counters["graph_break"].values())
    slot.activate_empty()
    run.timed(lambda: model(**run.inputs[0]))
    slot.deactivate()
    run.timed(lambda: model(**run.inputs[0]))
    compile_s = time.perf_counter() - start
    slot.load(run.a)
    eager, compiled_ms = run.gen_ms(), run.gen_ms(model)
    slot.load(run.b)
    model(**run.inputs[0])
    graphs = counters["stats"]["unique_graphs"]
    for i in range(5):
        slot.load(run.a if i % 2 else run.b)
        model(**run.inputs[i % len(run.inputs)])
        slot.deactivate()
        model(**run.inputs[0])
    run.sync()
    recompiles = counters["stats"]["unique_graphs"] - graphs
    slot.remove()
    torch._dynamo.reset()
    return {
        "compile_backend": run.args.compile_backend,
        "static_switch_ms": static_switch_ms,  # no hook attach/detach: copies only
        "compile_s": round(compile_s, 2),
        "eager_gen_ms": eager,
        "compiled_gen_ms": compiled_ms,
        "compile_speedup": round(eager / compiled_ms, 3),
        "graphs": graphs - graphs_before,
        "graph_breaks": sum(counters["graph_break"].values()) - breaks_before,
        "recompiles_across_switches": recompiles,
    }


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
