"""Every demo base × every demo adapter format × every tier, against diffusers' own images.

Bases: tiny SD 1.x, SDXL, Flux.1 and SD3 pipelines (real diffusers classes, random weights).
Adapters: diffusers, PEFT and kohya files, kohya's default network (attention + feed-forward +
proj_in/out), text-encoder LoRAs (``lora_te_``, ``lora_te1_``/``lora_te2_``), LyCORIS LoCon
(3×3 conv down, 1×1 up), Flux's kohya (BFL names, fused qkv) and XLabs styles, SD3's diffusers
and PEFT files. For each: the first load comes through the Hub into a fast tier (never the slow
one), then the same adapter from the host tier and the resident tier and the disk tier, after
other adapters and base requests in between; every image within 1e-4 (fp32) of the pristine
pipeline with diffusers' ``load_lora_weights``, and the base bit-exact after each.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fixtures.engines import engine_for, image, max_diff, reference_images
from fixtures.worker import one_torch_thread  # noqa: F401 - pytest fixture
from loraplex.worker.pipeline import Engine

from loraplex.demo.models import TINY_FLUX, TINY_SD, TINY_SD3, TINY_SDXL
from loraplex.shared.contract import AdapterRef, SwitchTier

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
TOLERANCE = 1e-4
BASES = (TINY_SD, TINY_SDXL, TINY_FLUX, TINY_SD3)
FAST = (SwitchTier.HUB, SwitchTier.DISK, SwitchTier.HOST, SwitchTier.RESIDENT)


@pytest.fixture(scope="module", params=BASES, ids=lambda b: b.split("/")[1])
def base_case(
    request: pytest.FixtureRequest,
    demo_models,
    hub_cache,
) -> Iterator[tuple[Engine, dict, list[str]]]:
    base = request.param
    specs = demo_models.demo.adapters_for(base)
    weights = [(s.repo_id, demo_models.path(s.repo_id) / s.weight_name) for s in specs]
    refs = reference_images(demo_models.path(base), weights)
    engine = engine_for(base, hub_cache, max_adapter_slots=1)
    yield engine, refs, [s.repo_id for s in specs]


def check(engine: Engine, refs: dict, repo_id: str | None) -> None:
    got = image(engine)
    if repo_id is None:
        assert np.array_equal(got, refs[None]), "base image is not bit-exact"
        return
    diff = max_diff(got, refs[repo_id])
    assert diff <= TOLERANCE, f"{repo_id}: max abs diff {diff} vs diffusers"
    assert not np.array_equal(got, refs[None]), f"{repo_id} did not change the image"


def test_every_adapter_takes_a_fast_tier_and_matches_diffusers(base_case) -> None:
    engine, refs, adapters = base_case
    assert len(adapters) >= 2
    for repo_id in adapters:
        switch = engine.switch_to(AdapterRef(repo_id=repo_id))
        assert switch.tier in FAST, (repo_id, switch)
        check(engine, refs, repo_id)
        engine.switch_to(None)
        check(engine, refs, None)


def test_every_tier_path_of_every_adapter_gives_the_same_image(base_case) -> None:
    """One resident slot: the previous adapter falls to the host tier at every switch."""
    engine, refs, adapters = base_case
    for i, repo_id in enumerate(adapters):  # host and resident tiers, between others
        ref = AdapterRef(repo_id=repo_id)
        seen = set()
        for other in [adapters[i - 1], None, adapters[(i + 1) % len(adapters)]]:
            engine.switch_to(None if other is None else AdapterRef(repo_id=other))
            seen.add(engine.switch_to(ref).tier)
            check(engine, refs, repo_id)
        assert seen & {SwitchTier.HOST, SwitchTier.RESIDENT}, (repo_id, seen)
    key = engine.fetcher.resolve(AdapterRef(repo_id=adapters[0]), None)
    engine.switch_to(None)
    engine.cache.drop(key)
    assert engine.switch_to(AdapterRef(repo_id=adapters[0])).tier == SwitchTier.DISK
    check(engine, refs, adapters[0])
    engine.switch_to(None)
    check(engine, refs, None)


def test_modules_the_base_lacks_are_ignored_as_diffusers_ignores_them(
    demo_models,
    hub_cache,
) -> None:
    repo = demo_models.test_repos.flux_missing
    weight = next(demo_models.path(repo).glob("*.safetensors"))
    refs = reference_images(demo_models.path(TINY_FLUX), [(repo, weight)])
    engine = engine_for(TINY_FLUX, hub_cache)
    assert engine.switch_to(AdapterRef(repo_id=repo)).tier in FAST
    check(engine, refs, repo)
    engine.switch_to(None)
    check(engine, refs, None)
