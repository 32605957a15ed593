"""One pipeline call for one or more requests of the same batch key (device thread).

A batch is ONE diffusers call with lists: prompts, negative prompts (when given) and one
``torch.Generator`` per request seeded with its own seed. diffusers' ``randn_tensor`` draws each
sample's latents from its own generator (shape ``(1, …)``), and the schedulers that add noise
per step do the same, so each request's image is the one it would get alone, up to the float
rounding of a larger matmul (≤ 1e-4 in fp32, tested). A batch of one passes a single generator,
exactly as before batching.

Cancellation (see ``pipeline.py``): the step callback counts steps on every request's token and
raises — leaving the denoising loop at once — only when EVERY request of the call is cancelled.
A request cancelled while others go on is reported in :attr:`PipeRun.reasons` (as of the last
step), its image is decoded with the others and dropped by the caller.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from loraplex.worker.batching import BatchItem, BatchKey
from loraplex.worker.families import encode
from loraplex.worker.queue import Cancelled, CancelReason, CancelToken
from loraplex.worker.settings import WorkerSettings

from loraplex.shared.contract import GenerateRequest, Limits
from loraplex.shared.errors import LoraplexError

if TYPE_CHECKING:
    from loraplex.worker.adapters import AdapterKey
    from loraplex.worker.pipeline import Engine
    from loraplex.worker.switch import Switch


@dataclass(frozen=True)
class Generated:
    """One request's answer. In a batch every member reports the shared switch and the shared
    pipeline call's time (what it waited for) and ``batch_size``, the requests in that call."""

    image: bytes
    media_type: str
    switch: Switch
    compute_seconds: float
    seed: int
    batch_size: int = 1


class Interrupted(Exception):
    """Raised by the step callback to leave the pipeline's denoising loop at once."""


class StepWatch:
    """diffusers' ``callback_on_step_end`` for a batch: counts the step on every token and
    records who is cancelled; raises :class:`Interrupted` once all are."""

    def __init__(self, cancels: Sequence[CancelToken | None]) -> None:
        self.cancels = cancels
        self.reasons: list[CancelReason | None] = [None] * len(cancels)
        self.steps_done = 0

    def __call__(
        self, pipe: object, step: int, timestep: object, tensors: dict[str, Any]
    ) -> dict[str, Any]:
        self.steps_done = step + 1
        for i, cancel in enumerate(self.cancels):
            if cancel is not None:
                cancel.steps_done = step + 1
                self.reasons[i] = cancel.check()
        if all(reason is not None for reason in self.reasons):
            raise Interrupted
        return {}  # replace no tensor: the pipeline keeps its own latents


@dataclass(frozen=True)
class PipeRun:
    seeds: list[int]
    images: Any  # indexable per request; None: every request was cancelled, the loop was left
    reasons: list[CancelReason | None]  # per request: cancelled as of the last step seen
    steps: int
    steps_done: int


def call_pipeline(
    pipe: Callable[..., Any],
    requests: Sequence[GenerateRequest],
    cancels: Sequence[CancelToken | None],
    *,
    settings: WorkerSettings,
    call_parameters: frozenset[str],
    device: torch.device,
    output_type: str,
) -> PipeRun:
    """Run ``requests`` (one batch key, see ``batching.py``) through ``pipe`` as it is now."""
    first = requests[0]
    seeds = [r.seed if r.seed is not None else random.randrange(Limits.MAX_SEED) for r in requests]
    generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
    steps = first.num_inference_steps or settings.num_inference_steps
    guidance = first.guidance_scale
    watch = StepWatch(cancels) if any(c is not None for c in cancels) else None
    single = len(requests) == 1
    kwargs: dict[str, Any] = {
        "prompt": first.prompt if single else [r.prompt for r in requests],
        "width": first.width or settings.width,
        "height": first.height or settings.height,
        "num_inference_steps": steps,
        "guidance_scale": settings.guidance_scale if guidance is None else guidance,
        "generator": generators[0] if single else generators,
        "output_type": output_type,
        "callback_on_step_end": watch,
    }
    if first.negative_prompt is not None and "negative_prompt" in call_parameters:
        negatives = [r.negative_prompt or "" for r in requests]
        kwargs["negative_prompt"] = negatives[0] if single else negatives
    try:
        images = pipe(**kwargs).images  # as the pipeline gives them: list, array or tensor
    except Interrupted:
        images = None  # outside the handler: no traceback pins the run's tensors
    reasons = watch.reasons if watch is not None else [None] * len(requests)
    done = watch.steps_done if watch is not None else steps
    return PipeRun(seeds, images, list(reasons), steps, done)


def answers(
    run: PipeRun, requests: Sequence[GenerateRequest], switch: Switch, compute_s: float
) -> list[Generated | Cancelled]:
    """Each request's outcome of ``run``: its encoded image, or Cancelled when its token was
    set by the last step (a cancelled member's image is decoded with the others, then dropped).
    """
    size = len(requests)
    outcomes: list[Generated | Cancelled] = []
    for i, request in enumerate(requests):
        reason = run.reasons[i]
        if run.images is None or reason is not None:
            assert reason is not None  # images are None only when every request is cancelled
            outcomes.append(cancelled(run, reason, size))
            continue
        image = encode(run.images[i], request.output_format)
        media = request.output_format.media_type
        outcomes.append(Generated(image, media, switch, compute_s, run.seeds[i], size))
    return outcomes


def cancelled(run: PipeRun, reason: CancelReason, size: int = 1) -> Cancelled:
    if run.images is not None:
        return Cancelled.in_batch(reason, size)
    detail = f"stopped after {run.steps_done} of {run.steps} denoising steps"
    return Cancelled(reason, started=True, detail=detail)


def generate_batch(
    engine: Engine, items: Sequence[BatchItem], *, spill: bool, upcoming: int
) -> list[Generated | Exception]:
    """Device thread: ``items`` through ``engine``, one switch and one pipeline call per
    (adapter commit, batch key). Each item resolves the adapter with its own token before it
    joins, so a token that may not read it (401/403/404), a cancelled or an oversized request
    fails alone; a failed switch fails its call's items. When no call ran and an item failed,
    the slot is turned off (the next request starts from the base, as after a lone failure)."""
    outcomes: list[Generated | Exception | None] = [None] * len(items)
    calls: dict[tuple[AdapterKey | None, BatchKey], list[int]] = {}
    ran = False
    try:
        for i, item in enumerate(items):
            try:
                calls.setdefault(_admit(engine, item), []).append(i)
            except (Cancelled, LoraplexError) as exc:
                outcomes[i] = exc
        for (key, shape), members in calls.items():
            batch = [items[i] for i in members]
            results, switched = _run_call(engine, key, shape, batch, spill, upcoming)
            ran = ran or switched
            for i, result in zip(members, results, strict=True):
                outcomes[i] = result
    except BaseException:
        engine.switch_to(None)  # after any failed load the next request starts from the base
        raise
    done = [outcome for outcome in outcomes if outcome is not None]
    assert len(done) == len(items)
    if not ran and any(not isinstance(outcome, Cancelled) for outcome in done):
        engine.switch_to(None)
    return done


def _admit(engine: Engine, item: BatchItem) -> tuple[AdapterKey | None, BatchKey]:
    if item.cancel is not None and (reason := item.cancel.check()) is not None:
        raise Cancelled(reason, started=True, detail="before it started")
    engine.check_size(item.request)  # before the switch: a refused request downloads nothing
    ref = item.request.adapter
    key = None if ref is None else engine.fetcher.resolve(ref, item.token)
    return key, engine.batch_key(item.request)


def _run_call(
    engine: Engine,
    key: AdapterKey | None,
    shape: BatchKey,
    items: Sequence[BatchItem],
    spill: bool,
    upcoming: int,
) -> tuple[Sequence[Generated | Exception], bool]:
    """One switch to ``key`` (every item resolved it with its own token in :func:`_admit`;
    a load uses the first item's) and one pipeline call for ``items``; False when the switch
    failed (every item gets its error)."""
    first = items[0]
    try:
        switch = engine.switch_to_key(key, first.token, spill=spill)
    except Exception as exc:  # noqa: BLE001 - each item's answer, as a lone request's was
        engine.switch_to(None)
        return [exc] * len(items), False
    engine.prepare_run(shape.steps * (len(items) + upcoming))
    requests = [item.request for item in items]
    started = time.perf_counter()
    run = engine.call_pipeline(requests, [item.cancel for item in items], "pil")
    return answers(run, requests, switch, time.perf_counter() - started), True
