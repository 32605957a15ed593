"""Tiny demo models: SD and SDXL bases and real peft LoRAs, built on CPU in about a second.

``loraplex demo-models DIR`` (and the ``demo_models`` pytest fixture, which calls the same
:func:`build_demo_models`) writes Hub-layout repos ``DIR/<org>/<name>/`` that the fixture Hub
server (``tests/fixtures/hub.py``) or ``loraplex up --models DIR`` serve. Nothing is downloaded:
the CLIP tokenizer is built from an in-memory byte-level vocabulary and every weight is random
with a fixed seed, so two builds write the same tensors and cards (safetensors may order its
header metadata differently, so file bytes and hence Hub commit shas can differ between builds).

Repos (ids are constants below; :class:`DemoSet` lists them with their traits):

==========================================  =================================================
``loraplex-demo/tiny-sd``                    base: StableDiffusionPipeline, UNet (32, 64),
                                             64x64 in ~0.1 s on CPU with 2-4 steps
``loraplex-demo/lora-r4``                    rank 4, alpha 4, diffusers format (save_lora_weights)
``loraplex-demo/lora-r8-alpha16``            rank 8, alpha 16 (alpha in the safetensors metadata)
``loraplex-demo/lora-text-encoder``          rank 4, UNet + text-encoder parts
``loraplex-demo/lora-kohya``                 rank 4, alpha 2, kohya keys (lora_unet_*.lora_down)
``loraplex-demo/lora-peft``                  rank 4, ``adapter_model.safetensors`` +
                                             ``adapter_config.json`` (no metadata in the file)
``loraplex-demo/lora-list-base``             rank 8, card ``base_model`` is a list
``loraplex-demo/tiny-sdxl``                  base: StableDiffusionXLPipeline of the same size
                                             (two text encoders); skip with ``sdxl=False``
``loraplex-demo/lora-sdxl``                  rank 4, alpha 8, LoRA of tiny-sdxl (fails to load
                                             into tiny-sd: wrong cross-attention width)
==========================================  =================================================

``DemoSet.adapters`` (and ``ADAPTERS``) are the tiny-sd LoRAs only; ``DemoSet.sdxl_adapters``
holds the SDXL one and ``DemoSet.all_adapters`` both. Every adapter targets the UNet attention
projections (to_q, to_k, to_v, to_out.0) and has a non-zero random ``lora_B``, so
``pipe.load_lora_weights(<repo dir or id>)`` visibly changes the image. Load any of them with
diffusers' ``load_lora_weights`` without a ``weight_name``: each repo holds exactly one
``.safetensors`` file. Cards differ on purpose so resolution rules are
exercised: some say ``base_model_relation: adapter``, one has ``lora`` only in its card tags
(no ``library_name``), one gives ``base_model`` as a list (tiny-sd and an unserved base).

Test-only repos that break the rules (pickle-only, corrupt, wrong architecture, gated, …)
are test material, built by ``tests/fixtures/test_repos.py`` (not shipped in the wheel).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from loraplex.demo.pipelines import seeded, tiny_sd_pipeline, tiny_sdxl_pipeline

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

ORG = "loraplex-demo"
TINY_SD = f"{ORG}/tiny-sd"
TINY_SDXL = f"{ORG}/tiny-sdxl"
LORA_SDXL = f"{ORG}/lora-sdxl"
LORA_R4 = f"{ORG}/lora-r4"
LORA_R8_ALPHA16 = f"{ORG}/lora-r8-alpha16"
LORA_TEXT_ENCODER = f"{ORG}/lora-text-encoder"
LORA_KOHYA = f"{ORG}/lora-kohya"
LORA_PEFT = f"{ORG}/lora-peft"
LORA_LIST_BASE = f"{ORG}/lora-list-base"

UNET_TARGETS = ("to_k", "to_out.0", "to_q", "to_v")
TEXT_ENCODER_TARGETS = ("k_proj", "out_proj", "q_proj", "v_proj")
# Scale of the random lora_B: large enough that every adapter moves a 64x64 image visibly
# (mean |diff| > 0.01 on [0, 1] pixels), small enough that the image is not noise.
LORA_B_SCALE = 0.6

AdapterFormat = Literal["diffusers", "kohya", "peft"]


@dataclass(frozen=True)
class AdapterSpec:
    """One demo LoRA repo and the traits tests iterate over."""

    repo_id: str
    rank: int
    alpha: float
    format: AdapterFormat
    weight_name: str  # the single .safetensors file in the repo
    has_text_encoder: bool
    base_model: str | list[str] | None
    tags: tuple[str, ...]
    base_model_relation: str | None
    seed: int

    @property
    def scaling(self) -> float:
        """``alpha / rank``: the factor peft applies to ``B @ A`` (what must round-trip)."""
        return self.alpha / self.rank


@dataclass(frozen=True)
class DemoSet:
    """What :func:`build_demo_models` wrote under ``root``."""

    root: Path
    bases: tuple[str, ...]  # every base written (tiny-sd first)
    adapters: tuple[AdapterSpec, ...]  # LoRAs of tiny-sd only (the set tests iterate over)
    sdxl_adapters: tuple[AdapterSpec, ...] = ()  # LoRAs of tiny-sdxl
    build_seconds: float = field(default=0.0, compare=False)

    def path(self, repo_id: str) -> Path:
        """Folder of a repo id (``root/<org>/<name>``)."""
        return self.root / repo_id

    def adapter(self, repo_id: str) -> AdapterSpec:
        for spec in self.all_adapters:
            if spec.repo_id == repo_id:
                return spec
        raise KeyError(f"{repo_id} is not a demo adapter; known: {self.adapter_ids}")

    @property
    def all_adapters(self) -> tuple[AdapterSpec, ...]:
        return self.adapters + self.sdxl_adapters

    @property
    def adapter_ids(self) -> tuple[str, ...]:
        """Ids of every demo adapter, tiny-sd's and tiny-sdxl's."""
        return tuple(a.repo_id for a in self.all_adapters)


def _adapter(repo_id: str, rank: int, alpha: float, fmt: AdapterFormat, seed: int, **kw: Any):
    weight = {"diffusers": "pytorch_lora_weights.safetensors", "kohya": "lora.safetensors"}
    return AdapterSpec(
        repo_id=repo_id,
        rank=rank,
        alpha=alpha,
        format=fmt,
        weight_name=weight.get(fmt, "adapter_model.safetensors"),
        has_text_encoder=kw.get("has_text_encoder", False),
        base_model=kw.get("base_model", TINY_SD),
        tags=kw.get("tags", ("lora", "text-to-image")),
        base_model_relation=kw.get("relation", "adapter"),
        seed=seed,
    )


ADAPTERS: tuple[AdapterSpec, ...] = (
    _adapter(LORA_R4, 4, 4, "diffusers", 1),
    _adapter(LORA_R8_ALPHA16, 8, 16, "diffusers", 2, relation=None),
    _adapter(LORA_TEXT_ENCODER, 4, 4, "diffusers", 3, has_text_encoder=True),
    _adapter(LORA_KOHYA, 4, 2, "kohya", 4, tags=("lora", "text-to-image", "kohya")),
    _adapter(LORA_PEFT, 4, 4, "peft", 5, tags=("lora", "peft"), relation=None),
    _adapter(LORA_LIST_BASE, 8, 8, "diffusers", 6, base_model=[TINY_SD, "other-org/unserved"]),
)
SDXL_ADAPTERS: tuple[AdapterSpec, ...] = (
    _adapter(LORA_SDXL, 4, 8, "diffusers", 7, base_model=TINY_SDXL, tags=("lora", "sdxl")),
)


def write_card(repo_dir: Path, title: str, body: str = "", **card: Any) -> None:
    """README.md with YAML front matter, written with huggingface_hub's own card types."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(**{k: v for k, v in card.items() if v is not None})
    text = f"---\n{data.to_yaml()}\n---\n\n# {title}\n\n{body}\n"
    repo_dir.mkdir(parents=True, exist_ok=True)
    ModelCard(text).save(repo_dir / "README.md")


def save_base(pipe: DiffusionPipeline, repo_dir: Path, repo_id: str, **card: Any) -> None:
    pipe.save_pretrained(repo_dir, safe_serialization=True)
    family = "stable-diffusion-xl" if "XL" in type(pipe).__name__ else "stable-diffusion"
    card.setdefault("tags", ["text-to-image", family, "loraplex-demo"])
    write_card(
        repo_dir,
        repo_id,
        f"Tiny random-weight {type(pipe).__name__} for tests (64x64 on CPU).",
        library_name="diffusers",
        pipeline_tag="text-to-image",
        license="apache-2.0",
        **card,
    )


# ---------------------------------------------------------------- LoRA adapters


def _randomize_lora_b(module: torch.nn.Module, generator: torch.Generator) -> None:
    """peft initialises lora_B to zero (a no-op adapter); give it random values."""
    import torch

    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * LORA_B_SCALE)


def peft_lora_state(
    model: torch.nn.Module, rank: int, alpha: float, targets: tuple[str, ...], generator
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Attach a peft LoRA to a copy of ``model``; return its state dict and JSON-able config."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    work = copy.deepcopy(model)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets))
    work.add_adapter(config)
    _randomize_lora_b(work, generator)
    state = {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(work).items()}
    meta = config.to_dict()
    # Sets serialise in hash order; sort so two builds write identical bytes.
    meta["target_modules"] = sorted(meta["target_modules"])
    return state, meta


def write_adapter(pipe: DiffusionPipeline, spec: AdapterSpec, repo_dir: Path) -> None:
    """Build one LoRA for ``pipe`` (SD or SDXL) as ``spec`` says; write it as a Hub repo folder."""
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
    from safetensors.torch import save_file

    with seeded(spec.seed) as gen:
        unet_sd, unet_meta = peft_lora_state(pipe.unet, spec.rank, spec.alpha, UNET_TARGETS, gen)
        te_sd, te_meta = {}, None
        if spec.has_text_encoder:
            te_sd, te_meta = peft_lora_state(
                pipe.text_encoder, spec.rank, spec.alpha, TEXT_ENCODER_TARGETS, gen
            )
    repo_dir.mkdir(parents=True, exist_ok=True)
    if spec.format == "diffusers":
        type(pipe).save_lora_weights(
            repo_dir,
            unet_lora_layers=convert_state_dict_to_diffusers(unet_sd),
            text_encoder_lora_layers=convert_state_dict_to_diffusers(te_sd) if te_sd else None,
            unet_lora_adapter_metadata=unet_meta,
            text_encoder_lora_adapter_metadata=te_meta,
            weight_name=spec.weight_name,
        )
    elif spec.format == "kohya":
        import torch

        kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in unet_sd.items()})
        # diffusers reads kohya's per-module alpha tensors as network_alphas.
        kohya = {
            k: torch.tensor(float(spec.alpha)) if k.endswith(".alpha") else v
            for k, v in kohya.items()
        }
        save_file(kohya, repo_dir / spec.weight_name, metadata={"ss_network_dim": str(spec.rank)})
    else:  # peft: diffusers-loadable "unet."-prefixed lora_A/lora_B keys + adapter_config.json
        save_file({f"unet.{k}": v for k, v in unet_sd.items()}, repo_dir / spec.weight_name)
        unet_meta["base_model_name_or_path"] = spec.base_model
        (repo_dir / "adapter_config.json").write_text(
            json.dumps(unet_meta, indent=2, sort_keys=True)
        )
    write_card(
        repo_dir,
        spec.repo_id,
        f"Random LoRA (rank {spec.rank}, alpha {spec.alpha:g}, {spec.format} format) for tests.",
        base_model=spec.base_model,
        tags=list(spec.tags),
        base_model_relation=spec.base_model_relation,
        library_name="diffusers" if spec.format != "peft" else None,
        pipeline_tag="text-to-image",
        instance_prompt="a photo of sks",
    )


def build_demo_models(root: Path, sdxl: bool = True) -> DemoSet:
    """Write the tiny bases and the demo LoRAs under ``root``; return what was written."""
    started = time.perf_counter()
    root = Path(root)
    builds = [(TINY_SD, tiny_sd_pipeline, ADAPTERS)]
    if sdxl:
        builds.append((TINY_SDXL, tiny_sdxl_pipeline, SDXL_ADAPTERS))
    for base_id, make_pipeline, adapters in builds:
        pipe = make_pipeline()
        save_base(pipe, root / base_id, base_id)
        for spec in adapters:
            write_adapter(pipe, spec, root / spec.repo_id)
    return DemoSet(
        root=root,
        bases=tuple(base_id for base_id, _, _ in builds),
        adapters=ADAPTERS,
        sdxl_adapters=SDXL_ADAPTERS if sdxl else (),
        build_seconds=time.perf_counter() - started,
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="loraplex demo-models",
        description="Build a tiny Stable Diffusion base and demo LoRAs as Hub-layout repos in DIR "
        "(random weights, no downloads, a few seconds on CPU).",
    )
    parser.add_argument("dir", metavar="DIR", type=Path, help="output folder (created)")
    parser.add_argument("--no-sdxl", action="store_true", help="skip the tiny SDXL base")
    args = parser.parse_args(argv)
    demo = build_demo_models(args.dir, sdxl=not args.no_sdxl)
    ids = [*demo.bases, *demo.adapter_ids]
    for repo_id in ids:
        print(f"{repo_id}\t{demo.path(repo_id)}")
    print(f"wrote {len(ids)} repos to {args.dir} in {demo.build_seconds:.1f}s")
    return 0
