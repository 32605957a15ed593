"""One generation's denoiser inputs at the configs' sizes: SDXL (CFG batch 2) and Flux."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # gpu.py runs as __main__: importing it here at run time would load it twice
    from gpu import Run


def _random(run: Run, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, device=run.device, dtype=run.dtype)


def sdxl_inputs(run: Run) -> list[dict[str, Any]]:
    cfg, batch, side = run.config, 2, run.config["sample_size"]  # batch 2: CFG
    tokens = 8 if run.args.tiny else 77
    pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
    px = side * 8
    time_ids = torch.tensor([[px, px, 0, 0, px, px]] * batch, device=run.device, dtype=run.dtype)
    common = {
        "sample": _random(run, batch, cfg["in_channels"], side, side),
        "encoder_hidden_states": _random(run, batch, tokens, cfg["cross_attention_dim"]),
        "added_cond_kwargs": {"text_embeds": _random(run, batch, pooled), "time_ids": time_ids},
        "return_dict": False,
    }
    steps = run.args.steps
    return [
        {**common, "timestep": torch.full((1,), 999 - i * 999 // steps, device=run.device)}
        for i in range(steps)
    ]


def flux_inputs(run: Run) -> list[dict[str, Any]]:
    cfg, side, txt = run.config, (8 if run.args.tiny else 64), (8 if run.args.tiny else 512)
    pos = torch.arange(side * side, device=run.device)
    img_ids = torch.stack([torch.zeros_like(pos), pos // side, pos % side], dim=1).to(run.dtype)
    common = {
        "hidden_states": _random(run, 1, side * side, cfg["in_channels"]),
        "encoder_hidden_states": _random(run, 1, txt, cfg["joint_attention_dim"]),
        "pooled_projections": _random(run, 1, cfg["pooled_projection_dim"]),
        "img_ids": img_ids,
        "txt_ids": torch.zeros(txt, 3, device=run.device, dtype=run.dtype),
        "guidance": torch.full((1,), 3.5, device=run.device, dtype=torch.float32),
        "return_dict": False,
    }
    steps = run.args.steps
    return [
        {**common, "timestep": torch.full((1,), 1 - i / steps, device=run.device, dtype=run.dtype)}
        for i in range(steps)
    ]
