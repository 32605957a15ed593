"""The Hugging Face text-to-image ``parameters`` the router takes (router/schemas.py)."""

from __future__ import annotations

import pytest
from loraplex.router.schemas import HFTextToImageRequest
from pydantic import ValidationError


def parameters(**given: object) -> HFTextToImageRequest:
    return HFTextToImageRequest.model_validate({"inputs": "a fox", "parameters": given})


def test_target_size_is_width_and_height() -> None:
    sized = parameters(target_size={"width": 64, "height": 128}, seed=3).parameters.generation()
    assert (sized.width, sized.height, sized.seed) == (64, 128, 3)
    same = parameters(target_size={"width": 64, "height": 128}, width=64).parameters.generation()
    assert (same.width, same.height) == (64, 128)
    assert "target_size" not in sized.model_dump()  # the worker's contract has no such field


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({"target_size": {"width": 64, "height": 128}, "width": 72}, "differ; give one of them"),
        ({"target_size": {"width": 65, "height": 128}}, "multiple of 8"),
        ({"target_size": {"width": 2048, "height": 2048}}, "budget"),
        ({"scheduler": "DPMSolverMultistepScheduler"}, "per-request schedulers"),
    ],
)
def test_what_cannot_be_served_says_why(given: dict[str, object], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        parameters(**given)
