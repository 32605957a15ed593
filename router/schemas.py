"""Bodies of the router's public API: the Hugging Face Inference API, OpenAI images, /v1/models.

Validation bounds come from :class:`loraplex.shared.contract.Limits`, the one place they live.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loraplex.shared.contract import GenerationParameters, ImageFormat, Limits, Side

Prompt = Annotated[str, Field(min_length=1, max_length=Limits.MAX_PROMPT_CHARS)]


class HFOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")  # use_cache etc.: accepted, meaningless here

    wait_for_model: bool = True


class HFTargetSize(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: Side
    height: Side


class HFParameters(GenerationParameters):
    """The Hugging Face text-to-image task's ``parameters``: the shared ones, plus the task
    spec's ``target_size`` (``{"width", "height"}``, the same as ``width``/``height``, which
    ``huggingface_hub`` sends instead) and ``scheduler``, which is refused by name: a pool runs
    its base's own scheduler, and a per-request swap would change the images of every request
    batched or queued with it."""

    target_size: HFTargetSize | None = None
    scheduler: str | None = None

    @field_validator("scheduler")
    @classmethod
    def _no_scheduler_override(cls, value: str | None) -> None:
        if value is not None:
            raise ValueError(
                f"per-request schedulers ({value!r}) are not supported: each pool runs its base "
                "model's own scheduler; leave scheduler out"
            )

    @model_validator(mode="before")
    @classmethod
    def _size_from_target_size(cls, data: object) -> object:
        if not isinstance(data, dict) or not isinstance(data.get("target_size"), dict):
            return data
        target = data["target_size"]
        merged = dict(data)
        for side in ("width", "height"):
            given, wanted = merged.get(side), target.get(side)
            if given is not None and wanted is not None and given != wanted:
                raise ValueError(
                    f"target_size.{side} ({wanted}) and {side} ({given}) differ; give one of them"
                )
            if given is None:
                merged[side] = wanted
        return merged

    def generation(self) -> GenerationParameters:
        """The parameters the worker takes (``target_size`` is already in width/height)."""
        return GenerationParameters.of(self)


class HFTextToImageRequest(BaseModel):
    """Hugging Face Inference API text-to-image body."""

    model_config = ConfigDict(extra="forbid")

    inputs: Prompt
    parameters: HFParameters = Field(default_factory=HFParameters)
    options: HFOptions = Field(default_factory=HFOptions)


class OpenAIImageRequest(BaseModel):
    """OpenAI ``images.generate`` body; sampling extras (seed, steps…) via ``extra_body``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    prompt: Prompt
    n: int = Field(1, ge=1, le=16)
    size: str | None = Field(None, pattern=r"^(auto|\d{2,4}x\d{2,4})$")
    response_format: Literal["b64_json", "url"] | None = None
    output_format: ImageFormat | None = None
    quality: str | None = Field(None, max_length=20)  # accepted; the worker has one quality
    style: str | None = Field(None, max_length=20)
    user: str | None = Field(None, max_length=200)
    negative_prompt: str | None = Field(None, max_length=Limits.MAX_PROMPT_CHARS)
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = Field(None, ge=0, le=Limits.MAX_SEED - 16)

    def parameters(self, index: int) -> GenerationParameters:
        width = height = None
        if self.size and self.size != "auto":
            width, height = (int(side) for side in self.size.split("x"))
        return GenerationParameters(
            negative_prompt=self.negative_prompt,
            width=width,
            height=height,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            seed=None if self.seed is None else self.seed + index,
        )


class OpenAIError(BaseModel):
    """OpenAI's error object: ``message`` is what went wrong and what to do."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    """An error answer of the OpenAI route (``router/openai_errors.py``), which its SDK shows."""

    error: OpenAIError
    estimated_time: float | None = None


class OpenAIImage(BaseModel):
    b64_json: str | None = None
    url: str | None = None


class OpenAIImagesResponse(BaseModel):
    created: int
    data: list[OpenAIImage]
    output_format: ImageFormat


class ModelCardOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "loraplex"
    replicas: int
    ready_replicas: int
    pending: int
    adapters: list[str] = Field(
        default_factory=list,
        description="Public LoRA ids of this base the router served lately (and, in embedded "
        "mode, the models folder's open LoRAs), newest first; at most the router's "
        "recent_adapters. Never a gated or private repo. Any other LoRA id works too.",
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCardOut]
