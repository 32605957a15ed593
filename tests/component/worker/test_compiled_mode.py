"""Compiled mode: ``torch.compile`` of the denoiser, and switches that never recompile.

The anchor is diffusers' hotswap, which must fix the rank ahead, refuses text-encoder LoRAs and
recompiles when a later adapter targets modules the first did not. Here the demo adapters
differ in module sets (UNet only, UNet + text encoder, kohya keys) and ranks (4, 8), and base
requests come in between: after the warm-up (which builds the base graph and the slot-on
graph) dynamo captures no new graph, and every image equals diffusers' own within 1e-4.

The backend is dynamo's ``eager`` (the same tracing and guards as inductor, without code
generation, so the test runs in seconds on CPU); guards, not the backend, decide recompiles.
"""

from __future__ import annotations

import pytest
import torch
from fixtures.engines import engine_for, image, max_diff, reference_images
from fixtures.worker import one_torch_thread  # noqa: F401 - pytest fixture

from loraplex.demo.models import ADAPTERS, TINY_SD
from loraplex.shared.contract import AdapterRef

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def test_switches_between_different_module_sets_and_ranks_never_recompile(
    hub_cache,
    demo_models,
) -> None:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    engine = engine_for(TINY_SD, hub_cache, compile=True, compile_backend="eager", warmup_steps=1)
    engine.warm_up()
    graphs_after_warm_up = counters["stats"]["unique_graphs"]
    assert graphs_after_warm_up >= 2  # the base graph and the slot-on graph
    adapters = [s for s in ADAPTERS if s.weight_name.endswith(".safetensors")]
    refs = reference_images(
        demo_models.path(TINY_SD),
        [(s.repo_id, demo_models.path(s.repo_id) / s.weight_name) for s in adapters],
    )
    order = [*adapters, None, *reversed(adapters), None]
    for spec in order:
        engine.switch_to(None if spec is None else AdapterRef(repo_id=spec.repo_id))
        got = image(engine)
        key = None if spec is None else spec.repo_id
        assert max_diff(got, refs[key]) <= 1e-4, key
    assert counters["stats"]["unique_graphs"] == graphs_after_warm_up, "a switch recompiled"
