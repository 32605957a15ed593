"""The worker downloads only what ``from_pretrained`` reads of a base repo, through the real
``huggingface_hub`` client from a Hub-compatible server (``loraplex.localhub``) on loopback.

The repo is tiny-sd with the extras real base repos carry (stabilityai's SDXL: fp32 folders, an
fp16 variant, single-file checkpoints at the root, pickles): those must stay on the server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline
from fixtures.hub import HubServer, point_client_at
from loraplex.worker.fetch import HubFetcher
from safetensors.torch import load_file, save_file

from loraplex.demo.models import TINY_SD

REPO = "org/big-base"


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def hub(demo_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    repo = tmp_path / "hub" / REPO
    shutil.copytree(demo_models.path(TINY_SD), repo)
    for part in ("unet", "vae"):
        plain = load_file(repo / part / "diffusion_pytorch_model.safetensors")
        half = {k: v.half() for k, v in plain.items()}
        save_file(half, repo / part / "diffusion_pytorch_model.fp16.safetensors")
    save_file({"w": torch.zeros(1024)}, repo / "big-base.safetensors")  # a root checkpoint
    (repo / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"a pickle: never fetched")
    server = HubServer(tmp_path / "hub").start()
    point_client_at(monkeypatch, server.url, tmp_path / "client")
    yield server
    server.stop()


def fetcher(cache: Path) -> HubFetcher:
    return HubFetcher(cache_dir=cache, max_adapter_bytes=2**30, branch_ttl_s=60)


def test_float32_fetches_the_plain_component_weights_only(hub, tmp_path: Path) -> None:
    folder, _, variant = fetcher(tmp_path / "c32").snapshot(REPO, "main", None)
    files = _files(folder)
    assert variant is None
    assert {"unet/diffusion_pytorch_model.safetensors", "model_index.json"} <= files
    assert not {f for f in files if ".fp16." in f or f.endswith(".bin")}, files
    assert "big-base.safetensors" not in files and "README.md" not in files
    DiffusionPipeline.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)


def test_float16_fetches_the_fp16_variant_and_loads_it(hub, tmp_path: Path) -> None:
    folder, _, variant = fetcher(tmp_path / "c16").snapshot(
        REPO, "main", None, prefer_variant="fp16"
    )
    files = _files(folder)
    assert variant == "fp16"
    assert {
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "text_encoder/model.safetensors",  # no fp16 there: the plain one
    } <= files
    assert "unet/diffusion_pytorch_model.safetensors" not in files
    pipe = DiffusionPipeline.from_pretrained(
        folder, dtype=torch.float32, use_safetensors=True, variant=variant
    )
    assert pipe.unet is not None and pipe.vae is not None
