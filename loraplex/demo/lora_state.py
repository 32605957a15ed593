"""Random LoRA state dicts shaped as peft makes them, from a model's module shapes alone.

:func:`peft_lora_state` picks every Linear/Conv2d whose name is, or ends in ``.``, a target (peft's
rule for a list of names) and draws ``lora_A`` like peft's init and a non-zero ``lora_B``; no copy
of the model is adapted, so building a demo set stays fast.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Scale of the random lora_B: large enough that every adapter moves a 64x64 image visibly
# (mean |diff| > 0.01 on [0, 1] pixels), small enough that the image is not noise.
LORA_B_SCALE = 0.6


def _targeted(model: torch.nn.Module, targets: tuple[str, ...]) -> list[tuple[str, Any]]:
    """Linear and Conv2d modules of ``model`` whose name is, or ends in ``.``, a target (peft's
    rule for a list of target names)."""
    import torch

    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d)
        and any(name == t or name.endswith(f".{t}") for t in targets)
    ]
    if not found:
        raise ValueError(f"no module of {type(model).__name__} matches {targets}")
    return found


def _lora_pair(module: Any, rank: int, generator: torch.Generator, b_scale: float):
    """Random (A, B) for one module, shaped as peft makes them: A like peft's kaiming-uniform
    init (bound 1/sqrt(fan_in)); B (zero in peft, a no-op) normal * ``b_scale``.
    A Conv2d gets a k×k A (its kernel) and a 1×1 B, as LyCORIS LoCon writes them."""
    import torch

    weight = module.weight
    out_features, fan_in = weight.shape[0], weight[0].numel()
    tail = tuple(weight.shape[2:])
    bound = fan_in**-0.5
    a = (torch.rand((rank, *weight.shape[1:]), generator=generator) * 2 - 1) * bound
    b = torch.randn((out_features, rank, *(1,) * len(tail)), generator=generator) * b_scale
    return a.contiguous(), b.contiguous()


def _magnitude(module: Any):
    """DoRA's magnitude vector as peft initialises it: the norm of each output row of W."""
    weight = module.weight.detach()
    norm = weight.reshape(weight.shape[0], -1).norm(dim=1)
    return norm.reshape(1, -1, 1, 1).clone() if weight.dim() == 4 else norm.clone()


def peft_lora_state(
    model: torch.nn.Module,
    rank: int,
    alpha: float,
    targets: tuple[str, ...],
    generator: torch.Generator,
    conv_rank: int | None = None,
    use_dora: bool = False,
    b_scale: float = LORA_B_SCALE,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict peft would save for a LoRA on ``model`` (keys ``<module>.lora_A.weight``,
    ``.lora_B.weight``, DoRA's ``.lora_magnitude_vector``) with random weights, and peft's JSON-able
    ``LoraConfig``. Built directly from the module shapes: no copy of the model is adapted."""
    from peft import LoraConfig

    state: dict[str, Any] = {}
    pattern: dict[str, int] = {}
    for name, module in _targeted(model, targets):
        r = rank
        if conv_rank and module.weight.dim() == 4 and tuple(module.weight.shape[2:]) != (1, 1):
            r = pattern[re.escape(name)] = conv_rank
        state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"] = _lora_pair(
            module, r, generator, b_scale
        )
        if use_dora:
            state[f"{name}.lora_magnitude_vector"] = _magnitude(module)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=sorted(targets),
        rank_pattern=pattern,
        use_dora=use_dora,
    )
    meta = config.to_dict()
    # Sets serialise in hash order; sort so two builds write identical bytes.
    meta["target_modules"] = sorted(meta["target_modules"])
    return state, meta


def lora_modules(state: dict[str, torch.Tensor]) -> list[str]:
    """Module names of a peft state dict (``<module>.lora_A.weight`` keys), sorted."""
    return sorted(k.removesuffix(".lora_A.weight") for k in state if k.endswith(".lora_A.weight"))
