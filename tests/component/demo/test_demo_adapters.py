"""Every demo adapter loads with its base pipeline's own ``load_lora_weights`` (diffusers'
conversion code, no mocks) into exactly the modules its spec names, at its ranks, and visibly
changes a 64x64 image; unloading restores the base bit for bit. One pipeline per base, loaded
from the written repo the way the worker loads bases (``DiffusionPipeline.from_pretrained``).
Also: the test-only edge-case repos do in diffusers what their docs say, and ``loraplex up``'s
folder scan finds every base and routes every adapter. About 20 s on one torch thread."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.worker import one_torch_thread  # noqa: F401 - pytest fixture

from loraplex.demo.adapters import AdapterSpec, lora_modules, peft_lora_state
from loraplex.demo.models import (
    ADAPTERS,
    BASES,
    EXTRA_ADAPTERS,
    LORA_LOCON,
    SDXL_ADAPTERS,
    TINY_FLUX,
    TINY_SD,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
VISIBLE_CHANGE = 0.01  # mean |pixel diff| on [0, 1] that counts as "the adapter changed the image"
EVERY_ADAPTER = ADAPTERS + SDXL_ADAPTERS + EXTRA_ADAPTERS


def generate(pipe) -> np.ndarray:
    import torch

    return pipe(
        "a photo of sks",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(3),
        output_type="np",
    ).images[0]


class Base:
    """A base pipeline from disk, its reference image, and each component's module names."""

    def __init__(self, path) -> None:
        import torch
        from diffusers import DiffusionPipeline

        self.pipe = DiffusionPipeline.from_pretrained(
            path, dtype=torch.float32, use_safetensors=True
        )
        self.pipe.set_progress_bar_config(disable=True)
        self.reference = generate(self.pipe)

    def expected(self, spec: AdapterSpec) -> dict[str, dict[str, int]]:
        """{component: {module: rank}} the spec says the adapter adapts (computed by the same
        matching rule the builder used, on the pristine component)."""
        import torch

        out = {}
        for component, targets in spec.parts:
            state, _ = peft_lora_state(
                getattr(self.pipe, component),
                spec.rank,
                spec.alpha,
                targets,
                torch.Generator().manual_seed(0),
                conv_rank=spec.conv_rank,
            )
            out[component] = {m: state[f"{m}.lora_A.weight"].shape[0] for m in lora_modules(state)}
        return out

    def loaded(self) -> dict[str, dict[str, int]]:
        """{component: {module: rank}} of the LoRA layers peft injected (adapter "a")."""
        found = {}
        for component in ("unet", "transformer", "text_encoder", "text_encoder_2"):
            model = getattr(self.pipe, component, None)
            if model is None:
                continue
            ranks = {
                name: module.r["a"]
                for name, module in model.named_modules()
                if isinstance(getattr(module, "r", None), dict) and "a" in module.r
            }
            if ranks:
                found[component] = ranks
        return found


@pytest.fixture(scope="module")
def bases(demo_models) -> dict[str, Base]:
    return {b.repo_id: Base(demo_models.path(b.repo_id)) for b in BASES}


def _base_of(spec: AdapterSpec) -> str:
    return spec.base_model[0] if isinstance(spec.base_model, list) else spec.base_model


@pytest.mark.slow
@pytest.mark.parametrize("spec", EVERY_ADAPTER, ids=lambda s: s.repo_id.split("/")[1])
def test_adapter_loads_into_its_modules_and_changes_the_image(bases, demo_models, spec):
    base = bases[_base_of(spec)]
    expected = base.expected(spec)
    base.pipe.load_lora_weights(demo_models.path(spec.repo_id), adapter_name="a")
    try:
        assert base.loaded() == expected, spec.repo_id
        changed = float(np.abs(generate(base.pipe) - base.reference).mean())
        assert changed > VISIBLE_CHANGE, f"{spec.repo_id}: mean |diff| {changed:.4f}"
    finally:
        base.pipe.unload_lora_weights()
    assert np.array_equal(generate(base.pipe), base.reference), "unload must restore the base"


def test_demo_set_lists_adapters_per_base(demo_models):
    demo = demo_models.demo
    assert demo.bases == tuple(b.repo_id for b in BASES)
    for base in BASES:
        mine = demo.adapters_for(base.repo_id)
        assert len({a.format for a in mine}) >= 2, base.repo_id
        assert all(
            base.repo_id in (a.base_model if isinstance(a.base_model, list) else [a.base_model])
            for a in mine
        )
        assert demo.base(base.repo_id).pipeline_class == base.pipeline_class
    assert demo.all_adapters == EVERY_ADAPTER
    assert demo.adapters == ADAPTERS and demo.sdxl_adapters == SDXL_ADAPTERS
    assert {a.format for a in demo.adapters_for(TINY_FLUX)} >= {"diffusers", "kohya-flux"}
    assert demo.adapter(LORA_LOCON).conv_rank == 4
    assert len(demo.adapters_for(TINY_SD)) == 10


@pytest.mark.slow
def test_edge_case_repos_behave_in_diffusers_as_documented(bases, demo_models, caplog):
    """What the test-only LyCORIS / DoRA / missing-module repos do in diffusers' own loader
    (the worker's reference behaviour): DoRA loads, LoHa and LoKr are refused, a Flux LoRA
    with keys for a block the base lacks loads the rest with a warning."""
    repos, sd, flux = demo_models.test_repos, bases[TINY_SD], bases[TINY_FLUX]
    attention = sd.expected(ADAPTERS[0])["unet"]
    sd.pipe.load_lora_weights(demo_models.path(repos.dora), adapter_name="a")
    try:
        params = [n for n, _ in sd.pipe.unet.named_parameters() if "lora_magnitude_vector" in n]
        assert len(params) == len(attention) and sd.loaded()["unet"] == attention
        assert np.abs(generate(sd.pipe) - sd.reference).mean() > VISIBLE_CHANGE
    finally:
        sd.pipe.unload_lora_weights()
    for repo, factor in ((repos.loha, "hada_w1_a"), (repos.lokr, "lokr_w1")):
        with pytest.raises(ValueError, match=factor):
            sd.pipe.load_lora_weights(demo_models.path(repo), adapter_name="a")
        sd.pipe.unload_lora_weights()
    assert np.array_equal(generate(sd.pipe), sd.reference)
    flux.pipe.load_lora_weights(demo_models.path(repos.flux_missing), adapter_name="a")
    try:
        assert "transformer_blocks.1.attn.to_q" in caplog.text  # "unexpected keys" warning
        assert "transformer_blocks.0.attn.to_q" in flux.loaded()["transformer"]
    finally:
        flux.pipe.unload_lora_weights()
    assert np.array_equal(generate(flux.pipe), flux.reference)


def test_models_dir_scan_finds_every_base_and_routes_every_adapter(demo_models):
    """What ``loraplex up --models DIR`` discovers in the demo folder (router's own rules)."""
    from loraplex.embedded.models_dir import scan_models_dir

    found = scan_models_dir(demo_models.root)
    for base in BASES:
        assert base.repo_id in found.bases
        assert found.pipelines[base.repo_id] == base.pipeline_class
    for spec in EVERY_ADAPTER:
        base_model = spec.base_model
        assert found.loras[spec.repo_id] == (
            tuple(base_model) if isinstance(base_model, list) else (base_model,)
        )
    assert found.loras[demo_models.test_repos.flux_missing] == (TINY_FLUX,)
