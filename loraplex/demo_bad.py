"""Edge-case repos for tests of the worker and the router: adapters that must be refused.

:func:`build_test_repos` writes these next to the demo models (``loraplex demo-models DIR
--with-test-repos`` does the same). Ids are fields of :class:`TestRepos`:

=================  ==========================================  ==================================
field              repo id                                      what it is
=================  ==========================================  ==================================
pickle_only        loraplex-test/lora-pickle-only               only ``pytorch_lora_weights.bin``
corrupt            loraplex-test/lora-corrupt                   ``.safetensors`` of garbage bytes
wrong_arch         loraplex-test/lora-wrong-arch                card says tiny-sd, but made for a
                                                                UNet with cross_attention_dim 64
                                                                (shape mismatch on attn2.to_k/v)
multi_file         loraplex-test/lora-multi-file                two LoRA files ``style_a`` and
                                                                ``style_b.safetensors``, no
                                                                ``pytorch_lora_weights.safetensors``
peft_native        loraplex-test/lora-peft-native               PEFT's own ``base_model.model.*``
                                                                keys: diffusers' SD loader matches
                                                                no key and silently loads nothing
gated              loraplex-test/lora-gated                     valid LoRA; Hub: 401 without a
                                                                token, 403 with a wrong one
private            loraplex-test/lora-private                   valid LoRA; private (401 without
                                                                token, 404 with a wrong one)
finetune           loraplex-test/tiny-sd-finetune               full pipeline, base_model tiny-sd,
                                                                no ``lora`` tag, relation finetune
unserved_base      loraplex-test/lora-unserved-base             LoRA of ``other-org/unserved-base``
tag_only           loraplex-test/lora-tag-only                  no card ``base_model``; only the tag
                                                                ``base_model:adapter:<tiny-sd>``
wrong_task         loraplex-test/text-classifier                transformers text-classification
=================  ==========================================  ==================================

Access rules live in ``DIR/.hub-access.json`` (``{"gated": [...], "private": [...]}``), which the
fixture Hub server reads; the file is not a repo and is never served.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from loraplex.demo import (
    ADAPTERS,
    TINY_SD,
    UNET_TARGETS,
    AdapterSpec,
    DemoSet,
    peft_lora_state,
    save_base,
    write_adapter,
    write_card,
)
from loraplex.demo_pipelines import seeded, tiny_sd_pipeline

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

TEST_ORG = "loraplex-test"
HUB_ACCESS_FILE = ".hub-access.json"


@dataclass(frozen=True)
class TestRepos:
    """Ids of the edge-case repos (see the module docstring for what each one is)."""

    __test__ = False  # not a pytest test class despite the name

    pickle_only: str = f"{TEST_ORG}/lora-pickle-only"
    corrupt: str = f"{TEST_ORG}/lora-corrupt"
    wrong_arch: str = f"{TEST_ORG}/lora-wrong-arch"
    multi_file: str = f"{TEST_ORG}/lora-multi-file"
    peft_native: str = f"{TEST_ORG}/lora-peft-native"
    gated: str = f"{TEST_ORG}/lora-gated"
    private: str = f"{TEST_ORG}/lora-private"
    finetune: str = f"{TEST_ORG}/tiny-sd-finetune"
    unserved_base: str = f"{TEST_ORG}/lora-unserved-base"
    tag_only: str = f"{TEST_ORG}/lora-tag-only"
    wrong_task: str = f"{TEST_ORG}/text-classifier"

    @property
    def all_ids(self) -> tuple[str, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))


def _valid_spec(repo_id: str, seed: int, **changes: object) -> AdapterSpec:
    from dataclasses import replace

    return replace(ADAPTERS[0], repo_id=repo_id, seed=seed, **changes)


def _write_pickle_only(pipe: StableDiffusionPipeline, root: Path, repo_id: str) -> None:
    import torch

    repo = root / repo_id
    with seeded(101) as gen:
        state, _ = peft_lora_state(pipe.unet, 4, 4, UNET_TARGETS, gen)
    repo.mkdir(parents=True, exist_ok=True)
    # Written (never loaded) with pickle on purpose: the worker must refuse .bin adapters.
    torch.save({f"unet.{k}": v for k, v in state.items()}, repo / "pytorch_lora_weights.bin")
    write_card(repo, repo_id, "Pickle-only LoRA.", base_model=TINY_SD, tags=["lora"])


def _write_corrupt(root: Path, repo_id: str) -> None:
    repo = root / repo_id
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "pytorch_lora_weights.safetensors").write_bytes(b"\x10\x00\x00\x00not safetensors!")
    write_card(repo, repo_id, "Corrupt weights.", base_model=TINY_SD, tags=["lora"])


def _write_multi_file(pipe: StableDiffusionPipeline, root: Path, repo_id: str) -> None:
    for seed, name in ((102, "style_a.safetensors"), (103, "style_b.safetensors")):
        write_adapter(pipe, _valid_spec(repo_id, seed, weight_name=name), root / repo_id)


def _write_peft_native(pipe: StableDiffusionPipeline, root: Path, repo_id: str) -> None:
    from safetensors.torch import save_file

    repo = root / repo_id
    with seeded(104) as gen:
        state, config = peft_lora_state(pipe.unet, 4, 4, UNET_TARGETS, gen)
    repo.mkdir(parents=True, exist_ok=True)
    save_file(
        {f"base_model.model.{k}": v for k, v in state.items()}, repo / "adapter_model.safetensors"
    )
    config["base_model_name_or_path"] = TINY_SD
    (repo / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    write_card(repo, repo_id, "PEFT-native keys.", base_model=TINY_SD, tags=["lora", "peft"])


def _write_finetune(pipe: StableDiffusionPipeline, root: Path, repo_id: str) -> None:
    import torch

    with seeded(105) as gen, torch.no_grad():
        for param in pipe.unet.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.01)
    save_base(
        pipe,
        root / repo_id,
        repo_id,
        base_model=TINY_SD,
        base_model_relation="finetune",
        tags=["text-to-image", "stable-diffusion"],
    )


def _write_wrong_task(root: Path, repo_id: str) -> None:
    repo = root / repo_id
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "config.json").write_text(json.dumps({"model_type": "bert", "num_labels": 2}))
    write_card(
        repo,
        repo_id,
        "Not an image model.",
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=["text-classification"],
    )


def build_test_repos(
    root: Path, demo: DemoSet | None = None, pipe: StableDiffusionPipeline | None = None
) -> TestRepos:
    """Write every edge-case repo under ``root`` and the Hub access file; return their ids."""
    root = Path(root)
    repos = TestRepos()
    pipe = pipe or tiny_sd_pipeline()
    _write_pickle_only(pipe, root, repos.pickle_only)
    _write_corrupt(root, repos.corrupt)
    # Same layout, wider cross-attention: loads into tiny-sd only with a shape mismatch error.
    write_adapter(
        tiny_sd_pipeline(cross_attention_dim=64),
        _valid_spec(repos.wrong_arch, 106),
        root / repos.wrong_arch,
    )
    _write_multi_file(pipe, root, repos.multi_file)
    _write_peft_native(pipe, root, repos.peft_native)
    write_adapter(pipe, _valid_spec(repos.gated, 107), root / repos.gated)
    write_adapter(pipe, _valid_spec(repos.private, 108), root / repos.private)
    write_adapter(
        pipe,
        _valid_spec(repos.unserved_base, 109, base_model="other-org/unserved-base"),
        root / repos.unserved_base,
    )
    write_adapter(
        pipe,
        _valid_spec(
            repos.tag_only,
            110,
            base_model=None,
            base_model_relation=None,
            tags=("lora", "text-to-image", f"base_model:adapter:{TINY_SD}"),
        ),
        root / repos.tag_only,
    )
    _write_wrong_task(root, repos.wrong_task)
    _write_finetune(tiny_sd_pipeline(), root, repos.finetune)  # mutates its own pipeline
    access = {"gated": [repos.gated], "private": [repos.private]}
    (root / HUB_ACCESS_FILE).write_text(json.dumps(access, indent=2) + "\n")
    return repos
