"""The ``generate``, ``fused`` and ``batch`` sections: base vs hooked vs fused generations, the
worker's ``Merger`` fuse/restore cycles, and UNet batch 1 vs 4 throughput."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from loraplex.worker.merge import Merger
from loraplex.worker.slot import LoraSlot, PackedAdapter

from gpu_sections.common import BATCHES, MB, TIMED_CYCLES, in_turns, pct

if TYPE_CHECKING:  # gpu.py runs as __main__: importing it here at run time would load it twice
    from gpu import Run


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


def _fuse_cycles(
    run: Run, merger: Merger, a: PackedAdapter, b: PackedAdapter
) -> tuple[list[float], list[float]]:
    """``--fuse-cycles`` fuse + restore cycles alternating A and B, the first ``TIMED_CYCLES``
    of A timed: (fuse ms, restore ms); the weights restored at the end."""
    assert run.slot is not None
    fuse, restore = [], []
    for i in range(run.args.fuse_cycles):
        merger.restore()
        run.slot.load(a if i % 2 == 0 else b)
        if i % 2 == 0 and len(fuse) < TIMED_CYCLES:
            fuse.append(run.timed(merger.fuse))
            restore.append(run.timed(merger.restore))
        else:
            merger.fuse()
    merger.restore()
    return fuse, restore


def _arm(merger: Merger, slot: LoraSlot, a: PackedAdapter, state: str) -> Callable[[], None]:
    """The (untimed) setup that puts the model in ``state``: base, hooked or fused."""

    def setup() -> None:
        merger.restore()
        slot.deactivate()
        if state != "base":
            slot.load(a)
        if state == "fused":
            merger.fuse()

    return setup


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
    merger = Merger(slot, pristine="host")
    slot.load(a)
    hooked = run.model(**run.inputs[0])[0].float()
    first_fuse_ms = run.timed(merger.fuse)  # also takes the pristine copy
    diff = (run.model(**run.inputs[0])[0].float() - hooked).abs().max().item()
    fuse, restore = _fuse_cycles(run, merger, a, b)
    exact = all(torch.equal(w, s) for w, s in zip(weights, saved, strict=True))
    states = ("base", "hooked", "fused")
    ms = in_turns(run, {state: _arm(merger, slot, a, state) for state in states})
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
