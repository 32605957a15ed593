"""The warm base pipeline and the adapter switch: everything that runs on the device thread.

:class:`Engine` is not thread-safe by design: the queue (``queue.py``) calls
:meth:`Engine.generate` from ONE executor thread per device. Only :meth:`Engine.snapshot`
(cache contents for ``/v1/state`` and metrics) is called from other threads; it takes the lock
that guards the cache structures.

Switch order (see ``adapters.py`` for the cache policy): active slot → resident → host → disk
(HF cache, then convert) → Hub (download, then convert). Adapters that do not fit the slot use
diffusers' ``load_lora_weights`` and are unloaded with ``unload_lora_weights`` when the next
request needs something else (never fused: fuse/unfuse is not bit-exact). A base request turns
the slot off, so its image is bit-exact with the pristine base.

Cancellation: :meth:`Engine.generate` takes the request's :class:`CancelToken` and checks it
before the switch and after every denoising step (diffusers' ``callback_on_step_end``). Once it
is set, the callback raises and the pipeline call unwinds at once: no further step, no VAE
decode, no encoding; the device is free for the next job within one step. Raising, not
diffusers' ``pipe._interrupt = True``: in diffusers 0.42 that flag only skips the remaining
UNet calls — the loop still walks the timesteps, then decodes the VAE and post-processes an
image nobody wants (7.9 s of 58 s for the tiny pipeline at 512², one CPU thread). Unwinding
leaves no state behind: every call re-runs ``scheduler.set_timesteps`` (which resets the
scheduler's step index and history) and builds its own latents and generator; the slot and the
active adapter are untouched, so the next request (base or adapter) is exact. We never use
diffusers' model offload hooks, the one thing the skipped ``maybe_free_model_hooks()`` manages.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from loraplex.worker.adapters import AdapterCache, AdapterKey
from loraplex.worker.convert import convert
from loraplex.worker.families import (
    call_parameters,
    check_servable,
    encode,
    lora_components,
    native_size,
)
from loraplex.worker.fetch import HubFetcher
from loraplex.worker.progress import LoadProgress
from loraplex.worker.queue import Cancelled, CancelToken
from loraplex.worker.settings import WorkerSettings
from loraplex.worker.slot import ATTENTION_TARGETS, LoraSlot, PackedAdapter, SlotLayout
from loraplex.worker.slow_tier import SlowTier

from loraplex.shared.contract import (
    AdapterRef,
    GenerateRequest,
    Limits,
    SwitchTier,
    check_pixel_budget,
)

log = logging.getLogger(__name__)
WARMUP_PROMPT = "warm-up"


@dataclass(frozen=True)
class Switch:
    tier: SwitchTier
    seconds: float
    active: AdapterKey | None
    slow_reason: str | None = None  # why a slow-tier adapter does not fit the slot


@dataclass(frozen=True)
class Generated:
    image: bytes
    media_type: str
    switch: Switch
    compute_seconds: float
    seed: int


@dataclass(frozen=True)
class CacheSnapshot:
    active: str | None
    resident: list[str]
    host: list[str]
    resident_bytes: int
    host_bytes: int
    free_slots: int


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, setting)


class Engine:
    """One base pipeline, its LoRA slot and the adapter cache; see the module docstring."""

    def __init__(
        self,
        settings: WorkerSettings,
        pipe: DiffusionPipeline,
        fetcher: HubFetcher,
        *,
        base_commit: str | None = None,
    ) -> None:
        self.settings = settings
        self.pipe = pipe
        self.fetcher = fetcher
        self.base_commit = base_commit
        check_servable(pipe, settings.base_model)
        self.components = lora_components(pipe, text_encoders=settings.slot_text_encoders)
        self.denoiser_name, self.denoiser = next(iter(self.components.items()))
        self.device = self.denoiser.device
        self.dtype = self.denoiser.dtype
        self.cuda = self.device.type == "cuda"
        self._call_parameters = call_parameters(pipe)
        self.slot = self._install_slot(settings)
        self.layout = self.slot.layout
        if settings.compile:
            # In place (nn.Module.compile): the pipeline keeps calling the same object. The
            # slot's hooks are traced into the graph; see slot.py for why switches never
            # recompile.
            self.denoiser.compile(backend=settings.compile_backend)
        self.cache: AdapterCache[PackedAdapter] = AdapterCache(
            resident_bytes=settings.resident_cache_bytes,
            resident_slots=settings.max_adapter_slots,
            host_bytes=settings.host_cache_bytes,
            to_device=self._to_device,
        )
        self.active: AdapterKey | None = None
        self._slow = SlowTier(pipe)
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        settings: WorkerSettings,
        token: str | None = None,
        progress: LoadProgress | None = None,
    ) -> Engine:
        """Download (through huggingface_hub) and load the base pipeline onto the device;
        ``progress`` goes through downloading (with byte counts) and loading."""
        fetcher = HubFetcher(
            cache_dir=settings.cache_dir,
            max_adapter_bytes=settings.max_adapter_bytes,
            branch_ttl_s=settings.branch_ttl_seconds,
            access_ttl_s=settings.access_ttl_seconds,
        )
        progress = progress or LoadProgress()
        base, revision = settings.base_model, settings.base_revision
        folder, commit = fetcher.snapshot(base, revision, token, progress)
        progress.loading()
        device = pick_device(settings.device)
        dtype = pick_dtype(settings.dtype, device)
        pipe = DiffusionPipeline.from_pretrained(folder, dtype=dtype, use_safetensors=True)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        log.info("loaded base %s@%s on %s (%s)", settings.base_model, commit, device, dtype)
        return cls(settings, pipe, fetcher, base_commit=commit)

    # ------------------------------------------------------------------ adapters

    def _install_slot(self, settings: WorkerSettings) -> LoraSlot:
        targets = ATTENTION_TARGETS if settings.slot_modules == "attention" else None
        layout = SlotLayout.for_components(self.components, settings.slot_rank, targets)
        modules = {
            f"{prefix}.{name}": module
            for prefix, component in self.components.items()
            for name, module in component.named_modules()
        }
        slot = LoraSlot(
            modules, layout, dtype=self.dtype, device=self.device, static=settings.compile
        )
        linear, conv = layout.count()
        log.info(
            "LoRA slot: %d Linear + %d Conv2d modules in %s at rank %d: %.1f MB on %s",
            linear,
            conv,
            ", ".join(self.components),
            layout.rank,
            slot.nbytes / 1e6,
            self.device,
        )
        return slot

    def _to_device(self, host: PackedAdapter) -> PackedAdapter:
        # On CPU the "device" is host memory: the resident tier shares the host tensor.
        return host.to(self.device) if self.cuda else host

    @staticmethod
    def _nbytes(packed: PackedAdapter) -> int:
        return packed.nbytes

    def switch_to(
        self, ref: AdapterRef | None, token: str | None = None, *, spill: bool = False
    ) -> Switch:
        """Make ``ref`` (or the bare base) active; returns the tier it came from and the time.
        ``spill``: a fresh load is kept on probation (``AdapterCache.admit(keep=False)``)."""
        started = time.perf_counter()
        if ref is None:
            self._deactivate()
            return Switch(SwitchTier.NONE, time.perf_counter() - started, None)
        key = self.fetcher.resolve(ref, token)
        if key == self.active:
            return Switch(SwitchTier.ACTIVE, time.perf_counter() - started, key)
        with self._lock:
            hit = self.cache.lookup(key, self._nbytes)
        if hit is not None:
            self._activate_slot(key, hit.value)
            return Switch(hit.tier, time.perf_counter() - started, key)
        tier, reason = self._load_new(key, token, keep=not spill)
        return Switch(tier, time.perf_counter() - started, key, reason)

    def _load_new(
        self, key: AdapterKey, token: str | None, *, keep: bool = True
    ) -> tuple[SwitchTier, str | None]:
        self._deactivate()  # a slow adapter's peft layers must not be in the model we convert for
        known_slow = self._slow.known(key)
        if known_slow is not None:
            self._activate_slow(key, known_slow[0])
            return SwitchTier.SLOW, known_slow[1]
        weight = self.fetcher.weight_file(key, token)
        path = self.fetcher.cached_path(weight)
        tier = SwitchTier.DISK
        if path is None:
            path, tier = self.fetcher.download(weight, token), SwitchTier.HUB
            protected = frozenset({self.settings.base_model, key.repo_id})
            self.fetcher.trim_disk(self.settings.disk_cache_bytes, protected)
        converted = convert(
            type(self.pipe),
            path,
            self.components,
            self.layout,
            dtype=self.dtype,
            pin_memory=self.cuda,
        )
        if converted.packed is None:
            log.info("adapter %s takes the slow path: %s", key, converted.slow_reason)
            self._slow.paths[key] = (path, converted.slow_reason or "")
            self._activate_slow(key, path)
            return SwitchTier.SLOW, converted.slow_reason
        with self._lock:
            value = self.cache.admit(key, converted.packed, converted.nbytes, keep=keep)
        self._activate_slot(key, value)
        return tier, None

    def _activate_slot(self, key: AdapterKey, value: PackedAdapter) -> None:
        self._slow.unload()
        self.slot.load(value)
        if self.cuda:  # the copy is async: wait so switch_ms is the copy, not its launch
            torch.cuda.current_stream(self.device).synchronize()
        self.active = key

    def _activate_slow(self, key: AdapterKey, path: Path) -> None:
        self._deactivate()
        self._slow.load(key, path)
        self.active = key

    def _deactivate(self) -> None:
        self.slot.deactivate()
        self._slow.unload()
        self.active = None

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        request: GenerateRequest,
        token: str | None = None,
        cancel: CancelToken | None = None,
        *,
        spill: bool = False,
    ) -> Generated:
        """Switch to the request's adapter and generate (device thread only).

        Raises :class:`Cancelled` once ``cancel`` is set (see the module docstring)."""
        if cancel is not None and (reason := cancel.check()) is not None:
            raise Cancelled(reason, started=True, detail="before it started")
        self.check_size(request)  # before the switch: a refused request downloads nothing
        try:
            switch = self.switch_to(request.adapter, token, spill=spill)
        except BaseException:
            self._deactivate()  # after any failed load the next request starts from the base
            raise
        started = time.perf_counter()
        seed, images = self.run_pipe(request, output_type="pil", cancel=cancel)
        compute = time.perf_counter() - started
        media = request.output_format.media_type
        return Generated(encode(images[0], request.output_format), media, switch, compute, seed)

    def run_pipe(
        self, request: GenerateRequest, output_type: str, cancel: CancelToken | None = None
    ) -> tuple[int, object]:
        """Run the pipeline as it is now (no switch); returns the seed used and the images.

        Raises :class:`Cancelled` after the first denoising step that finds ``cancel`` set."""
        seed = request.seed if request.seed is not None else random.randrange(Limits.MAX_SEED)
        settings = self.settings
        guidance = request.guidance_scale
        steps = request.num_inference_steps or settings.num_inference_steps
        kwargs: dict[str, Any] = {
            "prompt": request.prompt,
            "width": request.width or settings.width,
            "height": request.height or settings.height,
            "num_inference_steps": steps,
            "guidance_scale": settings.guidance_scale if guidance is None else guidance,
            "generator": torch.Generator(device=self.device).manual_seed(seed),
            "output_type": output_type,
            "callback_on_step_end": None if cancel is None else _step_watch(cancel),
        }
        if request.negative_prompt is not None and "negative_prompt" in self._call_parameters:
            kwargs["negative_prompt"] = request.negative_prompt
        try:
            result = self.pipe(**kwargs)
        except _Interrupted:
            pass  # raised again below, outside this block: no traceback pins the run's tensors
        else:
            return seed, result.images
        assert cancel is not None  # only the step watch raises _Interrupted
        reason = cancel.check()
        assert reason is not None  # a token, once set, stays set
        detail = f"stopped after {cancel.steps_done} of {steps} denoising steps"
        raise Cancelled(reason, started=True, detail=detail)

    def check_size(self, request: GenerateRequest) -> None:
        """Refuse (400) a request whose image, with missing sides filled as the pipeline
        fills them (settings, else the base's native size), is over the pixel budget: the
        contract can check only requests that name both sides."""
        native_w, native_h = native_size(self.pipe)
        width = request.width or self.settings.width or native_w
        height = request.height or self.settings.height or native_h
        filled = [f"width {width}"] if not request.width else []
        filled += [f"height {height}"] if not request.height else []
        verb = "is" if len(filled) == 1 else "are"
        note = f"{' and '.join(filled)} {verb} this worker's default" if filled else ""
        check_pixel_budget(width, height, note)

    def warm_up(self) -> None:
        """One small generation so kernels are loaded and memory allocated before /readyz;
        in compiled mode a second one with the (empty) slot on, so both graphs exist before
        the first request."""
        request = GenerateRequest(
            prompt=WARMUP_PROMPT,
            num_inference_steps=self.settings.warmup_steps,
            width=self.settings.width,
            height=self.settings.height,
            seed=0,
        )
        self.generate(request)
        if self.settings.compile:
            self.slot.activate_empty()
            try:
                self.run_pipe(request, output_type="pil")
            finally:
                self.slot.deactivate()

    def snapshot(self) -> CacheSnapshot:
        with self._lock:
            resident = self.cache.resident
            return CacheSnapshot(
                active=str(self.active) if self.active else None,
                resident=[str(k) for k in resident.recent()],
                host=[str(k) for k in self.cache.host.recent()],
                resident_bytes=resident.bytes_used,
                host_bytes=self.cache.host.bytes_used,
                free_slots=max(0, self.settings.max_adapter_slots - len(resident)),
            )


class _Interrupted(Exception):
    """Raised by the step callback to leave the pipeline's denoising loop at once."""


def _step_watch(cancel: CancelToken) -> Callable[..., dict[str, Any]]:
    """diffusers' ``callback_on_step_end``: count the step, raise once ``cancel`` is set."""

    def on_step_end(
        pipe: object, step: int, timestep: object, tensors: dict[str, Any]
    ) -> dict[str, Any]:
        cancel.steps_done = step + 1
        if cancel.check() is not None:
            raise _Interrupted
        return {}  # replace no tensor: the pipeline keeps its own latents

    return on_step_end
