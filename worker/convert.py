"""Convert a LoRA file, once, into the slot's flat layout — or say why it needs the slow path.

Key formats (diffusers, kohya, PEFT) and alphas are read exactly as diffusers reads them: the
pipeline class's own ``lora_state_dict`` (which maps kohya keys and returns network alphas and
the ``lora_adapter_metadata`` of the file), then the same ``LoraConfig`` diffusers would build
(``_create_lora_config``) and peft's pattern rule for per-module rank and alpha. Reusing their
code rather than re-deriving it is what keeps the slot's image equal to diffusers' own.

Outcomes: :class:`Converted` with a flat tensor (fits the slot), :class:`Converted` with
``slow_reason`` (valid but outside the slot: text-encoder parts, modules outside the slot, rank
above it, DoRA/bias), or :class:`~loraplex.shared.errors.NotServable` (not loadable on this base).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.loaders import StableDiffusionXLLoraLoaderMixin
from diffusers.utils.peft_utils import _create_lora_config
from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft
from loraplex.worker.slot import SlotLayout
from peft.utils.other import get_pattern_key
from safetensors import SafetensorError, safe_open
from torch import nn

from loraplex.shared.errors import NotServable

UNET_PREFIX = "unet."
COMPONENT_PREFIXES = (UNET_PREFIX, "text_encoder.", "text_encoder_2.")


@dataclass(frozen=True)
class Converted:
    """An adapter in the slot layout (``flat``), or the reason it must take the slow path."""

    flat: torch.Tensor | None
    slow_reason: str | None = None

    @property
    def nbytes(self) -> int:
        return 0 if self.flat is None else self.flat.numel() * self.flat.element_size()


def check_safetensors(path: Path) -> None:
    """Refuse a file that is not a readable safetensors file (422) before diffusers sees it."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a Mapping
                handle.get_slice(key)
    except (SafetensorError, OSError, ValueError) as exc:
        raise NotServable(
            f"adapter file {path.name} is not a valid safetensors file ({exc}); re-upload it"
        ) from None


def convert(
    pipeline_cls: type,
    path: Path,
    unet: nn.Module,
    layout: SlotLayout,
    *,
    dtype: torch.dtype,
    pin_memory: bool,
) -> Converted:
    """Read ``path`` (a safetensors LoRA) and pack it for the slot, or give the slow reason."""
    check_safetensors(path)
    try:
        state_dict, alphas, metadata = pipeline_cls.lora_state_dict(
            str(path.parent),
            weight_name=path.name,
            use_safetensors=True,
            return_lora_metadata=True,
            **_loader_kwargs(pipeline_cls, unet),
        )
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise NotServable(f"{path.name} is not a LoRA this worker can read: {exc}") from None
    if not state_dict or not all("lora" in k for k in state_dict):
        raise NotServable(f"{path.name} holds no LoRA weights (no 'lora' keys)")
    foreign = [k for k in state_dict if not k.startswith(COMPONENT_PREFIXES)]
    if foreign:
        raise NotServable(
            f"{path.name}: key {foreign[0]!r} names no part of this pipeline (PEFT's own "
            "'base_model.model.' layout?); diffusers would load nothing from it — re-save the "
            "adapter with diffusers' save_lora_weights"
        )
    unet_sd = {k[len(UNET_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(UNET_PREFIX)}
    if len(unet_sd) < len(state_dict):
        return Converted(None, "it has text-encoder (or other non-UNet) parts")
    if "lora_A" not in next(iter(unet_sd)):
        unet_sd = convert_unet_state_dict_to_peft(unet_sd)
    pairs = _pairs(unet_sd)
    if pairs is None:
        return Converted(None, "it uses weights other than plain lora_A/lora_B (DoRA, bias)")
    _check_shapes(pairs, unet)
    outside = sorted(set(pairs) - set(layout.index))
    if outside:
        return Converted(None, f"it targets modules outside the slot, e.g. {outside[0]}")
    too_high = [m for m, (a, _) in pairs.items() if a.shape[0] > layout.rank]
    if too_high:
        return Converted(None, f"its rank is above the slot rank {layout.rank}")
    try:
        scales = _scales(unet_sd, pairs, alphas, metadata)
    except (TypeError, ValueError, KeyError) as exc:  # e.g. a LoraConfig field peft lacks
        raise NotServable(
            f"{path.name}: its LoRA metadata cannot be read ({type(exc).__name__}: {exc}); "
            "re-save it with this diffusers/peft version"
        ) from None
    weights = {m: (a, b, scales[m]) for m, (a, b) in pairs.items()}
    return Converted(layout.pack(weights, dtype=dtype, pin_memory=pin_memory))


def _loader_kwargs(pipeline_cls: type, unet: nn.Module) -> dict[str, object]:
    """What the pipeline's own ``load_lora_weights`` adds: SDXL maps kohya's SGM block names
    with the UNet config; SD 1.x/2.x does not (and must not)."""
    if issubclass(pipeline_cls, StableDiffusionXLLoraLoaderMixin):
        return {"unet_config": unet.config}
    return {}


def _pairs(sd: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
    """``{module: (A, B)}``, or None when the file has anything but lora_A/lora_B weights."""
    a_parts: dict[str, torch.Tensor] = {}
    b_parts: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith(".lora_A.weight"):
            a_parts[key.removesuffix(".lora_A.weight")] = value
        elif key.endswith(".lora_B.weight"):
            b_parts[key.removesuffix(".lora_B.weight")] = value
        else:
            return None
    if set(a_parts) != set(b_parts):
        missing = sorted(set(a_parts) ^ set(b_parts))[0]
        raise NotServable(f"adapter has lora_A without lora_B (or the reverse) for {missing}")
    return {m: (a_parts[m], b_parts[m]) for m in a_parts}


def _check_shapes(pairs: Mapping[str, tuple[torch.Tensor, torch.Tensor]], unet: nn.Module) -> None:
    """422 for modules the base lacks or whose shapes differ: an adapter for another model."""
    modules = dict(unet.named_modules())
    for name, (a, b) in pairs.items():
        target = modules.get(name)
        target = getattr(target, "base_layer", target)  # under a peft layer: the wrapped module
        if not isinstance(target, nn.Linear | nn.Conv2d):
            raise NotServable(
                f"adapter targets {name!r}, which this base model does not have; it was made "
                "for another architecture"
            )
        out_f, in_f = target.weight.shape[:2]
        if a.shape[1] != in_f or b.shape[0] != out_f or a.shape[0] != b.shape[1]:
            raise NotServable(
                f"adapter shape mismatch at {name}: A {tuple(a.shape)}, B {tuple(b.shape)} vs "
                f"base weight {tuple(target.weight.shape)}; it was made for another architecture"
            )


def _scales(
    unet_sd: Mapping[str, torch.Tensor],
    pairs: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    alphas: Mapping[str, float] | None,
    metadata: Mapping[str, object] | None,
) -> dict[str, float]:
    """Per-module alpha / rank exactly as diffusers + peft would set ``scaling``."""
    ranks = {f"^{m}.lora_B.weight": b.shape[1] for m, (_, b) in pairs.items()}
    if alphas:
        alphas = {
            k.removeprefix(UNET_PREFIX): v for k, v in alphas.items() if k.startswith(UNET_PREFIX)
        }
    if metadata is not None:
        metadata = {
            k.removeprefix(UNET_PREFIX): v for k, v in metadata.items() if k.startswith(UNET_PREFIX)
        }
    config = _create_lora_config(dict(unet_sd), alphas, metadata, ranks)
    scales = {}
    for module in pairs:
        r = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), module), config.r)
        alpha = config.alpha_pattern.get(
            get_pattern_key(config.alpha_pattern.keys(), module), config.lora_alpha
        )
        scales[module] = alpha / math.sqrt(r) if config.use_rslora else alpha / r
    return scales
