"""The LoRA slot: one device buffer that holds the active adapter's A and B for every module.

Why a slot instead of diffusers' ``load_lora_weights``: diffusers converts keys, builds a peft
config and injects layers on every load (~0.8 s for an SD-1.5 adapter, seconds for SDXL). Here
the pipeline gets, once at start-up, a fixed set of *slot modules*: every ``nn.Linear`` and
``nn.Conv2d`` that adapters target in the denoiser (UNet or DiT transformer) and in each text
encoder diffusers loads LoRAs into (see :class:`SlotLayout`). Each slot module owns two views
into ONE flat device tensor: ``A`` (rank × in) and ``Bt`` (rank × out, B transposed so that the
first ``r`` rows of both are contiguous). Shapes never change after start-up, which is what keeps
compiled graphs valid across switches.

Adapters are stored compactly (:class:`PackedAdapter`): their own modules at their own ranks,
in one flat tensor, not padded to the slot. Making one active (:meth:`LoraSlot.load`) zeroes
what the previous adapter wrote and scatters the new one into the slot's views with two fused
multi-tensor ops (``torch._foreach_zero_`` / ``_foreach_copy_``): O(bytes of old + new), no
Python loop over tensors' data. Scales (alpha / rank, as peft computes them) sit in a small fp32
tensor, one per module, 0 where the adapter does not reach.

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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch
from loraplex.worker.parallel_copy import Pieces, copier_for
from torch import nn
from torch.nn import functional

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
    """What :meth:`LoraSlot.load` copies: slot views ← adapter views, and the scales."""

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
        self._views = layout.views(self.buffer)
        self._copier = copier_for(device)
        self._modules = [modules[m.name] for m in layout.modules]
        self._hooks = [
            _SlotHook(self, m, a, bt, self.scales[i])
            for i, (m, (a, bt)) in enumerate(zip(layout.modules, self._views, strict=True))
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
                a, bt = self._views[e.index]
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
            self._handles[index] = self._modules[index].register_forward_hook(hook)

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
