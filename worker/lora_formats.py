"""Read a LoRA file exactly as the pipeline's own ``load_lora_weights`` reads it, per component.

diffusers' loaders differ per pipeline family (SD/SDXL return network alphas and metadata;
Flux needs ``return_alphas``; SD3 returns metadata only) and per component (the denoiser goes
through ``load_lora_adapter``, text encoders through ``_load_lora_into_text_encoder``, each
with its own key conversion and its own rank/alpha rules). This module reproduces those calls —
using diffusers' and peft's own conversion functions, not re-derived rules — up to the point
where diffusers would inject peft layers, and returns each component's ``{module: (A, B)}``
pairs with the per-module scale peft would set. That is what keeps the slot's image equal to
diffusers' own.

It also names adapter kinds diffusers cannot read (LyCORIS LoHa, OFT, …) from the raw keys, so
a refusal says "this is a LoHa" rather than a conversion error.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.loaders import StableDiffusionXLLoraLoaderMixin
from diffusers.utils.peft_utils import _create_lora_config
from diffusers.utils.state_dict_utils import (
    convert_state_dict_to_diffusers,
    convert_state_dict_to_peft,
    convert_unet_state_dict_to_peft,
)
from peft.utils.other import get_pattern_key
from torch import nn

# Raw-key markers of adapter kinds that are not LoRA (A/B pairs), checked in this order.
KIND_MARKERS: tuple[tuple[str, str], ...] = (
    ("hada_w1", "LoHa (LyCORIS Hadamard product)"),
    ("lokr_w1", "LoKr (LyCORIS Kronecker product)"),
    ("oft_blocks", "OFT (orthogonal fine-tuning)"),
    ("oft_diag", "OFT (orthogonal fine-tuning)"),
    ("boft_", "BOFT (butterfly orthogonal fine-tuning)"),
    (".a1.weight", "GLoRA"),
    ("on_input", "(IA)^3"),
    (".diff_b", "a full weight difference (LyCORIS 'full')"),
    (".diff", "a full weight difference (LyCORIS 'full')"),
    ("w_norm", "a LyCORIS norm adapter"),
)
TEXT_ENCODER_MODULES = (".q_proj", ".k_proj", ".v_proj", ".out_proj", ".fc1", ".fc2")


def adapter_kind(keys: Iterable[str]) -> str | None:
    """The non-LoRA adapter kind the raw keys show, or None for LoRA (incl. LoCon, DoRA)."""
    keys = list(keys)
    for marker, kind in KIND_MARKERS:
        if any(marker in k for k in keys):
            return kind
    return None


@dataclass
class ComponentLora:
    """One component's part of an adapter, in peft names relative to the component."""

    component: str
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)
    other_keys: list[str] = field(default_factory=list)  # DoRA magnitudes, biases, LoKr, …


def read_state_dict(
    pipeline_cls: type, path: Path, denoiser: nn.Module
) -> tuple[dict[str, torch.Tensor], dict[str, float] | None, dict[str, Any] | None]:
    """(state dict, network alphas, metadata) as the pipeline's ``load_lora_weights`` gets them."""
    kwargs: dict[str, Any] = {
        "weight_name": path.name,
        "use_safetensors": True,
        "return_lora_metadata": True,
    }
    if issubclass(pipeline_cls, StableDiffusionXLLoraLoaderMixin):
        kwargs["unet_config"] = denoiser.config  # maps kohya's SGM block names (as SDXL does)
    params = inspect.signature(pipeline_cls.lora_state_dict).parameters
    if "return_alphas" in params:  # Flux
        state_dict, alphas, metadata = pipeline_cls.lora_state_dict(
            str(path.parent), return_alphas=True, **kwargs
        )
    else:
        out = pipeline_cls.lora_state_dict(str(path.parent), **kwargs)
        if len(out) == 3:  # SD 1.x/2.x, SDXL
            state_dict, alphas, metadata = out
        else:  # SD3 and the transformer-only families
            (state_dict, metadata), alphas = out, None
    return dict(state_dict), alphas, metadata


def _strip(mapping: Mapping[str, Any] | None, prefix: str) -> dict[str, Any] | None:
    if mapping is None:
        return None
    return {k.removeprefix(prefix): v for k, v in mapping.items() if k.startswith(prefix)}


def denoiser_part(
    name: str,
    state_dict: Mapping[str, torch.Tensor],
    alphas: Mapping[str, float] | None,
    metadata: Mapping[str, Any] | None,
) -> ComponentLora:
    """The denoiser's part as ``ModelMixin.load_lora_adapter(prefix=name)`` would see it."""
    part = ComponentLora(name)
    sd = _strip(state_dict, f"{name}.") or {}
    if not sd:
        return part
    if "lora_A" not in next(iter(sd)):
        sd = convert_unet_state_dict_to_peft(sd)
    rank = {f"^{k}": v.shape[1] for k, v in sd.items() if "lora_B" in k and v.ndim > 1}
    config = _create_lora_config(
        sd, _strip(alphas, f"{name}.") if alphas else alphas, _strip(metadata, f"{name}."), rank
    )
    _fill(part, sd, config)
    return part


def text_encoder_part(
    name: str,
    encoder: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    alphas: Mapping[str, float] | None,
    metadata: Mapping[str, Any] | None,
) -> ComponentLora:
    """A text encoder's part as ``_load_lora_into_text_encoder(prefix=name)`` would see it."""
    part = ComponentLora(name)
    sd = _strip(state_dict, f"{name}.") or {}
    if not sd:
        return part
    sd = convert_state_dict_to_peft(convert_state_dict_to_diffusers(sd))
    if not hasattr(encoder, "text_model"):  # CLIP flattened in recent transformers
        sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    rank = {}
    for module_name, _ in encoder.named_modules():
        key = f"{module_name}.lora_B.weight"
        if module_name.endswith(TEXT_ENCODER_MODULES) and key in sd:
            rank[key] = sd[key].shape[1]
    if alphas:
        alphas = {
            k.removeprefix(f"{name}."): v for k, v in alphas.items() if k.split(".")[0] == name
        }
    config = _create_lora_config(sd, alphas, _strip(metadata, f"{name}."), rank, is_unet=False)
    _fill(part, sd, config)
    return part


def _fill(part: ComponentLora, sd: Mapping[str, torch.Tensor], config: Any) -> None:
    """Split ``sd`` into A/B pairs (others kept by name) and set peft's scale per module."""
    a_parts: dict[str, torch.Tensor] = {}
    b_parts: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith(".lora_A.weight"):
            a_parts[key.removesuffix(".lora_A.weight")] = value
        elif key.endswith(".lora_B.weight"):
            b_parts[key.removesuffix(".lora_B.weight")] = value
        else:
            part.other_keys.append(key)
    for module in sorted(set(a_parts) | set(b_parts)):
        if module in a_parts and module in b_parts:
            part.pairs[module] = (a_parts[module], b_parts[module])
        else:
            part.other_keys.append(module)
    if config.use_dora:
        part.other_keys.append("use_dora")
    for module in part.pairs:
        r = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), module), config.r)
        alpha = config.alpha_pattern.get(
            get_pattern_key(config.alpha_pattern.keys(), module), config.lora_alpha
        )
        part.scales[module] = alpha / math.sqrt(r) if config.use_rslora else alpha / r
