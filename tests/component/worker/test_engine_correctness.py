"""Engine correctness on the tiny pipeline, through the real huggingface_hub client.

For every demo adapter and every tier path the image equals diffusers' own
``load_lora_weights`` for the same seed (max abs diff ≤ 1e-4), and after any adapter or failed
load a base image is bit-exact with a pipeline that never had a slot. The Hub is the fixture
server (``fixtures.hub``); references come from a separate pristine pipeline loading the same
repo folders with diffusers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.engines import reference_images
from fixtures.hub import point_client_at
from fixtures.worker import one_torch_thread  # noqa: F401 - pytest fixture
from loraplex.worker.pipeline import Engine
from loraplex.worker.settings import WorkerSettings

from loraplex.demo.models import ADAPTERS, LORA_KOHYA, LORA_R4, LORA_R8_ALPHA16, TINY_SD
from loraplex.shared.contract import AdapterRef, GenerateRequest, SwitchTier
from loraplex.shared.errors import (
    Forbidden,
    NotFound,
    NotServable,
    PayloadTooLarge,
    Unauthorized,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
TOLERANCE = 1e-4
REQUEST = GenerateRequest(
    prompt="a photo of sks", width=64, height=64, num_inference_steps=2, guidance_scale=5.0, seed=7
)


def image(engine: Engine) -> np.ndarray:
    return engine.run_pipe(REQUEST, output_type="np")[1][0]


@pytest.fixture(scope="module")
def references(demo_models) -> dict[str | None, np.ndarray]:
    """Images from a pristine diffusers pipeline: the base, then each adapter (diffusers load)."""
    weights = [(s.repo_id, demo_models.path(s.repo_id) / s.weight_name) for s in ADAPTERS]
    return reference_images(demo_models.path(TINY_SD), weights, REQUEST)


@pytest.fixture(scope="module")
def engine(hub_cache: Path) -> Engine:
    settings = WorkerSettings(
        base_model=TINY_SD,
        cache_dir=hub_cache,
        slot_rank=8,
        max_adapter_slots=2,
        width=64,
        height=64,
        num_inference_steps=2,
    )
    return Engine.load(settings)


def assert_matches(engine: Engine, refs: dict, repo_id: str | None) -> None:
    got = image(engine)
    if repo_id is None:
        assert np.array_equal(got, refs[None]), "base image is not bit-exact"
    else:
        diff = float(np.abs(got - refs[repo_id]).max())
        assert diff <= TOLERANCE, f"{repo_id}: max abs diff {diff} vs diffusers"
        assert not np.array_equal(got, refs[None])


@pytest.mark.parametrize("spec", ADAPTERS, ids=lambda s: s.repo_id.split("/")[1])
def test_every_demo_adapter_matches_diffusers_then_base_is_bit_exact(
    engine: Engine, references: dict, spec
) -> None:
    switch = engine.switch_to(AdapterRef(repo_id=spec.repo_id))
    fast = (SwitchTier.HUB, SwitchTier.DISK, SwitchTier.RESIDENT, SwitchTier.HOST)
    assert switch.tier in (*fast, SwitchTier.ACTIVE), switch  # text encoders too: the slot
    assert switch.active is not None and len(switch.active.commit) == 40  # branch → commit
    assert_matches(engine, references, spec.repo_id)
    engine.switch_to(None)
    assert_matches(engine, references, None)


def test_every_tier_path_gives_the_same_image(engine: Engine, references: dict) -> None:
    r4, r8, kohya = (AdapterRef(repo_id=r) for r in (LORA_R4, LORA_R8_ALPHA16, LORA_KOHYA))
    key = engine.fetcher.resolve(r4, None)
    engine.cache.drop(key)
    engine.switch_to(None)
    steps = [
        (r4, "hub-or-disk"),
        (r4, SwitchTier.ACTIVE),
        (r8, None),
        (r4, SwitchTier.RESIDENT),
        (kohya, None),
        (r8, None),  # two resident slots: r4 is now only in the host tier
        (r4, SwitchTier.HOST),
    ]
    for ref, tier in steps:
        switch = engine.switch_to(ref)
        if tier == "hub-or-disk":
            assert switch.tier in (SwitchTier.HUB, SwitchTier.DISK)
        elif tier is not None:
            assert switch.tier == tier, ref
        assert_matches(engine, references, ref.repo_id)
    engine.switch_to(None)
    engine.cache.drop(key)
    assert (
        engine.switch_to(AdapterRef(repo_id=LORA_R4, revision=key.commit)).tier == SwitchTier.DISK
    )
    assert_matches(engine, references, LORA_R4)
    engine.switch_to(None)
    assert_matches(engine, references, None)


def test_slow_path_unloads_before_the_slot_is_used_again(
    engine: Engine, references: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the text encoders outside the slot (as LORAPLEX_SLOT_TEXT_ENCODERS=false makes
    them), a text-encoder adapter takes the slow tier."""
    text_encoder = next(s for s in ADAPTERS if s.has_text_encoder)
    r4 = AdapterRef(repo_id=LORA_R4)
    monkeypatch.setattr(engine, "components", {"unet": engine.denoiser})
    engine.cache.drop(engine.fetcher.resolve(AdapterRef(repo_id=text_encoder.repo_id), None))
    engine._slow.paths.clear()
    engine.switch_to(None)
    engine.cache.drop(engine.fetcher.resolve(r4, None))  # r4 must be converted while slow is on
    assert engine.switch_to(AdapterRef(repo_id=text_encoder.repo_id)).tier == SwitchTier.SLOW
    assert engine.switch_to(r4).tier in (SwitchTier.DISK, SwitchTier.HUB)
    assert_matches(engine, references, LORA_R4)
    assert engine.switch_to(AdapterRef(repo_id=text_encoder.repo_id)).tier == SwitchTier.SLOW
    assert_matches(engine, references, text_encoder.repo_id)
    engine.switch_to(None)
    assert_matches(engine, references, None)


BAD = [
    ("unknown", "loraplex-test/no-such-adapter", None, NotFound, "not found"),
    ("pickle", "pickle_only", None, NotServable, "pickle"),
    ("corrupt", "corrupt", None, NotServable, "not a valid safetensors"),
    ("wrong-arch", "wrong_arch", None, NotServable, "shape mismatch"),
    ("multi-file", "multi_file", None, NotServable, "style_a.safetensors, style_b.safetensors"),
    ("peft-native", "peft_native", None, NotServable, "save_lora_weights"),
    ("loha", "loha", None, NotServable, "is a LoHa (LyCORIS Hadamard product) adapter"),
    ("lokr", "lokr", None, NotServable, "LoKr"),
    ("gated-no-token", "gated", None, Unauthorized, "gated"),
    ("gated-wrong-token", "gated", "hf_wrong", Forbidden, "refused"),
]


@pytest.mark.parametrize(("case", "repo", "token", "error", "text"), BAD, ids=[b[0] for b in BAD])
def test_failed_loads_raise_domain_errors_and_leave_the_base_bit_exact(
    engine: Engine, references: dict, demo_models, case, repo, token, error, text
) -> None:
    repo_id = getattr(demo_models.test_repos, repo, repo)
    engine.switch_to(AdapterRef(repo_id=LORA_R4))  # something active before the failure
    with pytest.raises(error) as caught:
        engine.generate(REQUEST.model_copy(update={"adapter": AdapterRef(repo_id=repo_id)}), token)
    assert text in caught.value.message
    assert engine.active is None
    assert_matches(engine, references, None)


def test_gated_adapter_loads_with_the_right_token(engine, references, demo_models, hub_server):
    ref = AdapterRef(repo_id=demo_models.test_repos.gated)
    assert engine.switch_to(ref, hub_server.gated_token).tier in (SwitchTier.HUB, SwitchTier.DISK)
    engine.switch_to(None)
    assert_matches(engine, references, None)


def test_adapter_over_the_size_limit_is_refused_before_download(engine, references) -> None:
    ref = AdapterRef(repo_id="loraplex-demo/lora-list-base", revision="main")
    engine.switch_to(None)
    engine.cache.drop(engine.fetcher.resolve(ref, None))  # not cached: must be fetched
    engine.fetcher.max_adapter_bytes = 1000
    try:
        with pytest.raises(PayloadTooLarge, match="MAX_ADAPTER_BYTES"):
            engine.switch_to(ref)
    finally:
        engine.fetcher.max_adapter_bytes = engine.settings.max_adapter_bytes
    engine.switch_to(None)
    assert_matches(engine, references, None)


def test_disk_tier_is_trimmed_to_its_budget_keeping_the_base(hub_cache: Path, tmp_path) -> None:
    from huggingface_hub import scan_cache_dir
    from loraplex.worker.fetch import HubFetcher

    fetcher = HubFetcher(cache_dir=tmp_path, max_adapter_bytes=2**30, branch_ttl_s=60)
    fetcher.snapshot(TINY_SD, "main", None)
    keys = []
    for repo in (LORA_R4, LORA_R8_ALPHA16, LORA_KOHYA):
        weight = fetcher.weight_file(fetcher.resolve(AdapterRef(repo_id=repo), None), None)
        fetcher.download(weight, None)
        keys.append(weight.key)
    sizes = {r.repo_id: r.size_on_disk for r in scan_cache_dir(tmp_path).repos}
    budget = sizes[TINY_SD] + sizes[LORA_KOHYA] + sizes[LORA_R8_ALPHA16]
    evicted = fetcher.trim_disk(budget, frozenset({TINY_SD}))
    assert evicted == [keys[0]]  # the least recently used adapter
    left = {r.repo_id for r in scan_cache_dir(tmp_path).repos if r.revisions}
    assert left == {TINY_SD, LORA_R8_ALPHA16, LORA_KOHYA}
    assert fetcher.trim_disk(0, frozenset({TINY_SD})) == keys[1:]


def test_branch_resolution_survives_a_hub_outage_and_commits_need_no_hub(
    isolated_hub_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from loraplex.worker.fetch import HubFetcher

    from loraplex.shared.errors import UpstreamFailed

    point_client_at(monkeypatch, isolated_hub_server.url, tmp_path)
    now = [0.0]
    fetcher = HubFetcher(
        cache_dir=tmp_path, max_adapter_bytes=2**30, branch_ttl_s=10, clock=lambda: now[0]
    )
    key = fetcher.resolve(AdapterRef(repo_id=LORA_R4), None)
    isolated_hub_server.stop()
    now[0] = 60.0  # past the TTL: the Hub is asked, fails, and the last commit is kept
    assert fetcher.resolve(AdapterRef(repo_id=LORA_R4), None) == key
    assert fetcher.resolve(AdapterRef(repo_id=LORA_R4, revision=key.commit), None) == key
    with pytest.raises(UpstreamFailed, match="unreachable"):
        fetcher.resolve(AdapterRef(repo_id=LORA_R8_ALPHA16), None)


@pytest.mark.parametrize(
    ("rank", "targets", "reason"),
    [
        (2, ("to_q", "to_k", "to_v", "to_out.0"), "rank 4 is above the slot rank 2"),
        (8, ("to_q",), "outside the slot"),
    ],
)
def test_adapters_that_do_not_fit_the_slot_are_sent_to_the_slow_path(
    engine: Engine, demo_models, rank: int, targets: tuple[str, ...], reason: str
) -> None:
    from diffusers import StableDiffusionPipeline
    from loraplex.worker.convert import convert
    from loraplex.worker.slot import SlotLayout

    spec = next(s for s in ADAPTERS if s.repo_id == LORA_R4)
    layout = SlotLayout.for_components(engine.components, rank, targets)
    converted = convert(
        StableDiffusionPipeline,
        demo_models.path(spec.repo_id) / spec.weight_name,
        engine.components,
        layout,
        dtype=torch.float32,
        pin_memory=False,
    )
    assert converted.packed is None
    assert converted.slow_reason is not None and reason in converted.slow_reason.text


def test_a_slow_path_load_that_fails_leaves_the_base_bit_exact(
    engine: Engine, references: dict, demo_models, tmp_path: Path
) -> None:
    """A text-encoder LoRA whose text-encoder tensors have the wrong shape: the slot check
    passes (its UNet part is fine) and diffusers fails half-way through loading."""
    from loraplex.worker.adapters import AdapterKey
    from safetensors.torch import load_file, save_file

    spec = next(s for s in ADAPTERS if s.has_text_encoder)
    tensors = load_file(demo_models.path(spec.repo_id) / spec.weight_name)
    broken = {
        k: torch.zeros(v.shape[0], v.shape[1] + 3) if k.startswith("text_encoder.") else v
        for k, v in tensors.items()
    }
    path = tmp_path / "pytorch_lora_weights.safetensors"
    save_file(broken, path)
    engine.switch_to(AdapterRef(repo_id=LORA_R4))
    with pytest.raises(NotServable, match="cannot be loaded on this base"):
        engine._activate_slow(AdapterKey("org/broken", "f" * 40), path)  # the slow path itself
    engine.switch_to(None)
    assert_matches(engine, references, None)


def _with_bogus_metadata(demo_models, repo_id: str, component: str, tmp_path: Path) -> Path:
    """The demo adapter with a LoraConfig field this peft does not know (as a newer peft
    might write): diffusers raises TypeError while building the config."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    spec = next(s for s in ADAPTERS if s.repo_id == repo_id)
    with safe_open(str(demo_models.path(repo_id) / spec.weight_name), "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        metadata = dict(handle.metadata() or {})
    config = json.loads(metadata["lora_adapter_metadata"])
    config[f"{component}.bogus_field"] = 1
    metadata["lora_adapter_metadata"] = json.dumps(config)
    path = tmp_path / "pytorch_lora_weights.safetensors"
    save_file(tensors, path, metadata=metadata)
    return path


def test_a_slow_load_failing_with_any_error_type_leaves_no_lora_behind(
    engine: Engine, references: dict, demo_models, tmp_path: Path
) -> None:
    """diffusers injects the UNet layers, then raises TypeError on the text encoder's config:
    the adapter is refused (422) and no peft layer stays in the base."""
    from loraplex.worker.adapters import AdapterKey

    spec = next(s for s in ADAPTERS if s.has_text_encoder)
    path = _with_bogus_metadata(demo_models, spec.repo_id, "text_encoder", tmp_path)
    with pytest.raises(NotServable, match="TypeError"):
        engine._activate_slow(AdapterKey("org/newer-peft", "e" * 40), path)
    layers = [n for n, _ in engine.denoiser.named_modules() if n.endswith("lora_A")]
    assert layers == [], "a half-loaded adapter stayed in the UNet"
    engine.switch_to(None)
    assert_matches(engine, references, None)
    engine.switch_to(AdapterRef(repo_id=LORA_R4))
    assert_matches(engine, references, LORA_R4)
    engine.switch_to(None)


def test_unreadable_lora_metadata_on_the_fast_path_is_422(
    engine: Engine, demo_models, tmp_path: Path
) -> None:
    from diffusers import StableDiffusionPipeline
    from loraplex.worker.convert import convert

    path = _with_bogus_metadata(demo_models, LORA_R4, "unet", tmp_path)
    with pytest.raises(NotServable, match="metadata cannot be read"):
        convert(
            StableDiffusionPipeline,
            path,
            engine.components,
            engine.layout,
            dtype=torch.float32,
            pin_memory=False,
        )


def test_a_dora_adapter_takes_the_slow_tier_with_its_reason_and_matches_diffusers(
    engine: Engine, references: dict, demo_models
) -> None:
    repo = demo_models.test_repos.dora
    weight = next(demo_models.path(repo).glob("*.safetensors"))
    expected = reference_images(demo_models.path(TINY_SD), [(repo, weight)], REQUEST)[repo]
    for _ in range(2):  # first load, then the known-slow path
        switch = engine.switch_to(AdapterRef(repo_id=repo))
        assert switch.tier == SwitchTier.SLOW
        assert switch.slow_reason is not None and "DoRA" in switch.slow_reason.text
        assert float(np.abs(image(engine) - expected).max()) <= TOLERANCE
        engine.switch_to(None)
        assert_matches(engine, references, None)
