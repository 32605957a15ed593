"""The worker's HTTP contract, shared by router and worker.

Every validation bound for a generation request lives in :class:`Limits`, so the router can
reject bad input before it reaches a GPU and the worker re-checks with the same numbers.

Endpoints (worker):

* ``POST /v1/generate`` — body :class:`GenerateRequest`, answers image bytes with the
  ``X-Loraplex-*`` timing headers below.
* ``GET /v1/state`` — :class:`WorkerState`, the router's affinity input.

Both are for the router only: it sends the worker secret in :attr:`Headers.WORKER_SECRET`
(missing: 401, wrong: 403; see ``loraplex.worker.auth``). On a separate port (the worker's
``metrics_port``), open to probes and scrapers and without the secret:

* ``GET /healthz`` (liveness), ``GET /readyz`` (200 only once the base is warm; the body is
  :class:`Readiness` either way), ``GET /metrics``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loraplex.shared.errors import BadRequest
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
    MAX_PIXELS_TEXT: Final = "e.g. 1024×1024 or 1280×768"
    MIN_STEPS: Final = 1
    MAX_STEPS: Final = 150
    MAX_GUIDANCE: Final = 50.0
    MAX_PROMPT_CHARS: Final = 2000
    MAX_SEED: Final = 2**63 - 1


class Headers:
    """Header names shared by router and worker (lower-case; HTTP headers are case-blind)."""

    SWITCH_TIER: Final = "x-loraplex-switch-tier"  # a SwitchTier value
    SWITCH_MS: Final = "x-loraplex-switch-ms"
    SLOW_REASON: Final = "x-loraplex-slow-reason"  # why a `slow` switch did not fit the slot
    COMPUTE_MS: Final = "x-loraplex-compute-ms"
    QUEUE_MS: Final = "x-loraplex-queue-ms"
    QUEUE_DEPTH: Final = "x-loraplex-queue-depth"  # after this request left the queue
    ACTIVE_ADAPTER: Final = "x-loraplex-active-adapter"  # "<repo>@<commit>" or empty
    # Which replica answered: the worker address inside the router; to clients only as an
    # opaque id, and only with the router's debug_replica_header setting.
    WORKER: Final = "x-loraplex-worker"
    ADAPTER_COMMIT: Final = "x-loraplex-adapter-commit"
    BATCH_SIZE: Final = "x-loraplex-batch-size"  # requests that shared this one's pipeline call
    # Router → worker: milliseconds left of the request's deadline when it was sent (a relative
    # budget: hosts share no clock). The worker drops or stops the job when it runs out (504).
    DEADLINE_MS: Final = "x-loraplex-deadline-ms"
    # Router → worker: "spill" when the adapter was sent past its home replicas (busy); the
    # worker then keeps a fresh load on probation in its host tier (docs/placement.md).
    PLACEMENT: Final = "x-loraplex-placement"
    SEED_LORA: Final = "lora"  # the seed's header: adapter id on a request for a base model
    WAIT_FOR_MODEL: Final = "x-wait-for-model"
    RETRY_AFTER: Final = "retry-after"
    # The shared router↔worker secret on /v1/generate and /v1/state (never logged).
    WORKER_SECRET: Final = "x-loraplex-worker-secret"


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None for any other value.

    Raises :class:`BadRequest` when the token is not visible ASCII (``!``..``~``): the HTTP
    clients that pass it on to the Hub (huggingface_hub's, aiohttp) cannot encode anything
    else and would fail deep inside a Hub call (a 500). The message never contains the token."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    token = token.strip()
    if not all("!" <= char <= "~" for char in token):
        raise BadRequest(
            "the token in 'Authorization: Bearer <token>' must be visible ASCII characters "
            "(a Hub token looks like hf_…); check for pasted quotes, spaces or non-Latin letters"
        )
    return token


def check_pixel_budget(width: int, height: int, defaults: str = "") -> None:
    """Raise :class:`BadRequest` when ``width``×``height`` is over :attr:`Limits.MAX_PIXELS`.

    ``defaults`` says which sides were not in the request but filled by the server (e.g.
    "height 1024 is this worker's default"), so the message explains a side never sent."""
    if width * height <= Limits.MAX_PIXELS:
        return
    filled = f" ({defaults})" if defaults else ""
    raise BadRequest(
        f"width×height = {width}×{height} = {width * height} pixels{filled} is over the budget "
        f"of {Limits.MAX_PIXELS} pixels ({Limits.MAX_PIXELS_TEXT}); ask for a smaller image"
    )


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
    guidance_scale: float | None = Field(
        default=None, ge=0.0, le=Limits.MAX_GUIDANCE, allow_inf_nan=False
    )
    seed: int | None = Field(default=None, ge=0, le=Limits.MAX_SEED)

    @classmethod
    def of(cls, body: GenerationParameters) -> GenerationParameters:
        """Just the sampling parameters of a body that extends them (its other fields left)."""
        return cls.model_validate(body.model_dump(include=set(cls.model_fields)))

    @model_validator(mode="after")
    def _within_pixel_budget(self) -> GenerationParameters:
        # With one side missing the budget depends on the pool's default for the other: the
        # worker checks again after filling it (worker/pipeline.py), the router cannot.
        if self.width and self.height:
            check_pixel_budget(self.width, self.height)
        return self


class GenerateRequest(GenerationParameters):
    """Body of the worker's ``POST /v1/generate``."""

    prompt: str = Field(min_length=1, max_length=Limits.MAX_PROMPT_CHARS)
    adapter: AdapterRef | None = None
    output_format: ImageFormat = ImageFormat.PNG

    def parameters(self) -> GenerationParameters:
        return GenerationParameters.of(self)


class WorkerState(BaseModel):
    """Body of the worker's ``GET /v1/state``: what the router's affinity picking reads."""

    base_model: str
    base_revision: str | None = None
    ready: bool
    queue_depth: int = Field(ge=0)
    queue_capacity: int = Field(ge=0)
    in_flight: int = Field(default=0, ge=0)
    # Seconds the job (batch) on the device has been running; 0 when idle. The router's
    # pickers tell equal queues apart by it: the longer-running one frees first.
    running_seconds: float = Field(default=0.0, ge=0)
    active_adapter: str | None = None  # "<repo>@<commit>"
    resident_adapters: list[str] = Field(default_factory=list)
    host_cached_adapters: list[str] = Field(default_factory=list)
    free_slots: int = Field(ge=0)  # resident cache entries still free
    # Fleet-wide placement (docs/placement.md); defaults so older workers still parse.
    # Adapter commits in the worker's disk cache, most recently used first (bounded).
    disk_cached_adapters: list[str] = Field(default_factory=list)
    # Measured seconds to make an adapter active, by the tier it came from (resident, host,
    # disk, hub); a tier not measured yet is absent.
    load_seconds: dict[str, float] = Field(default_factory=dict)
    generate_seconds: float | None = Field(default=None, ge=0)  # measured, per image
    # Why the base cannot be served (the worker's load failed; it exits soon after), else None.
    # The router answers 503 "failing" with it instead of holding for a replica that never loads.
    load_error: str | None = None


class LoadState(StrEnum):
    """Where a worker is on its way to serving: forward only; ``failed`` ends it (the pod
    restarts through its liveness probe, ``loraplex up`` stops)."""

    STARTING = "starting"  # the process is up, the load has not begun
    DOWNLOADING = "downloading"  # the base's files come from the Hub into the HF cache
    LOADING = "loading"  # the pipeline is read from the cache onto the device
    WARMING_UP = "warming_up"  # one small generation, so the first request is not the slow one
    READY = "ready"
    FAILED = "failed"


class Readiness(BaseModel):
    """Body of the worker's ``GET /readyz`` (metrics port): 200 when ``state`` is ready, else
    503. Byte counts are of the base's files (those already in the cache count as
    downloaded); ``total_bytes`` is 0 until the file sizes are known. ``reason`` says why it
    failed. A 503 also carries ``error`` (the error body every 503 has)."""

    state: LoadState
    downloaded_bytes: int = Field(default=0, ge=0)
    total_bytes: int = Field(default=0, ge=0)
    reason: str | None = None


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": "<what went wrong and what to do>"}``."""

    error: str
    estimated_time: float | None = None
