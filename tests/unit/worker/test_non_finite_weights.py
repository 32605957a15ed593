"""worker/convert.py's refusal of adapters whose weights are not all finite (the whole path,
a real diverged LoRA through the worker, is in tests/component/worker/test_worker_api.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from loraplex.worker.convert import _check_finite, _has_non_finite

from loraplex.shared.errors import NotServable


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_one_bad_element_is_found_in_every_float_dtype(dtype: torch.dtype, bad: float) -> None:
    tensor = torch.randn(64, 8).to(dtype)
    assert not _has_non_finite(tensor)
    tensor[17, 3] = bad
    assert _has_non_finite(tensor)


def test_huge_finite_weights_that_overflow_the_sum_are_not_refused() -> None:
    assert not _has_non_finite(torch.full((4,), 3e38))
    assert _has_non_finite(torch.tensor([3e38, float("inf"), -float("inf")]))


def test_the_refusal_names_the_file_and_the_tensor() -> None:
    state = {
        "unet.a.lora_A.weight": torch.ones(2),
        "unet.a.lora_B.weight": torch.tensor([0.0, float("nan")]),
    }
    with pytest.raises(NotServable, match=r"x.safetensors: unet.a.lora_B.weight holds NaN"):
        _check_finite(Path("x.safetensors"), state)
    _check_finite(Path("x.safetensors"), {"unet.step": torch.tensor([1, 2])})  # ints: skipped
