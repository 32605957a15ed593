"""The LoRA slot: one contiguous buffer whose views are every targeted module's A and B.

Why a slot instead of diffusers' ``load_lora_weights``: diffusers converts keys, builds a peft
config and injects layers on every load (~0.8 s for an SD-1.5 adapter). Here the pipeline's
UNet gets, once at start-up, a forward hook on each slot module (``to_q``, ``to_k``, ``to_v``,
``to_out.0`` of every attention block by default). The hooks read their ``A`` (rank × in),
``B`` (out × rank) and scale from views into ONE flat tensor, so making an adapter active is a
single ``buffer.copy_(flat)`` — memcpy speed — once the adapter has been converted into the
same flat layout (:meth:`SlotLayout.pack`).

Layout of the flat tensor, module by module in a fixed order: ``A`` (rank·in values, rows past
the adapter's own rank are zero), then ``B`` (out·rank values, columns past its rank are
zero); after all modules, one scale per module (alpha / rank as peft computes it; 0 for modules
the adapter does not touch). Zero padding adds exact zeros, so a lower-rank adapter computes the
same delta.

"No adapter" is not "scale 0": when the slot is inactive every hook returns ``None`` and the
module's output is the untouched base output — bit-exact with a pipeline that never had a slot.
Hooks (rather than replacing the modules) keep every module an ``nn.Linear``, so the slow path
(diffusers' own ``load_lora_weights``) can still wrap them while the slot is inactive.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

DEFAULT_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass(frozen=True)
class SlotModule:
    """One slot module: its name in the UNet and where its A and B live in the flat tensor."""

    name: str
    in_features: int
    out_features: int
    offset: int  # start of A; B follows at offset + rank * in_features


class SlotLayout:
    """Where each module's A, B and scale sit in the flat tensor, for a given rank."""

    def __init__(self, modules: Iterable[tuple[str, int, int]], rank: int) -> None:
        if rank < 1:
            raise ValueError(f"slot rank must be at least 1, got {rank}")
        self.rank = rank
        placed: list[SlotModule] = []
        offset = 0
        for name, in_features, out_features in modules:
            placed.append(SlotModule(name, in_features, out_features, offset))
            offset += rank * (in_features + out_features)
        self.modules = tuple(placed)
        self.index = {m.name: i for i, m in enumerate(self.modules)}
        self.scales_offset = offset
        self.numel = offset + len(self.modules)

    @classmethod
    def for_model(
        cls, model: nn.Module, rank: int, targets: tuple[str, ...] = DEFAULT_TARGETS
    ) -> SlotLayout:
        """All ``nn.Linear`` modules of ``model`` whose name ends with one of ``targets``."""
        found = [
            (name, mod.in_features, mod.out_features)
            for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear)
            and any(name == t or name.endswith("." + t) for t in targets)
        ]
        return cls(found, rank)

    def views(self, flat: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(A, B) views into ``flat`` for every module, in layout order."""
        r = self.rank
        out = []
        for m in self.modules:
            a_end = m.offset + r * m.in_features
            a = flat[m.offset : a_end].view(r, m.in_features)
            b = flat[a_end : a_end + m.out_features * r].view(m.out_features, r)
            out.append((a, b))
        return out

    def pack(
        self,
        weights: Mapping[str, tuple[torch.Tensor, torch.Tensor, float]],
        *,
        dtype: torch.dtype,
        pin_memory: bool = False,
    ) -> torch.Tensor:
        """Build the flat tensor for an adapter: ``{module: (A, B, scale)}`` → one CPU tensor.

        Raises ``KeyError`` for a module outside the slot and ``ValueError`` for a shape that
        does not fit (rank above the slot's, or in/out features of another architecture).
        """
        flat = torch.zeros(self.numel, dtype=dtype, pin_memory=pin_memory)
        views = self.views(flat)
        for name, (a, b, scale) in weights.items():
            i = self.index[name]
            m = self.modules[i]
            rank = a.shape[0]
            if a.ndim != 2 or b.ndim != 2 or b.shape[1] != rank:
                raise ValueError(f"{name}: A {tuple(a.shape)} and B {tuple(b.shape)} disagree")
            if a.shape[1] != m.in_features or b.shape[0] != m.out_features:
                raise ValueError(
                    f"{name}: adapter has in/out features {a.shape[1]}/{b.shape[0]}, "
                    f"the base model {m.in_features}/{m.out_features}"
                )
            if rank > self.rank:
                raise ValueError(f"{name}: rank {rank} is above the slot rank {self.rank}")
            slot_a, slot_b = views[i]
            slot_a[:rank].copy_(a)
            slot_b[:, :rank].copy_(b)
            flat[self.scales_offset + i] = scale
        return flat


class LoraSlot:
    """The installed slot: the flat device buffer and one forward hook per module."""

    def __init__(self, model: nn.Module, layout: SlotLayout, *, dtype: torch.dtype) -> None:
        self.layout = layout
        device = next(model.parameters()).device
        self.buffer = torch.zeros(layout.numel, dtype=dtype, device=device)
        self.active = False
        self._handles = []
        scales = self.buffer[layout.scales_offset :]
        modules = dict(model.named_modules())
        for i, (m, (a, b)) in enumerate(
            zip(layout.modules, layout.views(self.buffer), strict=True)
        ):
            hook = _SlotHook(self, a, b, scales[i : i + 1])
            self._handles.append(modules[m.name].register_forward_hook(hook))

    @property
    def nbytes(self) -> int:
        return self.buffer.numel() * self.buffer.element_size()

    def load(self, flat: torch.Tensor) -> None:
        """Make the adapter packed in ``flat`` active: one copy into the buffer."""
        self.buffer.copy_(flat, non_blocking=flat.is_pinned())
        self.active = True

    def deactivate(self) -> None:
        """Back to the pristine base: hooks stop touching outputs (the buffer is left as is)."""
        self.active = False

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.active = False


class _SlotHook:
    """Adds ``scale · B(A(x))`` to a Linear's output while the slot is active."""

    def __init__(
        self, slot: LoraSlot, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor
    ) -> None:
        self.slot, self.a, self.b, self.scale = slot, a, b, scale

    def __call__(
        self, _module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> torch.Tensor | None:
        if not self.slot.active:
            return None  # untouched base output: bit-exact
        x = args[0]
        delta = torch.nn.functional.linear(torch.nn.functional.linear(x, self.a), self.b)
        return output + delta * self.scale
