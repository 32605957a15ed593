"""The LoRA slot on a toy attention module: views share one buffer, math matches peft's LoRA."""

from __future__ import annotations

import pytest
import torch
from loraplex.worker.slot import LoraSlot, SlotLayout
from torch import nn


class Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.to_q = nn.Linear(8, 8)
        self.to_k = nn.Linear(6, 8)
        self.to_out = nn.ModuleList([nn.Linear(8, 4)])
        self.other = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        return self.to_out[0](self.to_q(x) + self.to_k(ctx).mean(dim=1, keepdim=True))


@pytest.fixture
def model() -> Attn:
    torch.manual_seed(0)
    return Attn()


def test_layout_finds_targets_and_packs_views_into_one_buffer(model: Attn) -> None:
    layout = SlotLayout.for_model(model, rank=4)
    assert [m.name for m in layout.modules] == ["to_q", "to_k", "to_out.0"]
    assert layout.numel == 4 * (8 + 8) + 4 * (6 + 8) + 4 * (8 + 4) + 3
    flat = torch.zeros(layout.numel)
    for a, b in layout.views(flat):
        assert a.data_ptr() >= flat.data_ptr() and b.untyped_storage() is not None
        assert a.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()


def test_slot_output_equals_explicit_lora_and_base_is_bit_exact_when_inactive(
    model: Attn,
) -> None:
    x, ctx = torch.randn(2, 5, 8), torch.randn(2, 3, 6)
    pristine = model(x, ctx)
    layout = SlotLayout.for_model(model, rank=4)
    slot = LoraSlot(model, layout, dtype=torch.float32)
    assert torch.equal(model(x, ctx), pristine)
    a, b = torch.randn(2, 8), torch.randn(8, 2)  # rank 2 < slot rank 4: zero padded
    slot.load(layout.pack({"to_q": (a, b, 0.5)}, dtype=torch.float32))
    q = model.to_q(x)
    expected_q = nn.functional.linear(x, model.to_q.weight, model.to_q.bias) + 0.5 * (x @ a.T @ b.T)
    assert torch.allclose(q, expected_q, atol=1e-6)
    assert not torch.equal(model(x, ctx), pristine)
    slot.deactivate()
    assert torch.equal(model(x, ctx), pristine)


def test_pack_refuses_rank_above_slot_and_wrong_shapes(model: Attn) -> None:
    layout = SlotLayout.for_model(model, rank=2)
    with pytest.raises(ValueError, match="rank 3 is above the slot rank 2"):
        layout.pack({"to_q": (torch.zeros(3, 8), torch.zeros(8, 3), 1.0)}, dtype=torch.float32)
    with pytest.raises(ValueError, match="in/out features"):
        layout.pack({"to_k": (torch.zeros(2, 8), torch.zeros(8, 2), 1.0)}, dtype=torch.float32)
    with pytest.raises(KeyError):
        layout.pack({"other": (torch.zeros(2, 8), torch.zeros(8, 2), 1.0)}, dtype=torch.float32)
