"""Exact fused serving: fold the active adapter into the weights, restore them bit-exact.

The slot's hooks (``slot.py``) add ``scale · Bt(A(x))`` to every targeted module's output: two
extra small matmuls per module per denoising step. Fused serving folds the same delta into the
targeted weights once per switch and turns the hooks off, so a step costs what the base costs:

* Linear ``W (out, in)``: ``W + scale · Bt_rᵀ A_r`` (peft's ``lora_B.weight @ lora_A.weight``);
* Conv2d ``W (out, c, kh, kw)``: the k×k down conv followed by the 1×1 up conv is ONE k×k conv
  with weight ``scale · Bt_rᵀ A_r`` (each output channel is a fixed mix of the r down channels),
  reshaped to ``(out, c, kh, kw)`` — same stride, padding and dilation as the base's.

The sum is computed in fp32 and cast once to the weight's dtype (peft computes in the weight's
dtype; fp32 rounds once). Unfusing never subtracts (what diffusers' ``unfuse_lora`` does, which
drifts): :meth:`Merger.restore` copies the targeted weights back from a *pristine copy* taken
the first time each module was fused, so the base is bit-exact afterwards, after any number of
cycles. The copy is kept only for modules ever fused, on the host (pinned on CUDA) or on the
device (setting ``MERGE_PRISTINE``); its size is logged as it grows (:attr:`Merger.pristine_bytes`).

While fused, the slot is *deactivated* (``slot.active`` False, its buffer keeps the adapter):
in compiled mode that is the base graph the warm-up already built, so fusing never recompiles.

When to fuse (``MERGE``): ``never``, ``always`` (every slot adapter, once per switch), or
``auto``: :func:`should_fuse` — when the per-step hook overhead the fused run saves, times the
denoising steps of same-adapter work queued, exceeds the fuse + restore cost. Both are measured
at start-up by :func:`measure_costs` (never guessed); :func:`estimate` scales them to one adapter.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from loraplex.worker.slot import LoraSlot
from loraplex.worker.slot_layout import PackedAdapter, PackedEntry, SlotLayout

log = logging.getLogger(__name__)
MergeMode = Literal["never", "auto", "always"]
PristineStore = Literal["host", "device"]
FOLD_SAMPLE_BYTES = 64 * 1024 * 1024  # weights folded + restored to time fuse/restore per byte


@dataclass(frozen=True)
class MergeCosts:
    """Start-up measurements: the hooks' per-step overhead with every slot module at the full
    slot rank (vs the base), and the fuse and restore cost per byte of targeted weight."""

    hook_step_s: float
    fuse_s_per_byte: float
    restore_s_per_byte: float


@dataclass(frozen=True)
class FuseEstimate:
    """One adapter's figures: the per-step overhead fusing saves, and what fusing costs."""

    hook_step_s: float
    fuse_s: float
    restore_s: float


def estimate(costs: MergeCosts, *, hook_share: float, weight_bytes: int) -> FuseEstimate:
    """Scale start-up ``costs`` to one adapter: ``hook_share`` is its part of the full slot's
    hook work (1 in compiled mode, where every hook runs at the full rank), ``weight_bytes`` the
    bytes of the weights it targets."""
    return FuseEstimate(
        hook_step_s=costs.hook_step_s * hook_share,
        fuse_s=costs.fuse_s_per_byte * weight_bytes,
        restore_s=costs.restore_s_per_byte * weight_bytes,
    )


def should_fuse(mode: MergeMode, work_steps: int, est: FuseEstimate | None) -> bool:
    """Fuse now? ``auto`` fuses when the saved overhead over ``work_steps`` denoising steps
    exceeds fuse + restore; without measurements (``est`` None: no warm-up) it does not."""
    if mode == "never":
        return False
    if mode == "always":
        return True
    if est is None:
        return False
    return est.hook_step_s * work_steps > est.fuse_s + est.restore_s


@torch.no_grad()
def fold(weight: torch.Tensor, a: torch.Tensor, bt: torch.Tensor, scale: float) -> None:
    """``weight += scale · btᵀ a`` in place, in fp32 (cast once to a half weight's dtype);
    ``a`` is (r, in·kh·kw), ``bt`` (r, out), as the slot holds them (module docstring)."""
    flat = weight.view(weight.shape[0], -1)
    if weight.dtype == torch.float32:
        flat.addmm_(bt.t().float(), a.float(), alpha=scale)  # one pass, no temporary
        return
    merged = flat.float().addmm_(bt.t().float(), a.float(), alpha=scale)
    flat.copy_(merged)


def full_slot_adapter(
    layout: SlotLayout, *, dtype: torch.dtype, device: torch.device
) -> PackedAdapter:
    """A zero adapter on every slot module at the full slot rank, straight on the device (the
    layout's own offsets are a packed adapter's): what the start-up measurement runs."""
    flat = torch.zeros(layout.numel, dtype=dtype, device=device)
    entries = tuple(
        PackedEntry(i, layout.rank, m.a_offset, 1.0) for i, m in enumerate(layout.modules)
    )
    return PackedAdapter(flat, entries)


class Merger:
    """Folds the slot's current adapter into the weights and restores them (device thread)."""

    def __init__(self, slot: LoraSlot, *, pristine: PristineStore = "host") -> None:
        self.slot = slot
        self.weights: list[torch.Tensor] = [mod.weight for mod in slot.modules]
        device = slot.buffer.device
        self._pin = pristine == "host" and device.type == "cuda"
        self._store = torch.device("cpu") if pristine == "host" else device
        self._pristine: dict[int, torch.Tensor] = {}
        self.pristine_bytes = 0  # of those copies: they only grow
        # The full slot's hook work (rank · (in + out) per module): hook_share's denominator.
        widths = sum(m.in_features + m.out_features for m in slot.layout.modules)
        self._full_hook_work = widths * slot.layout.rank
        self._dirty: list[int] = []  # modules whose weight holds a folded delta now
        self.fused: PackedAdapter | None = None
        self.fuses = 0

    def weight_bytes(self, packed: PackedAdapter) -> int:
        return sum(self._nbytes(e.index) for e in packed.entries)

    def hook_share(self, packed: PackedAdapter) -> float:
        """``packed``'s part of the full slot's hook work (rank · (in + out) per module)."""
        if self.slot.static:
            return 1.0  # compiled mode: every hook computes at the full slot rank
        modules = self.slot.layout.modules
        full = self._full_hook_work
        used = sum(e.rank * (modules[e.index].in_features + modules[e.index].out_features)
                   for e in packed.entries)  # fmt: skip
        return used / full if full else 0.0

    def prepare(self, mode: MergeMode, work_steps: int, costs: MergeCosts | None) -> bool:
        """Fuse the slot's adapter if ``mode`` says so for ``work_steps``; True when fused now.
        Nothing to do while fused already, on the base or on the slow tier."""
        packed = self.slot.current
        if self.fused is not None or not self.slot.active or packed is None:
            return self.fused is not None
        est = None
        if costs is not None:
            est = estimate(
                costs, hook_share=self.hook_share(packed), weight_bytes=self.weight_bytes(packed)
            )
        if not should_fuse(mode, work_steps, est):
            return False
        log.debug("merge %s: fusing for %d steps (%s)", mode, work_steps, est)
        try:
            self.fuse()
        except torch.cuda.OutOfMemoryError:
            log.warning("merge: out of memory while fusing; this run stays hooked")
            return False
        return True

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the slot's active adapter into the targeted weights and turn the hooks off.
        Any failure half-way restores what was folded (and re-raises): never a mixed state."""
        packed = self.slot.current
        if self.fused is not None or packed is None or not self.slot.active:
            raise RuntimeError("merge: fuse needs an active slot adapter and nothing fused")
        grown = self._save([e.index for e in packed.entries])  # before any weight changes
        self.fused = packed
        try:
            for e in packed.entries:
                self._dirty.append(e.index)
                self._fold(e)
        except BaseException:
            self.restore()
            raise
        self.slot.deactivate()
        self.fuses += 1
        if grown:
            where = "pinned host" if self._pin else self._store.type
            log.info(
                "merge: pristine copy grew by %.1f MB to %.1f MB (%s) for %d modules",
                grown / 1e6,
                self.pristine_bytes / 1e6,
                where,
                len(self._pristine),
            )

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the fused modules' weights back from the pristine copy (bit-exact); the slot
        stays off — the caller loads the next adapter or serves the base."""
        if self._dirty:
            dst = [self.weights[i] for i in self._dirty]
            src = [self._pristine[i] for i in self._dirty]
            torch._foreach_copy_(dst, src, non_blocking=self._pin)
        self._dirty.clear()
        self.fused = None

    @torch.no_grad()
    def measure_fold(
        self, sync: Callable[[], None], budget_bytes: int = FOLD_SAMPLE_BYTES
    ) -> tuple[float, float]:
        """(fuse, restore) seconds per weight byte. Folds the slot's views at the full slot
        rank (the caller loaded a zero adapter: the weights do not change) into an even sample
        of slot modules, up to about ``budget_bytes``, then restores them from a temporary copy
        in the pristine copy's store."""
        everything = sum(self._nbytes(i) for i in range(len(self.weights)))
        stride = max(1, -(-everything // budget_bytes))
        sample = list(range(0, len(self.weights), stride))
        total = sum(self._nbytes(i) for i in sample)
        saved = [self._copy(self.weights[i]) for i in sample]
        sync()
        started = time.perf_counter()
        for i in sample:
            a, bt = self.slot.views[i]
            fold(self.weights[i], a, bt, 1.0)
        sync()
        fuse_s = time.perf_counter() - started
        torch._foreach_copy_([self.weights[i] for i in sample], saved, non_blocking=self._pin)
        sync()
        restore_s = time.perf_counter() - started - fuse_s
        return fuse_s / total, restore_s / total

    def _fold(self, e: PackedEntry) -> None:
        a, bt = self.slot.views[e.index]
        fold(self.weights[e.index], a[: e.rank], bt[: e.rank], e.scale)

    def _save(self, indices: Sequence[int]) -> int:
        """Copy the weights of ``indices`` not copied yet into ONE new buffer per dtype (one
        pinned allocation, not one per module: the pinned allocator rounds each up); bytes."""
        groups: dict[torch.dtype, list[int]] = {}
        for i in indices:
            if i not in self._pristine:
                groups.setdefault(self.weights[i].dtype, []).append(i)
        grown = 0
        for dtype, group in groups.items():
            n = sum(self.weights[i].numel() for i in group)
            flat = torch.empty(n, dtype=dtype, device=self._store, pin_memory=self._pin)
            offset = 0
            for i in group:
                w = self.weights[i]
                view = flat[offset : offset + w.numel()].view(w.shape)
                self._pristine[i] = view.copy_(w.detach())
                offset += w.numel()
            grown += n * flat.element_size()
        self.pristine_bytes += grown
        return grown

    def _copy(self, weight: torch.Tensor) -> torch.Tensor:
        copy = torch.empty(
            weight.shape, dtype=weight.dtype, device=self._store, pin_memory=self._pin
        )
        return copy.copy_(weight.detach())

    def _nbytes(self, index: int) -> int:
        w = self.weights[index]
        return w.numel() * w.element_size()


def measure_costs(
    slot: LoraSlot,
    merger: Merger,
    run: Callable[[], object],
    steps: int,
    *,
    sync: Callable[[], None],
    reps: int = 3,
) -> MergeCosts:
    """Time ``run`` (one generation of ``steps`` denoising steps, as the pipeline is now) with
    the slot off and with a zero full-slot adapter on, in turns (a warm-up turn first), and a
    fold + restore of sample weights; the slot ends off and empty (eager mode: no hook left)."""
    if merger.fused is not None:
        raise RuntimeError("merge: measure with nothing fused (the base active)")
    synthetic = full_slot_adapter(slot.layout, dtype=slot.buffer.dtype, device=slot.buffer.device)
    times: dict[str, list[float]] = {"base": [], "hooked": []}
    setups = {"base": slot.deactivate, "hooked": lambda: slot.load(synthetic)}
    try:
        for turn in range(reps + 1):
            for name, setup in setups.items():
                setup()
                sync()
                started = time.perf_counter()
                run()
                sync()
                if turn:
                    times[name].append(time.perf_counter() - started)
        slot.load(synthetic)  # the fold reads the (zero) slot views
        fuse_per_byte, restore_per_byte = merger.measure_fold(sync)
    finally:
        slot.activate_empty()  # zero what the synthetic adapter wrote, then off
        slot.deactivate()
        if not slot.static:
            slot.remove()  # eager hooks re-attach on the next load, only where adapters reach
    base, hooked = statistics.median(times["base"]), statistics.median(times["hooked"])
    costs = MergeCosts(max(0.0, hooked - base) / steps, fuse_per_byte, restore_per_byte)
    gb = 1e9
    log.info(
        "merge auto: hooks add %.2f ms per step over the base (full slot; base %.1f ms per run "
        "of %d steps); fuse %.1f ms/GB, restore %.1f ms/GB of targeted weights",
        costs.hook_step_s * 1e3,
        base * 1e3,
        steps,
        costs.fuse_s_per_byte * gb * 1e3,
        costs.restore_s_per_byte * gb * 1e3,
    )
    return costs
