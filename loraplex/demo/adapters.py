"""Demo LoRA files in the formats trainers write, for every tiny base (written by ``models``).

Each adapter is made the same way: for every Linear/Conv2d of a pipeline component whose name
ends in a target suffix (peft's matching rule), random ``lora_A`` / ``lora_B`` of peft's shapes
(rank ``r``, a separate conv rank for LoCon's k×k convs, DoRA's magnitude vector when asked;
``lora_B`` non-zero, :data:`LORA_B_SCALE`) and peft's ``LoraConfig`` as metadata; then the state
is written in one format:

===============  ================================================================================
format           file contents (what the pipeline's own ``load_lora_weights`` converts)
===============  ================================================================================
``diffusers``    ``<component>.<module>.lora_A/B.weight`` via the pipeline's ``save_lora_weights``
                 with peft's config in the safetensors metadata (rank, alpha, targets)
``peft``         the same keys with no metadata, plus ``adapter_config.json`` (denoiser only)
``kohya``        ``lora_unet_*`` / ``lora_te_*`` (SD 1.x) / ``lora_te1_*`` + ``lora_te2_*`` (SDXL)
                 ``.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``; SDXL UNet names in
                 kohya's sgm layout (``input_blocks_3_1_...``, ``middle_block_1``,
                 ``output_blocks_N_1``), SD 1.x in diffusers layout as kohya-ss writes them;
                 Conv2d k×k modules (LyCORIS LoCon) as k×k down / 1×1 up
``kohya-flux``   the original BFL naming: ``lora_unet_double_blocks_0_img_attn_qkv`` (q, k, v
                 concatenated: one down, stacked ups), ``img_attn_proj``, ``txt_attn_qkv``,
                 ``txt_attn_proj``, ``img_mlp_0/2``, ``txt_mlp_0/2``,
                 ``single_blocks_0_linear2`` + ``.alpha``; CLIP-L as ``lora_te1_*``. Single-block
                 ``linear1`` is not written: diffusers' converter splits it with Flux.1's fixed
                 widths (3072 ×3 + 12288), which a tiny transformer does not have
``xlabs``        XLabs' ``double_blocks.0.processor.{qkv,proj}_lora{1,2}.{down,up}.weight`` and
                 ``single_blocks.0.processor.qkv_lora`` (fused q/k/v; no alpha: scale 1)
===============  ================================================================================
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from loraplex.demo.lora_state import LORA_B_SCALE, lora_modules, peft_lora_state
from loraplex.demo.pipelines import seeded

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline


UNET_TARGETS = ("to_k", "to_out.0", "to_q", "to_v")
TEXT_ENCODER_TARGETS = ("k_proj", "out_proj", "q_proj", "v_proj")
TEXT_ENCODER_MLP_TARGETS = (*TEXT_ENCODER_TARGETS, "fc1", "fc2")
# kohya-ss' default LoRA network on SD: attention, feed-forward and the transformer's in/out
# projections (Conv2d 1x1 in SD 1.x, Linear in SDXL: use_linear_projection).
KOHYA_NETWORK_TARGETS = (*UNET_TARGETS, "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
# LyCORIS LoCon: attention plus the resnets' 3x3 convolutions.
LOCON_TARGETS = (*UNET_TARGETS, "conv1", "conv2")
DIT_ATTENTION_TARGETS = (
    *UNET_TARGETS,
    "add_k_proj",
    "add_q_proj",
    "add_v_proj",
    "to_add_out",
)
DIT_FF_TARGETS = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")
# diffusers' Flux DreamBooth set plus the single blocks' MLP in/out (and the final proj_out).
FLUX_TARGETS = (*DIT_ATTENTION_TARGETS, *DIT_FF_TARGETS, "proj_mlp", "proj_out")
# What BFL-named (kohya) and XLabs files of the tiny Flux (one double block, one single block)
# hold, as diffusers module names: the double block's attention; for XLabs also the single
# block's q/k/v (its qkv_lora); for kohya the double block's MLPs and the single block's
# linear2. Qualified names: a bare "to_q" would also match the single block's attention, which
# kohya fuses into linear1 (not written, see above).
_FLUX_DOUBLE_ATTENTION = tuple(f"transformer_blocks.0.attn.{m}" for m in DIT_ATTENTION_TARGETS)
FLUX_XLABS_TARGETS = (
    *_FLUX_DOUBLE_ATTENTION,
    *(f"single_transformer_blocks.0.attn.{m}" for m in ("to_q", "to_k", "to_v")),
)
FLUX_KOHYA_TARGETS = (
    *_FLUX_DOUBLE_ATTENTION,
    *(f"transformer_blocks.0.{m}" for m in DIT_FF_TARGETS),
    "single_transformer_blocks.0.proj_out",
)

AdapterFormat = Literal["diffusers", "kohya", "peft", "kohya-flux", "xlabs"]
AdapterKind = Literal["lora", "locon", "dora"]
# (pipeline component, module-name suffixes peft targets in it), denoiser first.
Parts = tuple[tuple[str, tuple[str, ...]], ...]
WEIGHT_NAMES = {
    "diffusers": "pytorch_lora_weights.safetensors",
    "peft": "adapter_model.safetensors",
}


@dataclass(frozen=True)
class AdapterSpec:
    """One demo LoRA repo and the traits tests iterate over."""

    repo_id: str
    rank: int
    alpha: float
    format: AdapterFormat
    weight_name: str  # the single .safetensors file in the repo
    base_model: str | list[str] | None
    tags: tuple[str, ...]
    base_model_relation: str | None
    seed: int
    parts: Parts = (("unet", UNET_TARGETS),)
    conv_rank: int | None = None  # rank of Conv2d k×k modules (LoCon's conv_dim); None: rank
    kind: AdapterKind = "lora"
    b_scale: float = LORA_B_SCALE  # std of the random lora_B

    @property
    def scaling(self) -> float:
        """``alpha / rank``: the factor peft applies to ``B @ A`` (what must round-trip)."""
        return self.alpha / self.rank

    @property
    def components(self) -> tuple[str, ...]:
        """Pipeline components the adapter touches (``unet``/``transformer``, text encoders)."""
        return tuple(component for component, _ in self.parts)

    @property
    def has_text_encoder(self) -> bool:
        return any(c.startswith("text_encoder") for c in self.components)

    def targets(self, component: str) -> tuple[str, ...]:
        """Module-name suffixes the adapter targets in ``component`` (() when none)."""
        return dict(self.parts).get(component, ())


def write_card(repo_dir: Path, title: str, body: str = "", **card: Any) -> None:
    """README.md with YAML front matter, written with huggingface_hub's own card types."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(**{k: v for k, v in card.items() if v is not None})
    text = f"---\n{data.to_yaml()}\n---\n\n# {title}\n\n{body}\n"
    repo_dir.mkdir(parents=True, exist_ok=True)
    ModelCard(text).save(repo_dir / "README.md")


# ---------------------------------------------------------------- peft states


PeftParts = dict[str, tuple[dict[str, "torch.Tensor"], dict[str, Any]]]


def peft_parts(pipe: DiffusionPipeline, spec: AdapterSpec) -> PeftParts:
    """The peft state and config of each component ``spec`` adapts, from one seeded RNG."""
    with seeded(spec.seed) as gen:
        return {
            component: peft_lora_state(
                getattr(pipe, component),
                spec.rank,
                spec.alpha,
                targets,
                gen,
                conv_rank=spec.conv_rank,
                use_dora=spec.kind == "dora",
                b_scale=spec.b_scale,
            )
            for component, targets in spec.parts
        }


# ---------------------------------------------------------------- writers per format


def _write_diffusers(pipe: DiffusionPipeline, spec: AdapterSpec, parts: PeftParts, repo: Path):
    layers = {f"{c}_lora_layers": state for c, (state, _) in parts.items()}
    metadata = {f"{c}_lora_adapter_metadata": meta for c, (_, meta) in parts.items()}
    type(pipe).save_lora_weights(repo, weight_name=spec.weight_name, **layers, **metadata)


def _write_peft(pipe: DiffusionPipeline, spec: AdapterSpec, parts: PeftParts, repo: Path):
    from safetensors.torch import save_file

    ((component, (state, meta)),) = parts.items()  # one component: one adapter_config.json
    save_file({f"{component}.{k}": v for k, v in state.items()}, repo / spec.weight_name)
    meta["base_model_name_or_path"] = spec.base_model
    (repo / "adapter_config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def _kohya_prefix(pipe: DiffusionPipeline, component: str) -> str:
    if component == "text_encoder":
        return "lora_te" if type(pipe).__name__ == "StableDiffusionPipeline" else "lora_te1"
    return {"unet": "lora_unet", "text_encoder_2": "lora_te2"}[component]


def _sgm_name(module: str, layers_per_block: int) -> str:
    """A diffusers SDXL UNet attention path in kohya's sgm layout (input/middle/output_blocks)."""
    per = layers_per_block + 1

    def down(m: re.Match) -> str:
        return f"input_blocks.{1 + int(m[1]) * per + int(m[2])}.1"

    def up(m: re.Match) -> str:
        return f"output_blocks.{int(m[1]) * per + int(m[2])}.1"

    module = re.sub(r"^down_blocks\.(\d+)\.attentions\.(\d+)", down, module)
    module = re.sub(r"^up_blocks\.(\d+)\.attentions\.(\d+)", up, module)
    return re.sub(r"^mid_block\.attentions\.0", "middle_block.1", module)


def _kohya_module(pipe: DiffusionPipeline, component: str, module: str) -> str:
    if component == "unet" and type(pipe).__name__ == "StableDiffusionXLPipeline":
        module = _sgm_name(module, pipe.unet.config.layers_per_block)
    return f"{_kohya_prefix(pipe, component)}_{module.replace('.', '_')}"


def _kohya_entry(out: dict, name: str, down, up, alpha: float) -> None:
    import torch

    out[f"{name}.lora_down.weight"] = down
    out[f"{name}.lora_up.weight"] = up
    out[f"{name}.alpha"] = torch.tensor(float(alpha))


def _write_kohya(pipe: DiffusionPipeline, spec: AdapterSpec, parts: PeftParts, repo: Path):
    from safetensors.torch import save_file

    out: dict = {}
    for component, (state, _) in parts.items():
        for module in lora_modules(state):
            down, up = state[f"{module}.lora_A.weight"], state[f"{module}.lora_B.weight"]
            _kohya_entry(out, _kohya_module(pipe, component, module), down, up, spec.alpha)
    meta = {"ss_network_dim": str(spec.rank), "ss_network_alpha": str(spec.alpha)}
    if spec.conv_rank:
        meta["ss_network_args"] = json.dumps({"conv_dim": spec.conv_rank, "algo": "locon"})
    save_file(out, repo / spec.weight_name, metadata=meta)


# BFL name in double_blocks_N (kohya) -> diffusers modules in transformer_blocks.N; a fused
# qkv has one down (shared) and the three ups stacked, as diffusers' converter splits it.
_FLUX_DOUBLE = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn_proj": ("attn.to_out.0",),
    "txt_attn_proj": ("attn.to_add_out",),
    "img_mlp_0": ("ff.net.0.proj",),
    "img_mlp_2": ("ff.net.2",),
    "txt_mlp_0": ("ff_context.net.0.proj",),
    "txt_mlp_2": ("ff_context.net.2",),
}
_FLUX_SINGLE = {"linear2": ("proj_out",)}
_XLABS_DOUBLE = {
    "processor.qkv_lora1": _FLUX_DOUBLE["img_attn_qkv"],
    "processor.qkv_lora2": _FLUX_DOUBLE["txt_attn_qkv"],
    "processor.proj_lora1": _FLUX_DOUBLE["img_attn_proj"],
    "processor.proj_lora2": _FLUX_DOUBLE["txt_attn_proj"],
}
_XLABS_SINGLE = {"processor.qkv_lora": _FLUX_DOUBLE["img_attn_qkv"]}


def _fused(state: dict, prefix: str, table: dict[str, tuple[str, ...]], used: set[str]):
    """Yield (name, down, up) for each ``table`` entry whose modules under ``prefix`` are all in
    ``state``, recording the consumed modules in ``used``."""
    import torch

    for name, modules in table.items():
        full = [f"{prefix}.{m}" for m in modules]
        if all(f"{m}.lora_A.weight" in state for m in full):
            used.update(full)
            ups = [state[f"{m}.lora_B.weight"] for m in full]
            yield name, state[f"{full[0]}.lora_A.weight"], torch.cat(ups, dim=0)


def _require_all(state: dict, used: set[str], fmt: str) -> None:
    """A format that cannot express a targeted module fails the build instead of dropping it."""
    left = sorted(set(lora_modules(state)) - used)
    if left:
        raise ValueError(f"{fmt} cannot express {left}")


def _flux_bfl_state(pipe: DiffusionPipeline, state: dict, alpha: float) -> dict:
    """A Flux transformer state in kohya's BFL naming (see the module docstring)."""
    out: dict = {}
    used: set[str] = set()
    for i in range(len(pipe.transformer.transformer_blocks)):
        for bfl, down, up in _fused(state, f"transformer_blocks.{i}", _FLUX_DOUBLE, used):
            _kohya_entry(out, f"lora_unet_double_blocks_{i}_{bfl}", down, up, alpha)
    for i in range(len(pipe.transformer.single_transformer_blocks)):
        prefix = f"single_transformer_blocks.{i}"
        for bfl, down, up in _fused(state, prefix, _FLUX_SINGLE, used):
            _kohya_entry(out, f"lora_unet_single_blocks_{i}_{bfl}", down, up, alpha)
    _require_all(state, used, "kohya-flux")
    return out


def _write_kohya_flux(pipe: DiffusionPipeline, spec: AdapterSpec, parts: PeftParts, repo: Path):
    from safetensors.torch import save_file

    out = _flux_bfl_state(pipe, parts["transformer"][0], spec.alpha)
    if "text_encoder" in parts:
        state = parts["text_encoder"][0]
        for module in lora_modules(state):
            down, up = state[f"{module}.lora_A.weight"], state[f"{module}.lora_B.weight"]
            _kohya_entry(out, f"lora_te1_{module.replace('.', '_')}", down, up, spec.alpha)
    meta = {"ss_network_dim": str(spec.rank), "ss_network_alpha": str(spec.alpha)}
    save_file(out, repo / spec.weight_name, metadata=meta)


def _write_xlabs(pipe: DiffusionPipeline, spec: AdapterSpec, parts: PeftParts, repo: Path):
    from safetensors.torch import save_file

    state = parts["transformer"][0]
    out: dict = {}
    used: set[str] = set()
    for kind, blocks, table in (
        ("double", "transformer_blocks", _XLABS_DOUBLE),
        ("single", "single_transformer_blocks", _XLABS_SINGLE),
    ):
        for i in range(len(getattr(pipe.transformer, blocks))):
            for name, down, up in _fused(state, f"{blocks}.{i}", table, used):
                out[f"{kind}_blocks.{i}.{name}.down.weight"] = down
                out[f"{kind}_blocks.{i}.{name}.up.weight"] = up
    _require_all(state, used, "xlabs")
    save_file(out, repo / spec.weight_name)


Writer = Callable[["DiffusionPipeline", AdapterSpec, PeftParts, Path], None]
WRITERS: dict[str, Writer] = {
    "diffusers": _write_diffusers,
    "peft": _write_peft,
    "kohya": _write_kohya,
    "kohya-flux": _write_kohya_flux,
    "xlabs": _write_xlabs,
}


def write_adapter(pipe: DiffusionPipeline, spec: AdapterSpec, repo_dir: Path) -> None:
    """Build one LoRA for ``pipe`` as ``spec`` says; write it (and its card) as a Hub repo."""
    if spec.format == "xlabs" and spec.alpha != spec.rank:
        raise ValueError(f"{spec.repo_id}: XLabs files carry no alpha; use alpha == rank")
    parts = peft_parts(pipe, spec)
    repo_dir.mkdir(parents=True, exist_ok=True)
    WRITERS[spec.format](pipe, spec, parts, repo_dir)
    shape = f"rank {spec.rank}" + (f" (convs {spec.conv_rank})" if spec.conv_rank else "")
    modules = "; ".join(f"{c}: {', '.join(t)}" for c, t in spec.parts)
    write_card(
        repo_dir,
        spec.repo_id,
        f"Random {spec.kind} ({shape}, alpha {spec.alpha:g}, {spec.format} format) for tests. "
        f"Targets {modules}.",
        base_model=spec.base_model,
        tags=list(spec.tags),
        base_model_relation=spec.base_model_relation,
        library_name="diffusers" if spec.format != "peft" else None,
        pipeline_tag="text-to-image",
        instance_prompt="a photo of sks",
    )
