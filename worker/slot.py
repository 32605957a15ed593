"""The LoRA slot: one device buffer that holds the active adapter's A and B for every module.

Why a slot instead of diffusers' ``load_lora_weights``: diffusers converts keys, builds a peft
config and injects layers on every load (~0.8 s for an SD-1.5 adapter, seconds for SDXL). Here
the pipeline gets, once at start-up, a fixed set of *slot modules*: every ``nn.Linear`` and
``nn.Conv2d`` that adapters target in the denoiser (UNet or DiT transformer) and in each text
encoder diffusers loads LoRAs into (see :class:`SlotLayout`). Each slot module owns two views
into ONE flat device tensor: ``A`` (rank × in) and ``Bt`` (rank × out, B transposed so that the
first ``r`` rows of both are contiguous). Shapes never change after start-up, which is what keeps
compiled graphs valid across switches.

Adapters are stored compactly (:class:`PackedAdapter`; it and the layout are in
``slot_layout.py``): their own modules at their own ranks, in one flat tensor, not padded to the
slot. Making one active (:meth:`LoraSlot.load`) zeroes what the previous adapter wrote and
scatters the new one into the slot's views with two fused multi-tensor ops
(``torch._foreach_zero_`` / ``_foreach_copy_``): O(bytes of old + new), no Python loop over
tensors' data. Scales (alpha / rank, as peft computes them) sit in a small fp32 tensor, one per
module, 0 where the adapter does not reach.

Math per module with rank ``r`` (zero rows past ``r`` add exact zeros):

* Linear: ``y + scale · (x Aᵀ) Bt`` — peft's ``lora_B(lora_A(x)) · scaling``;
* Conv2d: ``y + scale · conv1x1(conv(x, A, stride, padding, dilation), Bt)`` — peft's conv LoRA
  and LyCORIS LoCon (k×k down, 1×1 up).

Hooks, not module replacement, keep every module what it was, so the slow tier (diffusers'
own ``load_lora_weights``) can still wrap them while the slot is idle. Two hook modes:

* eager (default): a module's hook is registered the first time an adapter touches it and stays
  (registering and removing hooks on every switch cost more than the copy); while the slot is
  off, or the active adapter does not touch that module, it returns nothing, so the module's
  output is the base's own — a base image is bit-exact with a pipeline that never had a slot —
  and modules no adapter ever touched have no hook at all;
* static (compiled mode): every slot module keeps its hook and computes at the full slot rank;
  the only Python state the hooks read is :attr:`LoraSlot.active`, so ``torch.compile`` sees two
  graphs (adapter on, base) and switching adapters is pure tensor data: no recompile.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from loraplex.worker.parallel_copy import copier_for
from loraplex.worker.slot_layout import (
    ATTENTION_TARGETS,
    PackedAdapter,
    SlotLayout,
    SlotModule,
    SwitchPlan,
)
from torch import nn
from torch.nn import functional

__all__ = [  # the layout and packed format live in slot_layout.py; re-exported for callers
    "ATTENTION_TARGETS",
    "LoraSlot",
    "PackedAdapter",
    "SlotLayout",
]


class LoraSlot:
    """The installed slot: the flat device buffer, the scales and one hook per module."""

    def __init__(
        self,
        modules: Mapping[str, nn.Module],
        layout: SlotLayout,
        *,
        dtype: torch.dtype,
        device: torch.device,
        static: bool = False,
        stage: bool | None = None,
    ) -> None:
        """``modules`` maps each layout name to its module; ``static`` is compiled mode;
        ``stage`` copies a host value to the device in one piece before scattering it (default:
        when the value is not on the slot's device — see :meth:`load`)."""
        self.layout = layout
        self.static = static
        self._stage = stage
        self._staging: torch.Tensor | None = None
        self.buffer = torch.zeros(layout.numel, dtype=dtype, device=device)
        self.scales = torch.zeros(len(layout.modules), dtype=torch.float32, device=device)
        self.active = False
        self.current: PackedAdapter | None = None
        self.views = layout.views(self.buffer)
        self._copier = copier_for(device)
        self.modules = [modules[m.name] for m in layout.modules]
        self._hooks = [
            _SlotHook(self, m, a, bt, self.scales[i])
            for i, (m, (a, bt)) in enumerate(zip(layout.modules, self.views, strict=True))
        ]
        self._handles: dict[int, torch.utils.hooks.RemovableHandle] = {}
        if static:
            for i in range(len(self._hooks)):
                self._attach(i, layout.rank)

    @property
    def nbytes(self) -> int:
        staging = 0 if self._staging is None else self._staging.numel()
        return (
            self.buffer.numel() + staging
        ) * self.buffer.element_size() + self.scales.numel() * 4

    def load(self, packed: PackedAdapter) -> None:
        """Make ``packed`` active: zero what the previous adapter wrote and this one does not
        overwrite, then scatter this one.

        A host value (host tier, pinned on CUDA) is first copied to the device in ONE piece
        into a staging buffer (grown to the largest adapter seen), then scattered device to
        device: one PCIe transfer at full bandwidth instead of one small transfer per tensor.
        """
        self._clear(packed)
        stage = packed.flat.device != self.buffer.device if self._stage is None else self._stage
        staging = self._staging_for(packed) if stage else None
        plan = self._plan(packed, staging)
        if staging is not None:
            staging.copy_(packed.flat, non_blocking=packed.flat.is_pinned())
        if self._copier is not None and plan.parts is not None and len(plan.parts) > 1:
            self._copier.run(plan.parts)  # CPU: see worker/parallel_copy.py
        else:
            torch._foreach_copy_(plan.dst, plan.src, non_blocking=packed.flat.is_pinned())
        self.scales.index_copy_(0, plan.scale_index, plan.scale_values)
        if not self.static:
            for e in packed.entries:
                self._attach(e.index, e.rank)
        self.current = packed
        self.active = True

    def activate_empty(self) -> None:
        """Turn the hooks on with nothing in the slot (zero delta): compiled mode's warm-up
        of the adapter-on graph."""
        self._clear()
        self.active = True

    def deactivate(self) -> None:
        """Back to the pristine base: no hook touches an output (buffer contents are kept
        until the next :meth:`load` overwrites them)."""
        self.active = False

    def remove(self) -> None:
        self.deactivate()
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()

    def _clear(self, following: PackedAdapter | None = None) -> None:
        """Zero the rows ``self.current`` wrote that ``following`` will not overwrite (all of
        them when None): same module set and ranks, nothing to zero."""
        self.deactivate()
        previous, self.current = self.current, None
        if previous is None:
            return
        keep = following.ranks if following is not None else {}
        stale: list[torch.Tensor] = []
        for e in previous.entries:
            start = keep.get(e.index, 0)
            if start < e.rank:
                a, bt = self.views[e.index]
                stale += [a[start : e.rank], bt[start : e.rank]]
        if stale:
            torch._foreach_zero_(stale)
        gone = [e.index for e in previous.entries if e.index not in keep]
        if gone:
            self.scales[gone] = 0.0
            if not self.static:
                for index in gone:
                    self._hooks[index].rank = 0  # attached, but passes the base output through

    def _attach(self, index: int, rank: int) -> None:
        hook = self._hooks[index]
        hook.rank = rank
        if index not in self._handles:
            self._handles[index] = self.modules[index].register_forward_hook(hook)

    def _staging_for(self, packed: PackedAdapter) -> torch.Tensor:
        """The first ``packed``-size elements of the staging buffer (grown when too small)."""
        n = packed.flat.numel()
        if self._staging is None or self._staging.numel() < n:
            self._staging = torch.empty(n, dtype=self.buffer.dtype, device=self.buffer.device)
        return self._staging[:n]

    def _plan(self, packed: PackedAdapter, staging: torch.Tensor | None = None) -> SwitchPlan:
        """Slot views and source views (of ``packed`` itself, or of ``staging``) for every A_r
        and Bt_r of ``packed``, and its scales on the slot's device; built once per value and
        source, cached on the value."""
        stale = packed.plan is not None and (
            packed.plan.owner != id(self)  # the same value loaded into another slot
            or (packed.plan.staging is None) != (staging is None)
            or (staging is not None and packed.plan.staging.data_ptr() != staging.data_ptr())
        )
        if packed.plan is None or stale:
            source = packed.flat if staging is None else staging
            runs = _copy_runs(packed, self.layout)
            dst = [self.buffer[d : d + n] for d, _, n in runs]
            src = [source[s : s + n] for _, s, n in runs]
            device = self.scales.device
            index = torch.tensor([e.index for e in packed.entries], device=device)
            values = torch.tensor([e.scale for e in packed.entries], device=device)
            parts = None if self._copier is None else self._copier.split(dst, src)
            packed.plan = SwitchPlan(dst, src, index, values, staging, id(self), parts)
        return packed.plan


def _copy_runs(packed: PackedAdapter, layout: SlotLayout) -> list[tuple[int, int, int]]:
    """(slot offset, packed offset, length) of every piece a switch copies, with pieces that
    are back to back on both sides merged into one run.

    Per module the pieces are A_r (the first ``r`` rows of A) and Bt_r. When the adapter's rank
    equals the slot's, A and Bt are adjacent in both buffers, and so are consecutive modules
    (e.g. the 8 attention projections of a transformer block): merged, a switch copies a few
    large runs instead of thousands of small tensors. That matters on CPU, where each copy below
    torch's parallel grain (32k elements) runs on one thread; on CUDA it shortens the
    multi-tensor launch list."""
    runs: list[tuple[int, int, int]] = []
    for e in packed.entries:
        m = layout.modules[e.index]
        n_a, n_b = e.rank * m.in_features, e.rank * m.out_features
        for dst, src, n in ((m.a_offset, e.offset, n_a), (m.b_offset, e.offset + n_a, n_b)):
            if runs and runs[-1][0] + runs[-1][2] == dst and runs[-1][1] + runs[-1][2] == src:
                runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + n)
            else:
                runs.append((dst, src, n))
    return runs


class _SlotHook:
    """Adds ``scale · Bt(A(x))`` to a Linear's or Conv2d's output while the slot is active."""

    def __init__(
        self,
        slot: LoraSlot,
        module: SlotModule,
        a: torch.Tensor,
        bt: torch.Tensor,
        scale: torch.Tensor,
    ) -> None:
        self.slot, self.a, self.bt, self.scale = slot, a, bt, scale
        self.conv = module.conv
        self.rank = 0

    def __call__(
        self, _module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> torch.Tensor | None:
        if not self.slot.active or self.rank == 0:
            return None  # untouched base output: bit-exact
        r = self.rank
        a, bt, x = self.a[:r], self.bt[:r], args[0]
        if self.conv is None:
            delta = functional.linear(functional.linear(x, a), bt.t())
        else:
            g = self.conv
            weight = a.view(r, g.in_channels, *g.kernel_size)
            down = functional.conv2d(x, weight, None, g.stride, g.padding, g.dilation)
            delta = functional.conv2d(down, bt.t().reshape(-1, r, 1, 1))
        return output + delta * self.scale  # a 0-d fp32 scale keeps the output's dtype
