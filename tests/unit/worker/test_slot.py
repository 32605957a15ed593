"""The LoRA slot on toy modules: compact values, Linear and Conv2d math equal to peft's LoRA,
history-free switches, and a bit-exact base when inactive (eager and static modes)."""

from __future__ import annotations

import itertools

import pytest
import torch
from loraplex.worker.slot import ATTENTION_TARGETS, LoraSlot, SlotLayout
from torch import nn
from torch.nn import functional


class Block(nn.Module):
    """Attention-ish Linears, a feed-forward Linear and a 3x3 conv, like a UNet block."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.to_q = nn.Linear(4, 8)
        self.to_k = nn.Linear(4, 8)
        self.to_out = nn.ModuleList([nn.Linear(8, 4)])
        self.ff = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x).flatten(2).transpose(1, 2)  # (b, hw, 4)
        return self.ff(self.to_out[0](self.to_q(h) * self.to_k(h).sigmoid()))


def make(
    static: bool = False, rank: int = 4, targets: tuple[str, ...] | None = None, stage: bool = False
):
    torch.manual_seed(0)
    model = Block()
    layout = SlotLayout.for_components({"unet": model}, rank, targets)
    modules = {f"unet.{n}": m for n, m in model.named_modules()}
    cpu = torch.device("cpu")
    slot = LoraSlot(modules, layout, dtype=torch.float32, device=cpu, static=static, stage=stage)
    return model, layout, slot


def lora(shape_a: tuple[int, ...], shape_b: tuple[int, ...], scale: float):
    return torch.randn(*shape_a), torch.randn(*shape_b) * 0.3, scale


def reference(model: Block, x: torch.Tensor, weights: dict) -> torch.Tensor:
    """The same model with each adapter module's output + scale·B(A(x)), written out."""
    handles = []
    for full, (a, b, scale) in weights.items():
        module = dict(model.named_modules())[full.removeprefix("unet.")]

        def hook(mod, args, out, a=a, b=b, scale=scale):
            if isinstance(mod, nn.Conv2d):
                down = functional.conv2d(args[0], a, None, mod.stride, mod.padding)
                return out + scale * functional.conv2d(down, b)
            return out + scale * (args[0] @ a.T @ b.T)

        handles.append(module.register_forward_hook(hook))
    try:
        return model(x)
    finally:
        for h in handles:
            h.remove()


ADAPTERS = {
    "attn-r2": {"unet.to_q": lora((2, 4), (8, 2), 0.5), "unet.to_k": lora((2, 4), (8, 2), 1.0)},
    "all-r4": {
        "unet.conv1": lora((4, 3, 3, 3), (4, 4, 1, 1), 0.25),
        "unet.to_q": lora((4, 4), (8, 4), 2.0),
        "unet.to_out.0": lora((4, 8), (4, 4), 1.0),
        "unet.ff": lora((4, 4), (6, 4), 0.75),
    },
    "ff-r1": {"unet.ff": lora((1, 4), (6, 1), 3.0)},
}


def test_layout_covers_every_linear_and_conv_or_only_the_named_targets() -> None:
    _, layout, _ = make()
    assert [m.name for m in layout.modules] == [
        "unet.conv1",
        "unet.to_q",
        "unet.to_k",
        "unet.to_out.0",
        "unet.ff",
    ]
    assert layout.count() == (4, 1)
    conv = layout.modules[0]
    assert conv.in_features == 3 * 3 * 3 and conv.out_features == 4
    assert layout.numel == 4 * sum(m.in_features + m.out_features for m in layout.modules)
    _, attention, _ = make(targets=ATTENTION_TARGETS)
    assert [m.name for m in attention.modules] == ["unet.to_q", "unet.to_k", "unet.to_out.0"]


def test_packed_adapters_are_stored_in_their_own_size_not_the_slots() -> None:
    _, layout, slot = make(rank=16)
    packed = layout.pack(ADAPTERS["ff-r1"], dtype=torch.float32)
    assert packed.nbytes == 1 * (4 + 6) * 4  # rank 1 · (in + out) floats
    assert slot.nbytes > 100 * packed.nbytes


@pytest.mark.parametrize(
    ("static", "stage"),
    [(False, False), (True, False), (False, True)],
    ids=["eager", "static", "staged"],  # staged: one copy into a staging buffer, then scatter
)
def test_switches_in_any_order_equal_the_written_out_lora_and_base_stays_bit_exact(
    static: bool, stage: bool
) -> None:
    model, layout, slot = make(static=static, stage=stage)
    x = torch.randn(2, 3, 5, 5)
    pristine = model(x)
    packed = {name: layout.pack(w, dtype=torch.float32) for name, w in ADAPTERS.items()}
    expected = {name: reference(model, x, w) for name, w in ADAPTERS.items()}
    assert torch.equal(model(x), pristine)
    for order in itertools.permutations(ADAPTERS):
        for name in order:
            slot.load(packed[name])
            assert torch.allclose(model(x), expected[name], atol=1e-5), (order, name)
        slot.deactivate()
        assert torch.equal(model(x), pristine)


def test_the_buffer_after_a_switch_does_not_depend_on_what_was_active_before() -> None:
    _, layout, slot = make()
    _, _, fresh = make()
    big, small = (layout.pack(ADAPTERS[n], dtype=torch.float32) for n in ("all-r4", "attn-r2"))
    slot.load(big)
    slot.load(small)  # rank 4 rows and conv/ff modules of `big` must be gone
    fresh.load(layout.pack(ADAPTERS["attn-r2"], dtype=torch.float32))
    assert torch.equal(slot.buffer, fresh.buffer)
    assert torch.equal(slot.scales, fresh.scales)


def test_eager_mode_hooks_only_modules_an_adapter_touched() -> None:
    model, layout, slot = make()
    hooked = lambda: [n for n, m in model.named_modules() if m._forward_hooks]  # noqa: E731
    assert hooked() == []
    slot.load(layout.pack(ADAPTERS["attn-r2"], dtype=torch.float32))
    assert hooked() == ["to_q", "to_k"]
    slot.load(layout.pack(ADAPTERS["ff-r1"], dtype=torch.float32))
    assert hooked() == ["to_q", "to_k", "ff"]  # kept: to_q/to_k now pass the base through
    x = torch.randn(1, 3, 5, 5)
    h = model.conv1(x).flatten(2).transpose(1, 2)
    assert torch.equal(model.to_q(h), functional.linear(h, model.to_q.weight, model.to_q.bias))
    slot.deactivate()
    assert "conv1" not in hooked()


def test_pack_refuses_rank_above_slot_wrong_shapes_and_modules_outside() -> None:
    _, layout, _ = make(rank=2)
    with pytest.raises(ValueError, match="rank 3 is above the slot rank 2"):
        layout.pack({"unet.to_q": lora((3, 4), (8, 3), 1.0)}, dtype=torch.float32)
    with pytest.raises(ValueError, match="in/out features"):
        layout.pack({"unet.to_q": lora((2, 5), (8, 2), 1.0)}, dtype=torch.float32)
    with pytest.raises(KeyError):
        layout.pack({"unet.other": lora((2, 4), (8, 2), 1.0)}, dtype=torch.float32)


def test_one_packed_value_loads_into_two_slots() -> None:
    """The copy plan cached on a value belongs to the slot that built it."""
    _, layout, first = make()
    _, _, second = make()
    packed = layout.pack(ADAPTERS["all-r4"], dtype=torch.float32)
    first.load(packed)
    second.load(packed)
    assert torch.equal(first.buffer, second.buffer) and first.buffer.abs().sum() > 0


def test_a_full_rank_adapter_on_consecutive_modules_is_copied_in_one_run() -> None:
    """At the slot's rank, A and Bt of a module and the next module are back to back in both
    buffers: the switch plan merges them (and the permutation test above checks the result)."""
    from loraplex.worker.slot import _copy_runs

    _, layout, _ = make()
    full = layout.pack(ADAPTERS["all-r4"], dtype=torch.float32)  # conv1, to_q | to_out.0, ff
    assert len(_copy_runs(full, layout)) == 2  # to_k, untouched, splits it
    assert sum(n for *_, n in _copy_runs(full, layout)) == full.flat.numel()
    low = layout.pack(ADAPTERS["attn-r2"], dtype=torch.float32)  # rank 2 < 4: gaps in the slot
    assert len(_copy_runs(low, layout)) == 2 * len(low.entries)
