"""The ``adapter`` and ``switch`` sections: the slot layout, adapters A and B, switch vs memcpy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from loraplex.worker.slot import ATTENTION_TARGETS, LoraSlot, SlotLayout

from gpu_sections.common import B_RANK, MB, RANK

if TYPE_CHECKING:  # gpu.py runs as __main__: importing it here at run time would load it twice
    from gpu import Run


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
