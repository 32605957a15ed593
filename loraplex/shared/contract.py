"""The worker's HTTP contract, shared by router and worker.

Every validation bound for a generation request lives in :class:`Limits`, so the router can
reject bad input before it reaches a GPU and the worker re-checks with the same numbers.

Endpoints (worker):

* ``POST /v1/generate`` — body :class:`GenerateRequest`, answers image bytes with the
  ``X-Loraplex-*`` timing headers below.
* ``GET /v1/state`` — :class:`WorkerState`, the router's affinity input.
* ``GET /healthz`` (liveness), ``GET /readyz`` (200 only once the base is warm), ``GET /metrics``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loraplex.shared.ids import validate_model_id, validate_revision


class Limits:
    """Bounds on a generation request: the one place they are defined.

    Pixel budget: 1024×1024 — SDXL's native size; larger images belong to a tiling workflow.
    Steps: 1–150 — diffusers' schedulers accept more but nobody gains past ~100.
    Prompt: 2,000 characters — CLIP truncates at 77 tokens anyway; the bound stops abuse.
    """

    MIN_SIDE: Final = 64
    MAX_SIDE: Final = 2048
    SIDE_MULTIPLE: Final = 8
    MAX_PIXELS: Final = 1024 * 1024
    MIN_STEPS: Final = 1
    MAX_STEPS: Final = 150
    MAX_GUIDANCE: Final = 50.0
    MAX_PROMPT_CHARS: Final = 2000
    MAX_SEED: Final = 2**63 - 1


class Headers:
    """Header names shared by router and worker (lower-case; HTTP headers are case-blind)."""

    SWITCH_TIER: Final = "x-loraplex-switch-tier"  # a SwitchTier value
    SWITCH_MS: Final = "x-loraplex-switch-ms"
    COMPUTE_MS: Final = "x-loraplex-compute-ms"
    QUEUE_MS: Final = "x-loraplex-queue-ms"
    QUEUE_DEPTH: Final = "x-loraplex-queue-depth"  # after this request left the queue
    ACTIVE_ADAPTER: Final = "x-loraplex-active-adapter"  # "<repo>@<commit>" or empty
    WORKER: Final = "x-loraplex-worker"  # which replica answered (router adds it)
    ADAPTER_COMMIT: Final = "x-loraplex-adapter-commit"
    SEED_LORA: Final = "lora"  # the seed's header: adapter id on a request for a base model
    WAIT_FOR_MODEL: Final = "x-wait-for-model"
    RETRY_AFTER: Final = "retry-after"


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None for any other value."""
    scheme, _, token = (authorization or "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


class SwitchTier(StrEnum):
    """Where an adapter came from when the worker made it active."""

    NONE = "none"  # base request, no adapter
    ACTIVE = "active"  # already in the slot
    RESIDENT = "resident"  # device-resident cache
    HOST = "host"  # host-RAM cache
    DISK = "disk"  # HF cache on disk
    HUB = "hub"  # downloaded now
    SLOW = "slow"  # did not fit the slot: diffusers load/unload path


class ImageFormat(StrEnum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"

    @property
    def media_type(self) -> str:
        return f"image/{self.value}"

    @classmethod
    def from_accept(cls, accept: str | None) -> ImageFormat:
        """Pick the format from an ``Accept`` header; PNG when absent or ``*/*``."""
        for part in (accept or "").split(","):
            media = part.split(";")[0].strip().lower()
            for fmt in cls:
                if media == fmt.media_type or (fmt is cls.JPEG and media == "image/jpg"):
                    return fmt
        return cls.PNG


class AdapterRef(BaseModel):
    """An adapter pinned to a revision: the worker's cache key is (repo_id, revision)."""

    model_config = ConfigDict(frozen=True)

    repo_id: str
    revision: str = "main"

    @field_validator("repo_id")
    @classmethod
    def _valid_repo_id(cls, value: str) -> str:
        return validate_model_id(value)

    @field_validator("revision")
    @classmethod
    def _valid_revision(cls, value: str) -> str:
        return validate_revision(value)

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}"


Side = Annotated[
    int, Field(ge=Limits.MIN_SIDE, le=Limits.MAX_SIDE, multiple_of=Limits.SIDE_MULTIPLE)
]


class GenerationParameters(BaseModel):
    """Sampling parameters, as in the Hugging Face Inference API's ``parameters``."""

    model_config = ConfigDict(extra="forbid")

    negative_prompt: str | None = Field(default=None, max_length=Limits.MAX_PROMPT_CHARS)
    width: Side | None = None
    height: Side | None = None
    num_inference_steps: int | None = Field(default=None, ge=Limits.MIN_STEPS, le=Limits.MAX_STEPS)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=Limits.MAX_GUIDANCE)
    seed: int | None = Field(default=None, ge=0, le=Limits.MAX_SEED)

    @model_validator(mode="after")
    def _within_pixel_budget(self) -> GenerationParameters:
        if self.width and self.height and self.width * self.height > Limits.MAX_PIXELS:
            raise ValueError(
                f"width×height = {self.width * self.height} pixels is over the budget of "
                f"{Limits.MAX_PIXELS}; ask for a smaller image"
            )
        return self


class GenerateRequest(GenerationParameters):
    """Body of the worker's ``POST /v1/generate``."""

    prompt: str = Field(min_length=1, max_length=Limits.MAX_PROMPT_CHARS)
    adapter: AdapterRef | None = None
    output_format: ImageFormat = ImageFormat.PNG

    def parameters(self) -> GenerationParameters:
        return GenerationParameters.model_validate(
            self.model_dump(include=set(GenerationParameters.model_fields))
        )


class WorkerState(BaseModel):
    """Body of the worker's ``GET /v1/state``: what the router's affinity picking reads."""

    base_model: str
    base_revision: str | None = None
    ready: bool
    queue_depth: int = Field(ge=0)
    queue_capacity: int = Field(ge=0)
    in_flight: int = Field(default=0, ge=0)
    active_adapter: str | None = None  # "<repo>@<commit>"
    resident_adapters: list[str] = Field(default_factory=list)
    host_cached_adapters: list[str] = Field(default_factory=list)
    free_slots: int = Field(ge=0)  # resident cache entries still free


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": "<what went wrong and what to do>"}``."""

    error: str
    estimated_time: float | None = None
