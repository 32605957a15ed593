"""Where the LoRA slot keeps what, and the compact form adapters wait in (see ``slot.py``).

:class:`SlotLayout` places every slot module's A (rank × in) and Bt (rank × out) in the slot's
flat buffer; :meth:`SlotLayout.pack` turns an adapter's peft-shaped tensors into a
:class:`PackedAdapter` (its own modules at their own ranks, back to back), which caches the
:class:`SwitchPlan` a switch copies by. Plain data and tensor packing, no hooks: the installed
slot that copies a packed adapter in is :class:`~loraplex.worker.slot.LoraSlot`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch
from loraplex.worker.parallel_copy import Pieces
from torch import nn

ATTENTION_TARGETS: tuple[str, ...] = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
    "q_proj",
    "k_proj",
    "v_proj",
    "out_proj",
)


@dataclass(frozen=True)
class ConvGeometry:
    """How a Conv2d slot module's down conv runs: the base conv's own geometry."""

    in_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]


@dataclass(frozen=True)
class SlotModule:
    """One slot module: its component-prefixed name and where its A and Bt sit in the buffer.

    ``in_features`` is the length of one row of A (for a conv: in_channels · kh · kw)."""

    name: str
    in_features: int
    out_features: int
    a_offset: int
    b_offset: int
    conv: ConvGeometry | None = None


def _wanted(name: str, module: nn.Module, targets: Sequence[str] | None) -> bool:
    if not isinstance(module, nn.Linear | nn.Conv2d):
        return False
    if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros"):
        return False  # peft's conv LoRA assumes a plain conv; such modules take the slow tier
    if targets is None:
        return True
    return any(name == t or name.endswith("." + t) for t in targets)


class SlotLayout:
    """Where each module's A, Bt and scale sit in the flat buffer, for a given slot rank."""

    def __init__(self, modules: Iterable[tuple[str, nn.Module]], rank: int) -> None:
        if rank < 1:
            raise ValueError(f"slot rank must be at least 1, got {rank}")
        self.rank = rank
        placed: list[SlotModule] = []
        offset = 0
        for name, mod in modules:
            conv = None
            if isinstance(mod, nn.Conv2d):
                kh, kw = mod.kernel_size
                in_f, out_f = mod.in_channels * kh * kw, mod.out_channels
                conv = ConvGeometry(
                    mod.in_channels, (kh, kw), mod.stride, mod.padding, mod.dilation
                )
            else:
                in_f, out_f = mod.in_features, mod.out_features
            placed.append(SlotModule(name, in_f, out_f, offset, offset + rank * in_f, conv))
            offset += rank * (in_f + out_f)
        self.modules = tuple(placed)
        self.index = {m.name: i for i, m in enumerate(self.modules)}
        self.numel = offset

    @classmethod
    def for_components(
        cls,
        components: Mapping[str, nn.Module],
        rank: int,
        targets: Sequence[str] | None = None,
    ) -> SlotLayout:
        """Every Linear/Conv2d of each component (``{"unet": unet, "text_encoder": te}``),
        named ``<component>.<module path>``; ``targets`` (name suffixes) narrows the set."""
        found = [
            (f"{prefix}.{name}", mod)
            for prefix, component in components.items()
            for name, mod in component.named_modules()
            if _wanted(name, mod, targets)
        ]
        return cls(found, rank)

    def count(self) -> tuple[int, int]:
        """(Linear modules, Conv2d modules) in the slot."""
        convs = sum(1 for m in self.modules if m.conv is not None)
        return len(self.modules) - convs, convs

    def views(self, flat: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(A, Bt) views of the slot's full rank into ``flat``, in layout order."""
        r = self.rank
        return [
            (
                flat[m.a_offset : m.b_offset].view(r, m.in_features),
                flat[m.b_offset : m.b_offset + r * m.out_features].view(r, m.out_features),
            )
            for m in self.modules
        ]

    def pack(
        self,
        weights: Mapping[str, tuple[torch.Tensor, torch.Tensor, float]],
        *,
        dtype: torch.dtype,
        pin_memory: bool = False,
    ) -> PackedAdapter:
        """An adapter ``{module: (A, B, scale)}`` (peft shapes: A (r, in[, kh, kw]), B (out, r
        [, 1, 1])) → a compact :class:`PackedAdapter` on the host.

        Raises ``KeyError`` for a module outside the slot and ``ValueError`` for a shape that
        does not fit (rank above the slot's, or features of another architecture)."""
        entries: list[tuple[int, int, torch.Tensor, torch.Tensor, float]] = []
        for name, (a, b, scale) in weights.items():
            i = self.index[name]
            m = self.modules[i]
            a2, b2 = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
            rank = a2.shape[0]
            if b2.shape[1] != rank or (m.conv is None and (a.ndim, b.ndim) != (2, 2)):
                raise ValueError(f"{name}: A {tuple(a.shape)} and B {tuple(b.shape)} disagree")
            if a2.shape[1] != m.in_features or b2.shape[0] != m.out_features:
                raise ValueError(
                    f"{name}: adapter has in/out features {a2.shape[1]}/{b2.shape[0]}, "
                    f"the base model {m.in_features}/{m.out_features}"
                )
            if rank > self.rank:
                raise ValueError(f"{name}: rank {rank} is above the slot rank {self.rank}")
            entries.append((i, rank, a2, b2.t(), scale))
        entries.sort(key=lambda e: e[0])
        total = sum(
            r * (self.modules[i].in_features + self.modules[i].out_features) for i, r, *_ in entries
        )
        flat = torch.empty(total, dtype=dtype, pin_memory=pin_memory)
        placed, offset = [], 0
        for i, rank, a, bt, scale in entries:
            m = self.modules[i]
            n_a, n_b = rank * m.in_features, rank * m.out_features
            flat[offset : offset + n_a].copy_(a.reshape(-1))
            flat[offset + n_a : offset + n_a + n_b].copy_(bt.reshape(-1))
            placed.append(PackedEntry(i, rank, offset, float(scale)))
            offset += n_a + n_b
        return PackedAdapter(flat, tuple(placed))


@dataclass(frozen=True)
class PackedEntry:
    """One module of a packed adapter: slot index, its own rank, its A's offset, its scale."""

    index: int
    rank: int
    offset: int
    scale: float


@dataclass(frozen=True)
class SwitchPlan:
    """What :meth:`~loraplex.worker.slot.LoraSlot.load` copies: slot views ← adapter views,
    and the scales."""

    dst: list[torch.Tensor]
    src: list[torch.Tensor]
    scale_index: torch.Tensor
    scale_values: torch.Tensor
    staging: torch.Tensor | None = None  # the staging buffer ``src`` views, when staged
    owner: int = 0  # id() of the slot whose buffer ``dst`` views
    parts: list[Pieces] | None = None  # on CPU: dst/src cut for a parallel copy


@dataclass(eq=False)
class PackedAdapter:
    """An adapter in its own size: per module A_r then Bt_r, back to back in ``flat``.

    ``plan`` caches, once per value, the (slot views, own views) lists a switch copies between
    and the (slot indices, values) of its scales on the slot's device,
    so a switch runs no Python loop over modules."""

    flat: torch.Tensor
    entries: tuple[PackedEntry, ...]
    plan: SwitchPlan | None = field(default=None, repr=False)

    @cached_property
    def ranks(self) -> dict[int, int]:
        """Slot module index → this adapter's rank there."""
        return {e.index: e.rank for e in self.entries}

    @property
    def nbytes(self) -> int:
        return self.flat.numel() * self.flat.element_size()

    def to(self, device: torch.device) -> PackedAdapter:
        """The same adapter with its tensor on ``device`` (the resident tier's copy)."""
        return replace(self, flat=self.flat.to(device, non_blocking=True), plan=None)
