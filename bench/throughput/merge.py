"""Exact fused serving (``worker/merge.py``) on an SD-1.5-shaped UNet: what the hooks cost per
generation, what fusing saves, what a fuse and a restore cost, and whether 100 fuse/restore
cycles leave the base bit-exact.

The UNet is SD-1.5's own config (860 M parameters; on CPU its two outer levels, ``sd15-cut``,
see :data:`VARIANTS`) with random weights, no download; the adapter is rank 32 on every
nn.Linear and plain nn.Conv2d (the worker's ``SLOT_MODULES=all`` layout), packed and loaded into
the real :class:`LoraSlot`; a second one (rank 16, attention only) alternates with it in the
cycles, as switches would. A "generation" is ``steps`` direct UNet calls with CFG batch 2 at
``side``² latents (CPU: 16², to keep the run near a minute). Three arms, measured in turns so
that drift hits all alike (the first turn is a warm-up), medians:

* ``base``   slot off, weights pristine;   * ``hooked``  the slot's hooks on;
* ``fused``  the delta folded into the weights (``Merger.fuse``), hooks off.

``hook_overhead_pct`` / ``fused_overhead_pct`` = (arm − base) / base; ``fuse_ms`` / ``restore_ms``
medians of timed cycles (the first fuse, which also takes the pristine copy, is reported apart);
``restore_bit_exact``: every UNet weight ``torch.equal`` to a saved state_dict after ``cycles``
cycles — computed, not asserted. ``measure() -> dict``; run as a script it prints one JSON line.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from loraplex.worker.merge import Merger
from loraplex.worker.slot import ATTENTION_TARGETS, LoraSlot, PackedAdapter, SlotLayout

MB = 1e6


VARIANTS: dict[str, dict[str, Any]] = {
    "sd15": {"sample_size": 64, "cross_attention_dim": 768},  # SD-1.5's UNet config
    # SD-1.5's two outer levels (widths 320, 640; its block types, depth and heads): the CPU
    # default, where the whole UNet takes seconds per step and ~2 s per fuse on two cores.
    "sd15-cut": {
        "sample_size": 64, "cross_attention_dim": 768, "block_out_channels": (320, 640),
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    },
    "small": {  # the smoke test's: same block types, narrow
        "block_out_channels": (32, 64), "layers_per_block": 1, "norm_num_groups": 8,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 32, "attention_head_dim": 4,
    },
}  # fmt: skip


@torch.no_grad()
def build_unet(device: torch.device, dtype: torch.dtype, variant: str) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    config = VARIANTS[variant]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    unet = unet.to(dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    for name, p in unet.named_parameters():
        if p.ndim >= 2:
            p.normal_(0.0, p[0].numel() ** -0.5, generator=gen)
        else:
            p.fill_(0.0 if name.endswith("bias") else 1.0)
    return unet.eval().requires_grad_(False)


def random_adapter(
    layout: SlotLayout, rank: int, names: set[str], seed: int, dtype: torch.dtype
) -> PackedAdapter:
    """|delta| about 0.1 of a unit output, in peft shapes, packed on the host."""
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for m in layout.modules:
        if m.name in names:
            a = torch.randn(rank, m.in_features, generator=gen) * m.in_features**-0.5
            b = torch.randn(m.out_features, rank, generator=gen) * (0.1 * rank**-0.5)
            weights[m.name] = (a, b, 1.0)
    return layout.pack(weights, dtype=dtype)


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    def timed(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - started) * 1e3

    return timed


def _inputs(unet: torch.nn.Module, side: int, device: torch.device, dtype: torch.dtype):
    cfg = unet.config
    gen = torch.Generator(device=device).manual_seed(1)
    sample = torch.randn(2, cfg.in_channels, side, side, generator=gen, device=device, dtype=dtype)
    text = torch.randn(2, 77, cfg.cross_attention_dim, generator=gen, device=device, dtype=dtype)
    return {"sample": sample, "encoder_hidden_states": text, "return_dict": False}


@torch.no_grad()
def measure(
    *,
    variant: str | None = None,
    steps: int | None = None,
    side: int | None = None,
    reps: int = 3,
    cycles: int = 100,
    timed_cycles: int = 5,
    device: str | None = None,
) -> dict[str, Any]:
    """The figures in the module docstring. Defaults: on CUDA the whole SD-1.5 UNet in fp16 at
    64² latents (512 px), 10 steps; on CPU ``sd15-cut`` in fp32 at 16² latents, 2 steps."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    variant = variant or ("sd15" if cuda else "sd15-cut")
    steps = steps or (10 if cuda else 2)
    side = side or (64 if cuda else 16)
    unet = build_unet(dev, dtype, variant)
    layout = SlotLayout.for_components({"unet": unet}, 32)
    names = {f"unet.{n}": m for n, m in unet.named_modules()}
    slot = LoraSlot(names, layout, dtype=dtype, device=dev)
    merger = Merger(slot, pristine="device")
    every = {m.name for m in layout.modules}
    attention = {n for n in every if any(n.endswith("." + t) for t in ATTENTION_TARGETS)}
    a = random_adapter(layout, 32, every, 2, dtype)
    b = random_adapter(layout, 16, attention, 3, dtype)
    if dev.type == "cuda":
        a, b = a.to(dev), b.to(dev)  # the resident tier: the switch is not what is measured
    run = _Run(unet, slot, merger, (a, b), _inputs(unet, side, dev, dtype), _timer(dev), steps)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    run.arm("hooked")
    hooked_out = run.generate().float()
    first_fuse_ms = run.timed(merger.fuse)
    fused_out = run.generate().float()
    times = run.interleaved(reps)
    fuse, restore = run.fuse_cycles(cycles, timed_cycles)
    after = unet.state_dict()
    exact = all(torch.equal(before[k], after[k]) for k in before)
    ms = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": f"unet:{variant}",
        "params_m": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1),
        "device": str(dev),
        "dtype": str(dtype).removeprefix("torch."),
        "rank": 32,
        "steps": steps,
        "latent_side": side,
        "adapter_mb": round(a.nbytes / MB, 1),
        "targeted_weights_mb": round(merger.weight_bytes(a) / MB, 1),
        "pristine_mb": round(merger.pristine_bytes / MB, 1),
        "base_gen_ms": round(ms["base"], 2),
        "hooked_gen_ms": round(ms["hooked"], 2),
        "fused_gen_ms": round(ms["fused"], 2),
        "hook_overhead_pct": round((ms["hooked"] - ms["base"]) / ms["base"] * 100, 2),
        "fused_overhead_pct": round((ms["fused"] - ms["base"]) / ms["base"] * 100, 2),
        "first_fuse_ms": round(first_fuse_ms, 2),
        "fuse_ms": round(statistics.median(fuse), 2),
        "restore_ms": round(statistics.median(restore), 2),
        "cycles": cycles,
        "restore_bit_exact": exact,
        "fused_vs_hooked_max_abs": float((fused_out - hooked_out).abs().max()),
        "noise_pct": round(_spread(times["base"]) * 100, 2),
    }


@dataclass
class _Run:
    """One UNet with its slot and merger, and the two adapters the cycles alternate."""

    unet: torch.nn.Module
    slot: LoraSlot
    merger: Merger
    adapters: tuple[PackedAdapter, PackedAdapter]
    inputs: dict[str, Any]
    timed: Callable[[Callable[[], object]], float]
    steps: int
    timesteps: list[torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        device = self.slot.buffer.device
        self.timesteps = [
            torch.tensor([999 - i * 999 // self.steps], device=device) for i in range(self.steps)
        ]

    def generate(self) -> torch.Tensor:
        out = None
        for t in self.timesteps:
            out = self.unet(timestep=t, **self.inputs)[0]
        return out

    def arm(self, state: str) -> None:
        """The model as ``state``: base, hooked (adapter a in the slot) or fused."""
        self.merger.restore()
        self.slot.deactivate()
        if state != "base":
            self.slot.load(self.adapters[0])
        if state == "fused":
            self.merger.fuse()

    def interleaved(self, reps: int) -> dict[str, list[float]]:
        """Generation ms per state, the states in turns (the first turn warms up, dropped)."""
        times: dict[str, list[float]] = {"base": [], "hooked": [], "fused": []}
        for turn in range(reps + 1):
            for state in times:
                self.arm(state)
                ms = self.timed(self.generate)
                if turn:
                    times[state].append(ms)
        return times

    def fuse_cycles(self, cycles: int, timed_cycles: int) -> tuple[list[float], list[float]]:
        """``cycles`` fuse/restore cycles alternating the adapters; the first ``timed_cycles``
        of adapter a are timed. Ends restored, slot off."""
        fuse, restore = [], []
        for i in range(cycles):
            self.merger.restore()
            self.slot.load(self.adapters[i % 2])
            if i < 2 * timed_cycles and i % 2 == 0:
                fuse.append(self.timed(self.merger.fuse))
                restore.append(self.timed(self.merger.restore))
            else:
                self.merger.fuse()
        self.merger.restore()
        self.slot.deactivate()
        return fuse, restore


def _spread(samples: list[float]) -> float:
    """(max − min) / median of the base arm: what 'within noise' means for one run."""
    return (max(samples) - min(samples)) / statistics.median(samples)


if __name__ == "__main__":
    print(json.dumps(measure()))
