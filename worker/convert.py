"""Convert a LoRA file, once, into a compact slot value — or say why it needs the slow tier.

Keys, formats (diffusers, PEFT, kohya ``lora_unet_``/``lora_te_``/``lora_te1_``/``lora_te2_``,
Flux's kohya / ai-toolkit / XLabs styles, LoCon) and alphas are read exactly as the pipeline's
own ``load_lora_weights`` reads them (:mod:`loraplex.worker.lora_formats`), for every
component diffusers loads LoRAs into (the UNet or DiT transformer and the text encoders).

Outcomes:

* :class:`Converted` with ``packed`` — fits the slot (the fast tiers);
* :class:`Converted` with ``slow_reason`` — a valid adapter the slot cannot express, served by
  diffusers' own load/unload: DoRA (its magnitude vector rescales whole weights), LoRA biases,
  LoKr, Flux Control LoRAs (they widen the base's input layer or change norms), modules or
  ranks outside the slot as configured;
* :class:`~loraplex.shared.errors.NotServable` (422) — not loadable on this base; for LyCORIS
  kinds diffusers cannot read (LoHa, OFT, …) the message names the kind; an adapter with a NaN
  or an infinity in its weights (an fp16 overflow in training) is refused too, naming the
  tensor, since every image it made would be NaN (black).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from loraplex.worker.lora_formats import (
    ComponentLora,
    adapter_kind,
    denoiser_part,
    read_state_dict,
    text_encoder_part,
)
from loraplex.worker.slot_layout import PackedAdapter, SlotLayout
from safetensors import SafetensorError, safe_open
from torch import nn

from loraplex.shared.errors import NotServable

log = logging.getLogger(__name__)
# diffusers' loaders raise these on files they cannot map (kohya keys left unconverted, a
# LoraConfig field this peft lacks, an empty rank table …).
_LOADER_ERRORS = (ValueError, KeyError, OSError, RuntimeError, IndexError, TypeError)


@dataclass(frozen=True)
class Converted:
    """An adapter in the slot's compact form (``packed``), or why it takes the slow tier."""

    packed: PackedAdapter | None
    slow_reason: SlowReason | None = None

    @property
    def nbytes(self) -> int:
        return 0 if self.packed is None else self.packed.nbytes


class SlowReason(NamedTuple):
    """Why an adapter takes the slow tier: ``kind`` is a bounded label (the metric's
    ``reason``: dora, lora_bias, other_weights, control_lora, outside_slot, rank), ``text`` the
    sentence for the response header and the log."""

    kind: str
    text: str

    def __str__(self) -> str:
        return self.text


def check_safetensors(path: Path) -> list[str]:
    """The file's keys; refuses (422) a file that is not readable safetensors."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            for key in keys:
                handle.get_slice(key)
    except (SafetensorError, OSError, ValueError) as exc:
        raise NotServable(
            f"adapter file {path.name} is not a valid safetensors file ({exc}); re-upload it"
        ) from None
    return keys


def convert(
    pipeline_cls: type,
    path: Path,
    components: Mapping[str, nn.Module],
    layout: SlotLayout,
    *,
    dtype: torch.dtype,
    pin_memory: bool,
) -> Converted:
    """Read ``path`` and pack it for the slot. ``components`` maps each component diffusers
    loads LoRAs into (``unet``/``transformer`` first, then text encoders) to its module."""
    kind = adapter_kind(check_safetensors(path))
    denoiser_name, denoiser = next(iter(components.items()))
    try:
        state_dict, alphas, metadata = read_state_dict(pipeline_cls, path, denoiser)
    except _LOADER_ERRORS as exc:
        if kind is not None:
            raise NotServable(
                f"{path.name} is a {kind} adapter, which diffusers cannot load into "
                f"{pipeline_cls.__name__}; use a LoRA (LoCon) version of it, or extract one"
            ) from None
        raise NotServable(f"{path.name} is not a LoRA this worker can read: {exc}") from None
    _check_keys(path, pipeline_cls, state_dict, components)
    _check_finite(path, state_dict)
    outside = sorted({k.split(".")[0] for k in state_dict} - set(components))
    if outside:
        return Converted(
            None, f"it has {outside[0]} parts, outside the slot (LORAPLEX_SLOT_TEXT_ENCODERS)"
        )
    if any("lora" not in k for k in state_dict):
        return Converted(None, "it also changes norm layers (a Flux Control LoRA)")
    if kind is not None:
        return Converted(None, f"it is {kind}, not low-rank A/B pairs")
    try:
        parts = [
            denoiser_part(name, state_dict, alphas, metadata)
            if name == denoiser_name
            else text_encoder_part(name, module, state_dict, alphas, metadata)
            for name, module in components.items()
        ]
    except _LOADER_ERRORS as exc:
        raise NotServable(
            f"{path.name}: its LoRA metadata cannot be read ({type(exc).__name__}: {exc}); "
            "re-save it with this diffusers/peft version"
        ) from None
    # One walk of each touched component's module tree, shared by both checks.
    modules = {p.component: dict(components[p.component].named_modules()) for p in parts if p.pairs}
    _drop_missing(path, parts, modules)
    reason = _slow_reason(pipeline_cls, parts, modules, layout)
    if reason is not None:
        return Converted(None, reason)
    weights = {
        f"{part.component}.{module}": (a, b, part.scales[module])
        for part in parts
        for module, (a, b) in part.pairs.items()
    }
    return Converted(layout.pack(weights, dtype=dtype, pin_memory=pin_memory))


def _check_keys(
    path: Path, pipeline_cls: type, state_dict: Mapping[str, torch.Tensor], components: Mapping
) -> None:
    norm_keys = tuple(getattr(pipeline_cls, "_control_lora_supported_norm_keys", ()))
    if not state_dict or not all("lora" in k or k.endswith(norm_keys) for k in state_dict):
        raise NotServable(f"{path.name} holds no LoRA weights (no 'lora' keys)")
    prefixes = tuple(f"{name}." for name in components)
    loadable = tuple(f"{name}." for name in getattr(pipeline_cls, "_lora_loadable_modules", ()))
    foreign = [k for k in state_dict if not k.startswith(prefixes)]
    if any(not k.startswith(loadable) for k in foreign):
        raise NotServable(
            f"{path.name}: key {foreign[0]!r} names no part of this pipeline (PEFT's own "
            "'base_model.model.' layout, or an adapter for another model family?); diffusers "
            "would load nothing from it — re-save the adapter with diffusers' save_lora_weights"
        )


def _check_finite(path: Path, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Refuse weights that are not all finite, before they reach the slot or diffusers."""
    for key, tensor in state_dict.items():
        if tensor.is_floating_point() and _has_non_finite(tensor):
            raise NotServable(
                f"{path.name}: {key} holds NaN or infinite values, so every image with it would "
                "be NaN (black); this is usually an fp16 overflow in training — re-export the "
                "adapter from a checkpoint before it diverged, or in fp32/bf16"
            )


def _has_non_finite(tensor: torch.Tensor) -> bool:
    # A float32-accumulated sum is non-finite whenever an element is, and costs ~1/7 of an
    # elementwise isfinite pass (~30 ms for 100 MB on a CPU core, against ~300 ms to convert);
    # only then the exact check, since huge finite weights could also overflow the sum.
    if bool(torch.isfinite(tensor.sum(dtype=torch.float32))):
        return False
    return not bool(torch.isfinite(tensor).all())


def _drop_missing(
    path: Path, parts: list[ComponentLora], modules: Mapping[str, Mapping[str, nn.Module]]
) -> None:
    """Drop modules the base does not have, as peft does (it warns about the unexpected keys
    and loads the rest); 422 when none of the adapter's modules exist: another architecture."""
    missing: list[str] = []
    for part in parts:
        present = modules.get(part.component, {})
        for name in [n for n in part.pairs if n not in present]:
            del part.pairs[name]
            missing.append(f"{part.component}.{name}")
    if not missing:
        return
    if not any(part.pairs for part in parts):
        raise NotServable(
            f"{path.name} targets none of this base's modules (e.g. {missing[0]}); it was made "
            "for another architecture"
        )
    log.warning(
        "%s: %d modules this base does not have are ignored, as diffusers ignores them (e.g. %s)",
        path.name,
        len(missing),
        missing[0],
    )


def _slow_reason(
    pipeline_cls: type,
    parts: list[ComponentLora],
    modules: Mapping[str, Mapping[str, nn.Module]],
    layout: SlotLayout,
) -> SlowReason | None:
    """Why this adapter cannot go into the slot (None: it fits); 422 for foreign shapes."""
    for part in parts:
        if part.other_keys:
            return _other_weights_reason(part)
        present = modules.get(part.component, {})
        for name, (a, b) in part.pairs.items():
            widens = _check_shape(pipeline_cls, part.component, name, a, b, present.get(name))
            if widens:
                text = f"it widens {part.component}.{name} (a Flux Control LoRA)"
                return SlowReason("control_lora", text)
    for part in parts:
        for name, (a, _) in part.pairs.items():
            full = f"{part.component}.{name}"
            if full not in layout.index:
                text = (
                    f"it targets {full}, outside the slot (see LORAPLEX_SLOT_MODULES and "
                    "LORAPLEX_SLOT_TEXT_ENCODERS)"
                )
                return SlowReason("outside_slot", text)
            if a.shape[0] > layout.rank:
                text = f"its rank {a.shape[0]} is above the slot rank {layout.rank}"
                return SlowReason("rank", text)
    return None


def _other_weights_reason(part: ComponentLora) -> SlowReason:
    key = part.other_keys[0]
    if "use_dora" in part.other_keys or any("magnitude" in k for k in part.other_keys):
        text = "it is DoRA: its magnitude vector rescales whole weights, not an added delta"
        return SlowReason("dora", text)
    if key.endswith(".bias"):
        return SlowReason("lora_bias", f"it has LoRA biases ({part.component}.{key})")
    text = f"it uses weights other than plain lora_A/lora_B ({part.component}.{key})"
    return SlowReason("other_weights", text)


def _check_shape(
    pipeline_cls: type,
    component: str,
    name: str,
    a: torch.Tensor,
    b: torch.Tensor,
    target: nn.Module | None,
) -> bool:
    """422 for modules the base lacks or whose shapes differ (an adapter for another model);
    True when diffusers would widen the base to fit it (Flux Control LoRAs: the slow tier)."""
    target = getattr(target, "base_layer", target)  # under a peft layer: the wrapped module
    if not isinstance(target, nn.Linear | nn.Conv2d):
        raise NotServable(
            f"adapter targets {component}.{name}, which this base model does not have; it was "
            "made for another architecture"
        )
    out_f, in_f = target.weight.shape[:2]
    expandable = hasattr(pipeline_cls, "_maybe_expand_transformer_param_shape_or_error_")
    if expandable and isinstance(target, nn.Linear) and a.shape[1] > in_f and b.shape[0] == out_f:
        return True
    if a.shape[1] != in_f or b.shape[0] != out_f or a.shape[0] != b.shape[1]:
        raise NotServable(
            f"adapter shape mismatch at {component}.{name}: A {tuple(a.shape)}, B "
            f"{tuple(b.shape)} vs base weight {tuple(target.weight.shape)}; it was made for "
            "another architecture"
        )
    if isinstance(target, nn.Conv2d) and tuple(a.shape[2:]) != tuple(target.kernel_size):
        raise NotServable(
            f"adapter kernel mismatch at {component}.{name}: A {tuple(a.shape)} vs base "
            f"kernel {tuple(target.kernel_size)}"
        )
    return False
