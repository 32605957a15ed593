"""Exact fused serving on the real tiny SD engine, through the real huggingface_hub client.

With ``merge=always`` the LoCon adapter (attention Linears and resnet 3×3 convs) and the kohya
text-encoder adapter (UNet + CLIP MLP Linears) give the same image fused as hooked (≤ 1e-4 fp32),
and the base is bit-exact — the image and every weight of the pipeline — after a fused adapter,
after fused → other adapter, after a failed load, and after 100 fuse/restore cycles. ``auto``
measures its inputs at warm-up and fuses only when the queued work pays for it. In compiled
mode (dynamo's eager backend, as in test_compiled_mode.py) fused serving adds no graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.engines import REQUEST, engine_for, image, max_diff
from fixtures.worker import one_torch_thread  # noqa: F401 - pytest fixture
from loraplex.worker.pipeline import Engine

from loraplex.demo.models import LORA_KOHYA_TE, LORA_LOCON, TINY_SD
from loraplex.shared.contract import AdapterRef
from loraplex.shared.errors import NotFound, NotServable

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
LOCON, TE = AdapterRef(repo_id=LORA_LOCON), AdapterRef(repo_id=LORA_KOHYA_TE)


def weights(engine: Engine) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": value.detach().clone()
        for name in ("unet", "text_encoder", "vae")
        for key, value in getattr(engine.pipe, name).state_dict().items()
    }


def assert_pristine(engine: Engine, base: np.ndarray, before: dict[str, torch.Tensor]) -> None:
    assert engine.merger.fused is None and not engine.slot.active
    after = weights(engine)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, changed[:5]
    assert np.array_equal(image(engine), base)  # bit-exact, not merely close


@pytest.fixture(scope="module")
def engine(hub_cache: Path) -> Engine:
    return engine_for(TINY_SD, hub_cache, merge="always")


@pytest.fixture(scope="module")
def pristine(engine: Engine) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    return image(engine), weights(engine)


def test_fused_images_equal_hooked_ones_and_the_base_comes_back_bit_exact(
    engine: Engine, pristine
) -> None:
    base, before = pristine
    kinds = set()
    for ref in (LOCON, TE):  # LOCON fused → TE: the switch restores before loading
        engine.switch_to(ref)
        packed = engine.slot.current
        assert packed is not None and engine.slot.active
        names = [engine.layout.modules[e.index].name for e in packed.entries]
        kinds |= {n.split(".")[0] for n in names}
        kinds |= {"conv" for e in packed.entries if engine.layout.modules[e.index].conv}
        hooked = image(engine)
        engine.prepare_run(2)
        assert engine.merger.fused is packed and not engine.slot.active
        fused = image(engine)
        assert max_diff(hooked, base) > 1e-2, ref  # the adapter moves the image
        assert max_diff(fused, hooked) <= 1e-4, ref
    assert kinds == {"unet", "text_encoder", "conv"}
    engine.switch_to(None)
    assert_pristine(engine, base, before)


def test_generate_fuses_keeps_it_for_the_same_adapter_and_a_base_request_restores(
    engine: Engine, pristine
) -> None:
    base, before = pristine
    request = REQUEST.model_copy(update={"adapter": LOCON})
    engine.generate(request)
    fused = engine.merger.fused
    assert fused is not None and engine.merger.fuses
    fuses = engine.merger.fuses
    engine.generate(request)  # already active and fused: no second fold
    assert engine.merger.fused is fused and engine.merger.fuses == fuses
    engine.generate(REQUEST)
    assert_pristine(engine, base, before)


@pytest.mark.parametrize(("repo", "error"), [("no-such", NotFound), ("corrupt", NotServable)])
def test_a_failed_load_after_a_fused_adapter_leaves_the_base_bit_exact(
    engine: Engine, pristine, demo_models, repo: str, error: type[Exception]
) -> None:
    base, before = pristine
    engine.generate(REQUEST.model_copy(update={"adapter": TE}))
    assert engine.merger.fused is not None
    repo_id = (
        "loraplex-test/no-such-adapter" if repo == "no-such" else demo_models.test_repos.corrupt
    )
    with pytest.raises(error):
        engine.generate(REQUEST.model_copy(update={"adapter": AdapterRef(repo_id=repo_id)}))
    assert engine.active is None
    assert_pristine(engine, base, before)


def test_a_hundred_fuse_restore_cycles_leave_every_weight_bit_exact(
    engine: Engine, pristine
) -> None:
    base, before = pristine
    start = engine.merger.fuses
    for i in range(100):
        engine.switch_to(TE if i % 2 else LOCON)  # resident hits: restore, load
        engine.prepare_run(2)
    assert engine.merger.fuses - start == 100
    engine.switch_to(None)
    assert_pristine(engine, base, before)
    assert engine.merger.pristine_bytes > 0


def test_auto_measures_at_warm_up_and_fuses_only_when_the_queue_pays(hub_cache: Path) -> None:
    engine = engine_for(TINY_SD, hub_cache, merge="auto", warmup_steps=1)
    assert engine.merge_costs is None
    engine.switch_to(LOCON)
    engine.prepare_run(10**9)  # no measurement yet: auto keeps the hooks
    assert engine.merger.fused is None
    engine.switch_to(None)
    engine.warm_up()
    costs = engine.merge_costs
    assert costs is not None and costs.fuse_s_per_byte > 0 and costs.restore_s_per_byte > 0
    assert not [n for n, m in engine.pipe.unet.named_modules() if m._forward_hooks]
    engine.switch_to(LOCON)
    engine.prepare_run(0)  # nothing to save
    assert engine.merger.fused is None and engine.slot.active
    if costs.hook_step_s > 0:  # the hooks measured slower than the base (they do, but timing)
        engine.prepare_run(10**9)
        assert engine.merger.fused is not None and not engine.slot.active


def test_compiled_mode_serves_fused_adapters_on_the_base_graph(hub_cache: Path) -> None:
    """No warm-up here (it would also trace the slot-on graph, ~10 s on this CPU): one base
    request traces the base graph, and every fused adapter then runs on it, no new graph."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    engine = engine_for(TINY_SD, hub_cache, compile=True, compile_backend="eager", merge="always")
    engine.generate(REQUEST)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    for ref in (LOCON, TE, None, TE, LOCON):
        engine.generate(REQUEST.model_copy(update={"adapter": ref}))
        assert (engine.merger.fused is not None) == (ref is not None)
    assert counters["stats"]["unique_graphs"] == graphs, "fusing recompiled"
