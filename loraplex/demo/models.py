"""Tiny demo models: SD, SDXL, Flux and SD3 bases and real LoRAs, built on CPU in seconds.

``loraplex demo-models DIR`` (and the ``demo_models`` pytest fixture, which calls the same
:func:`build_demo_models`) writes Hub-layout repos ``DIR/<org>/<name>/`` that the fixture Hub
server (``tests/fixtures/hub.py``) or ``loraplex up --models DIR`` serve. Nothing is downloaded:
the CLIP and T5 tokenizers are built from in-memory vocabularies and every weight is random
with a fixed seed, so two builds write the same tensors and cards (safetensors may order its
header metadata differently, so file bytes and hence Hub commit shas can differ between builds).

Bases (:class:`BaseSpec`; pipelines in :mod:`loraplex.demo.pipelines`):

================================  ==============================================================
``loraplex-demo/tiny-sd``         StableDiffusionPipeline, UNet (32, 64), 64x64 in ~0.1 s on CPU
``loraplex-demo/tiny-sdxl``       StableDiffusionXLPipeline of the same size (two text encoders)
``loraplex-demo/tiny-flux``       FluxPipeline: 1 double + 1 single block, CLIP + T5, 16-ch VAE
``loraplex-demo/tiny-sd3``        StableDiffusion3Pipeline: 2 joint blocks, 2 CLIP + T5
================================  ==============================================================

LoRAs (:class:`~loraplex.demo.adapters.AdapterSpec`; formats in :mod:`loraplex.demo.adapters`;
"attn" = to_q, to_k, to_v, to_out.0; "te" = q/k/v/out_proj; "+mlp" = fc1, fc2):

==========================  =========  ==========  ===========  ================================
repo (``loraplex-demo/``)   base       format      rank/alpha   modules
==========================  =========  ==========  ===========  ================================
``lora-r4``                 tiny-sd    diffusers   4 / 4        UNet attn
``lora-r8-alpha16``         tiny-sd    diffusers   8 / 16       UNet attn (alpha in metadata)
``lora-text-encoder``       tiny-sd    diffusers   4 / 4        UNet attn + te
``lora-kohya``              tiny-sd    kohya       4 / 2        UNet attn
``lora-peft``               tiny-sd    peft        4 / 4        UNet attn (adapter_config.json)
``lora-list-base``          tiny-sd    diffusers   8 / 8        UNet attn, card base_model a list
``lora-attn-ff``            tiny-sd    diffusers   4 / 4        attn + ff.net.0.proj, ff.net.2,
                                                                proj_in, proj_out (Conv2d 1x1)
``lora-kohya-network``      tiny-sd    kohya       8 / 4        same set: kohya-ss' default net
``lora-kohya-te``           tiny-sd    kohya       4 / 2        UNet attn + ``lora_te_`` te+mlp
``lora-locon``              tiny-sd    kohya       8 / 8,       attn + resnets conv1/conv2
                                                   convs 4      (LyCORIS LoCon: 3x3 down, 1x1 up)
``lora-sdxl``               tiny-sdxl  diffusers   4 / 8        UNet attn
``lora-sdxl-kohya``         tiny-sdxl  kohya       4 / 2        attn+ff+proj (sgm names),
                                                                te1 te+mlp, te2 te (kohya prefixes)
``lora-flux``               tiny-flux  diffusers   4 / 4        attn + add_q/k/v_proj, to_add_out,
                                                                ff, ff_context, proj_mlp, proj_out
``lora-flux-kohya``         tiny-flux  kohya-flux  8 / 16       BFL names: img/txt qkv + proj +
                                                                mlp, single linear2; CLIP te+mlp
``lora-flux-xlabs``         tiny-flux  xlabs       8 / 8        double img+txt qkv, proj; single qkv
``lora-sd3``                tiny-sd3   diffusers   4 / 4        attn + add_*, to_add_out, ff,
                                                                ff_context; te and te_2 attn
``lora-sd3-peft``           tiny-sd3   peft        8 / 8        transformer attn
==========================  =========  ==========  ===========  ================================

``DemoSet.adapters`` (and ``ADAPTERS``) are the first six (tiny-sd, UNet attention only, what the
existing fast-path tests iterate); ``DemoSet.sdxl_adapters`` is ``lora-sdxl``; the others are in
``DemoSet.extra_adapters`` (``EXTRA_ADAPTERS``). ``DemoSet.all_adapters`` is all of them and
``DemoSet.adapters_for(base_id)`` those of one base. Every adapter has a non-zero random
``lora_B``, so the base pipeline's own ``load_lora_weights(<repo dir>)`` visibly changes a 64x64
image (each repo holds exactly one ``.safetensors`` file: no ``weight_name`` needed). Cards
differ on purpose so resolution rules are exercised: some say ``base_model_relation: adapter``,
one has ``lora`` only in its card tags (no ``library_name``), one gives ``base_model`` as a list
(tiny-sd and an unserved base).

Serving them: ``loraplex demo-models DIR`` then ``loraplex up --models DIR`` starts a pool per
base (SD, SDXL, Flux, SD3; ``--base-model ID`` picks some) and routes each LoRA to its base by
its card. ``--no-sdxl`` / ``--no-dit`` skip bases (and their LoRAs).

Test-only repos that break the rules (pickle-only, corrupt, wrong architecture, gated, LoHa,
LoKr, DoRA, …) are test material, built by ``tests/fixtures/test_repos.py`` (not in the wheel).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraplex.demo.adapters import (
    DIT_ATTENTION_TARGETS,
    DIT_FF_TARGETS,
    FLUX_KOHYA_TARGETS,
    FLUX_TARGETS,
    FLUX_XLABS_TARGETS,
    KOHYA_NETWORK_TARGETS,
    LOCON_TARGETS,
    LORA_B_SCALE,
    TEXT_ENCODER_MLP_TARGETS,
    TEXT_ENCODER_TARGETS,
    UNET_TARGETS,
    WEIGHT_NAMES,
    AdapterFormat,
    AdapterSpec,
    Parts,
    peft_lora_state,
    write_adapter,
    write_card,
)
from loraplex.demo.pipelines import (
    tiny_flux_pipeline,
    tiny_sd3_pipeline,
    tiny_sd_pipeline,
    tiny_sdxl_pipeline,
)

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

__all__ = [  # re-exported for callers that import them from here
    "LORA_B_SCALE",
    "TEXT_ENCODER_TARGETS",
    "UNET_TARGETS",
    "AdapterSpec",
    "peft_lora_state",
    "write_adapter",
    "write_card",
]

ORG = "loraplex-demo"
TINY_SD = f"{ORG}/tiny-sd"
TINY_SDXL = f"{ORG}/tiny-sdxl"
TINY_FLUX = f"{ORG}/tiny-flux"
TINY_SD3 = f"{ORG}/tiny-sd3"
LORA_SDXL = f"{ORG}/lora-sdxl"
LORA_R4 = f"{ORG}/lora-r4"
LORA_R8_ALPHA16 = f"{ORG}/lora-r8-alpha16"
LORA_TEXT_ENCODER = f"{ORG}/lora-text-encoder"
LORA_KOHYA = f"{ORG}/lora-kohya"
LORA_PEFT = f"{ORG}/lora-peft"
LORA_LIST_BASE = f"{ORG}/lora-list-base"
LORA_ATTN_FF = f"{ORG}/lora-attn-ff"
LORA_KOHYA_NETWORK = f"{ORG}/lora-kohya-network"
LORA_KOHYA_TE = f"{ORG}/lora-kohya-te"
LORA_LOCON = f"{ORG}/lora-locon"
LORA_SDXL_KOHYA = f"{ORG}/lora-sdxl-kohya"
LORA_FLUX = f"{ORG}/lora-flux"
LORA_FLUX_KOHYA = f"{ORG}/lora-flux-kohya"
LORA_FLUX_XLABS = f"{ORG}/lora-flux-xlabs"
LORA_SD3 = f"{ORG}/lora-sd3"
LORA_SD3_PEFT = f"{ORG}/lora-sd3-peft"


@dataclass(frozen=True)
class BaseSpec:
    """One demo base: its repo, pipeline class and the components adapters may touch."""

    repo_id: str
    pipeline_class: str
    denoiser: str  # "unet" or "transformer"
    text_encoders: tuple[str, ...]  # pipeline attributes, in order
    make: Callable[[], DiffusionPipeline] = field(repr=False, compare=False)


SD_BASE = BaseSpec(TINY_SD, "StableDiffusionPipeline", "unet", ("text_encoder",), tiny_sd_pipeline)
SDXL_BASE = BaseSpec(
    TINY_SDXL,
    "StableDiffusionXLPipeline",
    "unet",
    ("text_encoder", "text_encoder_2"),
    tiny_sdxl_pipeline,
)
FLUX_BASE = BaseSpec(
    TINY_FLUX, "FluxPipeline", "transformer", ("text_encoder", "text_encoder_2"), tiny_flux_pipeline
)
SD3_BASE = BaseSpec(
    TINY_SD3,
    "StableDiffusion3Pipeline",
    "transformer",
    ("text_encoder", "text_encoder_2", "text_encoder_3"),
    tiny_sd3_pipeline,
)
BASES: tuple[BaseSpec, ...] = (SD_BASE, SDXL_BASE, FLUX_BASE, SD3_BASE)


def _adapter(repo_id: str, rank: int, alpha: float, fmt: AdapterFormat, seed: int, **kw: Any):
    parts: Parts = kw.get("parts", (("unet", UNET_TARGETS),))
    if kw.get("has_text_encoder"):
        parts = (*parts, ("text_encoder", TEXT_ENCODER_TARGETS))
    return AdapterSpec(
        repo_id=repo_id,
        rank=rank,
        alpha=alpha,
        format=fmt,
        weight_name=WEIGHT_NAMES.get(fmt, "lora.safetensors"),
        base_model=kw.get("base_model", TINY_SD),
        tags=kw.get("tags", ("lora", "text-to-image")),
        base_model_relation=kw.get("relation", "adapter"),
        seed=seed,
        parts=parts,
        conv_rank=kw.get("conv_rank"),
        kind=kw.get("kind", "lora"),
        b_scale=kw.get("b_scale", LORA_B_SCALE),
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
_KOHYA = ("lora", "text-to-image", "kohya")
SD_NETWORK: Parts = (("unet", KOHYA_NETWORK_TARGETS),)
SD_TE_MLP: Parts = (("unet", UNET_TARGETS), ("text_encoder", TEXT_ENCODER_MLP_TARGETS))
SDXL_FULL: Parts = (*SD_NETWORK, *SD_TE_MLP[1:], ("text_encoder_2", TEXT_ENCODER_TARGETS))
FLUX_KOHYA: Parts = (("transformer", FLUX_KOHYA_TARGETS), SD_TE_MLP[1])
SD3_FULL: Parts = (
    ("transformer", (*DIT_ATTENTION_TARGETS, *DIT_FF_TARGETS)),
    ("text_encoder", TEXT_ENCODER_TARGETS),
    ("text_encoder_2", TEXT_ENCODER_TARGETS),
)
LOCON: Parts = (("unet", LOCON_TARGETS),)
XLABS: Parts = (("transformer", FLUX_XLABS_TARGETS),)
_LOCON, _XLABS = ("lora", "lycoris", "locon"), ("lora", "flux", "xlabs")
_sdxl = partial(_adapter, base_model=TINY_SDXL)
_flux = partial(_adapter, base_model=TINY_FLUX)
_sd3 = partial(_adapter, base_model=TINY_SD3)
# Every LoRA beyond ADAPTERS and SDXL_ADAPTERS: trainer-shaped module sets and the DiT bases'.
EXTRA_ADAPTERS: tuple[AdapterSpec, ...] = (
    _adapter(LORA_ATTN_FF, 4, 4, "diffusers", 11, parts=SD_NETWORK),
    _adapter(LORA_KOHYA_NETWORK, 8, 4, "kohya", 12, parts=SD_NETWORK, tags=_KOHYA),
    _adapter(LORA_KOHYA_TE, 4, 2, "kohya", 13, parts=SD_TE_MLP, tags=_KOHYA),
    _adapter(LORA_LOCON, 8, 8, "kohya", 14, parts=LOCON, conv_rank=4, kind="locon", tags=_LOCON),
    _sdxl(LORA_SDXL_KOHYA, 4, 2, "kohya", 15, parts=SDXL_FULL, tags=(*_KOHYA, "sdxl")),
    _flux(LORA_FLUX, 4, 4, "diffusers", 21, parts=(("transformer", FLUX_TARGETS),)),
    _flux(LORA_FLUX_KOHYA, 8, 16, "kohya-flux", 22, parts=FLUX_KOHYA, tags=(*_KOHYA, "flux")),
    # Attention only at scale 1 (and Flux RMS-normalises q, k): a larger B to move the image.
    _flux(LORA_FLUX_XLABS, 8, 8, "xlabs", 23, parts=XLABS, tags=_XLABS, b_scale=2.0, relation=None),
    _sd3(LORA_SD3, 4, 4, "diffusers", 31, parts=SD3_FULL, tags=("lora", "sd3")),
    _sd3(LORA_SD3_PEFT, 8, 8, "peft", 32, parts=(("transformer", UNET_TARGETS),)),
)


def _bases_of(spec: AdapterSpec) -> tuple[str, ...]:
    if isinstance(spec.base_model, list):
        return tuple(spec.base_model)
    return () if spec.base_model is None else (spec.base_model,)


@dataclass(frozen=True)
class DemoSet:
    """What :func:`build_demo_models` wrote under ``root``."""

    root: Path
    bases: tuple[str, ...]  # every base written (tiny-sd first)
    adapters: tuple[AdapterSpec, ...]  # the six attention-only LoRAs of tiny-sd (ADAPTERS)
    sdxl_adapters: tuple[AdapterSpec, ...] = ()  # lora-sdxl (SDXL_ADAPTERS)
    extra_adapters: tuple[AdapterSpec, ...] = ()  # every other LoRA written (EXTRA_ADAPTERS)
    build_seconds: float = field(default=0.0, compare=False)

    def path(self, repo_id: str) -> Path:
        """Folder of a repo id (``root/<org>/<name>``)."""
        return self.root / repo_id

    def adapter(self, repo_id: str) -> AdapterSpec:
        for spec in self.all_adapters:
            if spec.repo_id == repo_id:
                return spec
        raise KeyError(f"{repo_id} is not a demo adapter; known: {self.adapter_ids}")

    def base(self, base_id: str) -> BaseSpec:
        """Traits of a base that was written (pipeline class, denoiser, text encoders)."""
        if base_id not in self.bases:
            raise KeyError(f"{base_id} is not a demo base here; written: {self.bases}")
        return next(b for b in BASES if b.repo_id == base_id)

    def adapters_for(self, base_id: str) -> tuple[AdapterSpec, ...]:
        """Every LoRA written whose card names ``base_id`` (the router would route it there)."""
        return tuple(a for a in self.all_adapters if base_id in _bases_of(a))

    @property
    def all_adapters(self) -> tuple[AdapterSpec, ...]:
        return self.adapters + self.sdxl_adapters + self.extra_adapters

    @property
    def adapter_ids(self) -> tuple[str, ...]:
        """Ids of every demo adapter written, of every base."""
        return tuple(a.repo_id for a in self.all_adapters)


def save_base(pipe: DiffusionPipeline, repo_dir: Path, repo_id: str, **card: Any) -> None:
    pipe.save_pretrained(repo_dir, safe_serialization=True)
    name = type(pipe).__name__
    family = {
        "StableDiffusionXLPipeline": "stable-diffusion-xl",
        "FluxPipeline": "flux",
        "StableDiffusion3Pipeline": "stable-diffusion-3",
    }.get(name, "stable-diffusion")
    card.setdefault("tags", ["text-to-image", family, "loraplex-demo"])
    write_card(
        repo_dir,
        repo_id,
        f"Tiny random-weight {name} for tests (64x64 on CPU).",
        library_name="diffusers",
        pipeline_tag="text-to-image",
        license="apache-2.0",
        **card,
    )


def build_demo_models(root: Path, sdxl: bool = True, dit: bool = True) -> DemoSet:
    """Write the tiny bases and the demo LoRAs under ``root``; return what was written.

    ``sdxl=False`` skips tiny-sdxl, ``dit=False`` tiny-flux and tiny-sd3 (and their LoRAs).
    """
    started = time.perf_counter()
    root = Path(root)
    built = [b for b in BASES if (sdxl or b is not SDXL_BASE) and (dit or b.denoiser == "unet")]
    ids = {b.repo_id for b in built}
    written: list[AdapterSpec] = []
    everything = ADAPTERS + SDXL_ADAPTERS + EXTRA_ADAPTERS
    for base in built:
        pipe = base.make()
        save_base(pipe, root / base.repo_id, base.repo_id)
        for spec in everything:
            if _bases_of(spec)[0] == base.repo_id:
                write_adapter(pipe, spec, root / spec.repo_id)
                written.append(spec)
    return DemoSet(
        root=root,
        bases=tuple(b.repo_id for b in built),
        adapters=ADAPTERS,
        sdxl_adapters=SDXL_ADAPTERS if TINY_SDXL in ids else (),
        extra_adapters=tuple(a for a in EXTRA_ADAPTERS if a in written),
        build_seconds=time.perf_counter() - started,
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="loraplex demo-models",
        description="Build tiny SD, SDXL, Flux and SD3 bases and demo LoRAs as Hub-layout repos "
        "in DIR (random weights, no downloads, a few seconds on CPU).",
    )
    parser.add_argument("dir", metavar="DIR", type=Path, help="output folder (created)")
    parser.add_argument("--no-sdxl", action="store_true", help="skip the tiny SDXL base")
    parser.add_argument(
        "--no-dit", action="store_true", help="skip the tiny Flux and SD3 bases (DiT)"
    )
    args = parser.parse_args(argv)
    demo = build_demo_models(args.dir, sdxl=not args.no_sdxl, dit=not args.no_dit)
    ids = [*demo.bases, *demo.adapter_ids]
    for repo_id in ids:
        print(f"{repo_id}\t{demo.path(repo_id)}")
    print(f"wrote {len(ids)} repos to {args.dir} in {demo.build_seconds:.1f}s")
    return 0
