"""Fused serving's pure policy and its fold math on toy modules.

The policy (:func:`should_fuse`, :func:`estimate`) is a pure function of measured inputs. The
fold is checked against the slot's own hooks: a Linear, a strided, padded, dilated 3×3 Conv2d
and the Linears of a real (tiny) CLIP text encoder give the same outputs fused as hooked, and a
restore gives back every weight bit for bit, however many cycles ran. One test makes the fold
fail half-way (a patched ``fold`` that raises: a real failure, e.g. out of memory, cannot be
provoked on demand) to check that nothing stays half-fused."""

from __future__ import annotations

import pytest
import torch
from loraplex.worker import merge
from loraplex.worker.merge import (
    FuseEstimate,
    MergeCosts,
    Merger,
    estimate,
    measure_costs,
    should_fuse,
)
from loraplex.worker.slot import LoraSlot, SlotLayout
from torch import nn


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, stride=2, padding=2, dilation=2)
        self.proj = nn.Linear(5, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.conv(x).flatten(2).transpose(1, 2))


def text_encoder() -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=99,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
    )
    return CLIPTextModel(config).eval()


def setup(static: bool = False, rank: int = 4):
    torch.manual_seed(0)
    components = {"unet": Block().eval(), "text_encoder": text_encoder()}
    layout = SlotLayout.for_components(components, rank)
    named = {f"{p}.{n}": m for p, c in components.items() for n, m in c.named_modules()}
    slot = LoraSlot(named, layout, dtype=torch.float32, device=torch.device("cpu"), static=static)
    merger = Merger(slot)
    return components, layout, slot, merger


def adapter(layout: SlotLayout, names: list[str], rank: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for m in layout.modules:
        if m.name in names:
            a = torch.randn(rank, m.in_features, generator=gen) * 0.5
            b = torch.randn(m.out_features, rank, generator=gen) * 0.5
            out[m.name] = (a, b, 0.75)
    return layout.pack(out, dtype=torch.float32)


def outputs(components: dict[str, nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 9, 9, generator=gen)
    ids = torch.randint(0, 99, (2, 6), generator=gen)
    with torch.no_grad():
        return components["unet"](x), components["text_encoder"](ids).last_hidden_state


def weights(components: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{p}.{k}": v.clone() for p, c in components.items() for k, v in c.state_dict().items()}


def assert_same(before: dict[str, torch.Tensor], components: dict[str, nn.Module]) -> None:
    after = weights(components)
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, changed


def test_never_and_always_ignore_the_figures_and_auto_weighs_them() -> None:
    cheap = FuseEstimate(hook_step_s=0.01, fuse_s=0.05, restore_s=0.05)  # break-even: 10 steps
    for steps in (0, 1, 1000):
        assert should_fuse("never", steps, cheap) is False
        assert should_fuse("always", steps, cheap) is True
        assert should_fuse("always", steps, None) is True
    assert should_fuse("auto", 10, cheap) is False  # saves exactly what it costs: no
    assert should_fuse("auto", 11, cheap) is True
    assert should_fuse("auto", 10**6, None) is False  # never measured (no warm-up): hooks


def test_estimate_scales_start_up_figures_to_one_adapter() -> None:
    costs = MergeCosts(hook_step_s=0.02, fuse_s_per_byte=1e-9, restore_s_per_byte=2e-9)
    est = estimate(costs, hook_share=0.25, weight_bytes=10**8)
    assert est == pytest.approx(FuseEstimate(0.005, 0.1, 0.2))
    assert should_fuse("auto", 60, est) is False and should_fuse("auto", 61, est) is True


@pytest.mark.parametrize("static", [False, True])
def test_fused_outputs_equal_hooked_ones_and_restore_is_bit_exact(static: bool) -> None:
    components, layout, slot, merger = setup(static=static)
    base_out, before = outputs(components), weights(components)
    names = [m.name for m in layout.modules]
    assert any(m.conv is not None for m in layout.modules)
    assert any(n.startswith("text_encoder.") for n in names)
    slot.load(adapter(layout, names, rank=3, seed=2))
    hooked = outputs(components)
    merger.fuse()
    assert merger.fused is not None and not slot.active  # hooks off: the weights carry it
    fused = outputs(components)
    for h, f, b in zip(hooked, fused, base_out, strict=True):
        assert (h - b).abs().max() > 1e-2  # the adapter moves both outputs
        torch.testing.assert_close(f, h, atol=1e-5, rtol=1e-5)
    merger.restore()
    assert merger.fused is None and not slot.active
    assert_same(before, components)
    for out, b in zip(outputs(components), base_out, strict=True):
        assert torch.equal(out, b)


def test_a_hundred_cycles_over_two_adapters_leave_every_weight_bit_exact() -> None:
    components, layout, slot, merger = setup()
    before = weights(components)
    names = [m.name for m in layout.modules]
    first = adapter(layout, names[:3], rank=4, seed=3)
    second = adapter(layout, names[1:], rank=2, seed=4)
    for i in range(100):
        merger.restore()  # what the engine does before any switch
        slot.load(first if i % 2 else second)
        merger.fuse()
    merger.restore()
    assert_same(before, components)
    assert merger.fuses == 100


def test_the_pristine_copy_holds_only_modules_ever_fused() -> None:
    _components, layout, slot, merger = setup()
    names = [m.name for m in layout.modules]
    packed = adapter(layout, names[:2], rank=2, seed=5)
    slot.load(packed)
    assert merger.pristine_bytes == 0
    merger.fuse()
    assert merger.pristine_bytes == merger.weight_bytes(packed) > 0
    assert merger.weight_bytes(packed) == sum(
        merger.weights[layout.index[n]].numel() * 4 for n in names[:2]
    )
    merger.restore()
    slot.load(packed)
    merger.fuse()  # the same modules again: the copy is reused, not taken again
    assert merger.pristine_bytes == merger.weight_bytes(packed)
    merger.restore()
    wider = adapter(layout, names[1:3], rank=2, seed=6)
    slot.load(wider)
    merger.fuse()  # one module new: the copy grows by that module only
    assert (
        merger.pristine_bytes
        == merger.weight_bytes(packed) + merger.weights[layout.index[names[2]]].numel() * 4
    )


def test_a_fold_failing_half_way_restores_what_it_folded(monkeypatch) -> None:
    components, layout, slot, merger = setup()
    before = weights(components)
    slot.load(adapter(layout, [m.name for m in layout.modules], rank=2, seed=6))
    real, calls = merge.fold, []

    def failing(*args, **kwargs) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected")
        real(*args, **kwargs)

    monkeypatch.setattr(merge, "fold", failing)
    with pytest.raises(RuntimeError, match="injected"):
        merger.fuse()
    assert merger.fused is None and slot.active  # still hooked: the run stays correct
    assert_same(before, components)


def test_hook_share_is_the_adapters_part_of_the_slot_and_one_when_static() -> None:
    _, layout, _slot, merger = setup(rank=4)
    full = adapter(layout, [m.name for m in layout.modules], rank=4, seed=7)
    half = adapter(layout, [m.name for m in layout.modules], rank=2, seed=7)
    assert merger.hook_share(full) == pytest.approx(1.0)
    assert merger.hook_share(half) == pytest.approx(0.5)
    *_, static_merger = setup(static=True, rank=4)
    assert static_merger.hook_share(half) == 1.0


def test_start_up_measurement_leaves_the_model_as_it_was() -> None:
    components, _layout, slot, merger = setup()
    before, base_out = weights(components), outputs(components)
    costs = measure_costs(slot, merger, lambda: outputs(components), 1, sync=lambda: None)
    assert costs.fuse_s_per_byte > 0 and costs.restore_s_per_byte > 0
    assert costs.hook_step_s >= 0
    assert not slot.active and slot.current is None
    assert_same(before, components)
    hooked = [n for c in components.values() for n, m in c.named_modules() if m._forward_hooks]
    assert hooked == []  # eager mode: no hook left behind on modules no adapter touched
    assert all(torch.equal(a, b) for a, b in zip(outputs(components), base_out, strict=True))
