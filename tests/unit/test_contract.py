"""The worker contract's validation bounds and shared helpers."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from loraplex.shared.contract import AdapterRef, GenerateRequest, ImageFormat, Limits, WorkerState
from loraplex.shared.errors import BadRequest
from loraplex.shared.ids import validate_model_id, validate_revision


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("width", 65),  # not a multiple of 8
        ("width", Limits.MAX_SIDE + 8),
        ("num_inference_steps", 0),
        ("num_inference_steps", Limits.MAX_STEPS + 1),
        ("guidance_scale", -1.0),
        ("seed", -1),
        ("prompt", "x" * (Limits.MAX_PROMPT_CHARS + 1)),
        ("prompt", ""),
        ("output_format", "gif"),
    ],
)
def test_out_of_range_parameters_name_the_field(field: str, value: object) -> None:
    body = {"prompt": "a cat", field: value}
    with pytest.raises(ValidationError) as info:
        GenerateRequest.model_validate(body)
    assert field in {str(loc) for err in info.value.errors() for loc in err["loc"]}


def test_a_guidance_that_is_not_a_finite_number_says_so() -> None:
    """JSON parsers accept NaN and Infinity; the answer must not talk of the 0–50 range."""
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValidationError, match="finite number"):
            GenerateRequest(prompt="a", guidance_scale=value)


def test_pixel_budget_is_checked_on_the_product() -> None:
    side = Limits.MAX_SIDE
    with pytest.raises(ValidationError, match="budget"):
        GenerateRequest(prompt="a", width=side, height=side)
    ok = GenerateRequest(prompt="a", width=1024, height=1024)
    assert ok.parameters().width == 1024


def test_unknown_parameters_are_refused() -> None:
    with pytest.raises(ValidationError):
        GenerateRequest.model_validate({"prompt": "a", "strength": 0.5})


@pytest.mark.parametrize(
    "bad", ["../etc", "http://evil/x", "/abs/path", "a/b/c", "a..b", "", "x" * 97, "a\\b"]
)
def test_bad_model_ids_are_refused_before_io(bad: str) -> None:
    with pytest.raises(BadRequest):
        validate_model_id(bad)
    with pytest.raises(ValidationError):
        AdapterRef(repo_id=bad)


@pytest.mark.parametrize("good", ["org/name", "name", "Org-1/my_model.v2"])
def test_good_model_ids_pass(good: str) -> None:
    assert validate_model_id(good) == good


def test_revisions() -> None:
    assert validate_revision("a" * 40) == "a" * 40
    assert validate_revision("refs/pr/1") == "refs/pr/1"
    for bad in ["../main", "/main", "", "a b", "main\n", "x//y", "x/./y", "main/", "a" * 40 + "\n"]:
        with pytest.raises(BadRequest):
            validate_revision(bad)


def test_adapter_ref_is_a_hashable_cache_key() -> None:
    a = AdapterRef(repo_id="o/n", revision="abc")
    assert {a: 1}[AdapterRef(repo_id="o/n", revision="abc")] == 1
    assert str(a) == "o/n@abc"


@pytest.mark.parametrize(
    ("accept", "fmt"),
    [
        (None, ImageFormat.PNG),
        ("*/*", ImageFormat.PNG),
        ("image/jpeg", ImageFormat.JPEG),
        ("text/html, image/webp;q=0.9", ImageFormat.WEBP),
        ("image/jpg", ImageFormat.JPEG),
    ],
)
def test_format_from_accept(accept: str | None, fmt: ImageFormat) -> None:
    assert ImageFormat.from_accept(accept) is fmt


def test_worker_state_round_trips() -> None:
    state = WorkerState(
        base_model="o/base",
        ready=True,
        queue_depth=0,
        queue_capacity=8,
        free_slots=4,
        resident_adapters=["o/a@c1"],
    )
    assert WorkerState.model_validate_json(state.model_dump_json()) == state
    with pytest.raises(ValidationError):
        WorkerState(base_model="o/b", ready=True, queue_depth=-1, queue_capacity=1, free_slots=0)
