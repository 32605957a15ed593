"""Which generation requests may share one pipeline call (pure: no torch, no I/O).

Two requests batch when their adapter and every call parameter that shapes the pipeline call
are equal once the worker's defaults are filled in: width, height, steps, guidance, and whether
a negative prompt is given (SDXL encodes ``None`` as zeros and ``""`` as the empty prompt, so
the two must not share a call; within a batch the negative prompts are a list, one per prompt).
Prompts, negative prompt texts and seeds may differ: each request gets its own generator, so
its image is the one it would get alone. The output format does not matter (each image is
encoded on its own). See docs/batching.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from loraplex.worker.cancel import CancelToken

from loraplex.shared.contract import AdapterRef, GenerateRequest


@dataclass(frozen=True)
class CallDefaults:
    """What a request that names no width/height/steps/guidance gets (settings, else the
    base's native size)."""

    width: int
    height: int
    steps: int
    guidance: float


@dataclass(frozen=True)
class BatchKey:
    adapter: AdapterRef | None
    width: int
    height: int
    steps: int
    guidance: float
    negative: bool  # a negative prompt is given (even "")


def batch_key(request: GenerateRequest, defaults: CallDefaults) -> BatchKey:
    """The key that must be equal for two requests to share a pipeline call."""
    guidance = request.guidance_scale
    return BatchKey(
        adapter=request.adapter,
        width=request.width or defaults.width,
        height=request.height or defaults.height,
        steps=request.num_inference_steps or defaults.steps,
        guidance=defaults.guidance if guidance is None else guidance,
        negative=request.negative_prompt is not None,
    )


@dataclass(frozen=True)
class BatchItem:
    """One request of a batch, with its own caller token and stop signal."""

    request: GenerateRequest
    token: str | None = None
    cancel: CancelToken | None = None
