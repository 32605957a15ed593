"""The warm base pipeline and the adapter switch: everything that runs on the device thread.

:class:`Engine` is not thread-safe by design: the queue (``queue.py``) calls
:meth:`Engine.generate` from ONE executor thread per device. Only :meth:`Engine.snapshot`
(cache contents for ``/v1/state`` and metrics) and prefetch's half of a load (``fetch_file``,
``convert_file``, ``needs_load``, ``admit_host``; ``worker/prefetch.py``) are called from other
threads; they take the lock that guards the cache structures where they touch them.

The switch itself (tier order, the slow tier, prefetch's half of a load) is
:class:`~loraplex.worker.switch.AdapterSwitching` in ``switch.py``, which :class:`Engine` mixes in.

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
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch
from diffusers import DiffusionPipeline
from loraplex.worker.adapters import AdapterCache, AdapterKey
from loraplex.worker.batching import BatchItem, BatchKey, CallDefaults, batch_key
from loraplex.worker.families import (
    call_parameters,
    check_servable,
    lora_components,
    native_size,
)
from loraplex.worker.fetch import HubFetcher
from loraplex.worker.generation import (
    Generated,
    PipeRun,
    call_pipeline,
    cancelled,
    generate_batch,
)
from loraplex.worker.merge import MergeCosts, Merger, measure_costs
from loraplex.worker.progress import LoadProgress
from loraplex.worker.queue import CancelToken
from loraplex.worker.settings import WorkerSettings
from loraplex.worker.slot import LoraSlot
from loraplex.worker.slot_layout import ATTENTION_TARGETS, PackedAdapter, SlotLayout
from loraplex.worker.slow_tier import SlowTier
from loraplex.worker.switch import AdapterSwitching

from loraplex.shared.contract import GenerateRequest, check_pixel_budget

if TYPE_CHECKING:
    from loraplex.worker.prefetch import Prefetcher

log = logging.getLogger(__name__)
WARMUP_PROMPT = "warm-up"


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


class Engine(AdapterSwitching):
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
        # Fused serving (worker/merge.py): restored before anything else becomes active.
        self.merger = Merger(self.slot, pristine=settings.merge_pristine)
        self.merge_costs: MergeCosts | None = None  # measured by warm_up when MERGE=auto
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
        self.prefetcher: Prefetcher | None = None  # set by the app once built (prefetch.py)
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
        device = pick_device(settings.device)
        dtype = pick_dtype(settings.dtype, device)
        # fp16 weights where the repo has them: half the download of fp32 cast down. bf16 runs
        # take the plain (fp32) weights, which cast to bf16 without fp16's range limit.
        prefer = "fp16" if dtype == torch.float16 else None
        folder, commit, variant = fetcher.snapshot(
            base, revision, token, progress, prefer_variant=prefer
        )
        progress.loading()
        pipe = DiffusionPipeline.from_pretrained(
            folder, dtype=dtype, use_safetensors=True, variant=variant
        )
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        log.info("loaded base %s@%s on %s (%s)", settings.base_model, commit, device, dtype)
        return cls(settings, pipe, fetcher, base_commit=commit)

    # ------------------------------------------------------------------ the LoRA slot

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

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        request: GenerateRequest,
        token: str | None = None,
        cancel: CancelToken | None = None,
        *,
        spill: bool = False,
        upcoming: int = 0,
    ) -> Generated:
        """Switch to the request's adapter and generate (device thread only): a batch of one.
        ``upcoming``: how many jobs for the same adapter wait in the queue behind this one
        (fused serving's ``auto`` weighs it, see :meth:`prepare_run`).

        Raises :class:`Cancelled` once ``cancel`` is set (see the module docstring)."""
        item = BatchItem(request, token, cancel)
        [outcome] = self.generate_batch([item], spill=spill, upcoming=upcoming)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def generate_batch(
        self, items: Sequence[BatchItem], *, spill: bool = False, upcoming: int = 0
    ) -> list[Generated | Exception]:
        """Generate ``items``, each with its own token, seed and stop signal: one switch and
        one pipeline call per (adapter commit, batch key); each item's outcome on its own
        (:func:`~loraplex.worker.generation.generate_batch`, docs/batching.md)."""
        return generate_batch(self, items, spill=spill, upcoming=upcoming)

    @cached_property
    def call_defaults(self) -> CallDefaults:
        """What a request that omits a parameter gets: the settings, else the base's native
        size (fixed for the engine's life)."""
        native_w, native_h = native_size(self.pipe)
        s = self.settings
        return CallDefaults(
            s.width or native_w, s.height or native_h, s.num_inference_steps, s.guidance_scale
        )

    def batch_key(self, request: GenerateRequest) -> BatchKey:
        """What must be equal for two requests to share a pipeline call (batching.py)."""
        return batch_key(request, self.call_defaults)

    def prepare_run(self, work_steps: int) -> None:
        """Device thread, after the switch and before the pipeline call: ``work_steps`` is the
        denoising steps of same-adapter work this run and the queue behind it hold. Fused
        serving (``MERGE``, worker/merge.py) folds the active slot adapter into the weights here
        when the setting says so; it stays fused until something else becomes active."""
        self.merger.prepare(self.settings.merge, work_steps, self.merge_costs)

    def run_pipe(
        self, request: GenerateRequest, output_type: str, cancel: CancelToken | None = None
    ) -> tuple[int, object]:
        """Run the pipeline as it is now (no switch); returns the seed used and the images.

        Raises :class:`Cancelled` after the first denoising step that finds ``cancel`` set."""
        run = self.call_pipeline([request], [cancel], output_type)
        if run.images is None:
            assert run.reasons[0] is not None  # only a set token stops the loop
            raise cancelled(run, run.reasons[0])
        return run.seeds[0], run.images

    def call_pipeline(
        self,
        requests: Sequence[GenerateRequest],
        cancels: Sequence[CancelToken | None],
        output_type: str,
    ) -> PipeRun:
        return call_pipeline(
            self.pipe,
            requests,
            cancels,
            settings=self.settings,
            call_parameters=self._call_parameters,
            device=self.device,
            output_type=output_type,
        )

    def check_size(self, request: GenerateRequest) -> None:
        """Refuse (400) a request whose image, with missing sides filled as the pipeline
        fills them (settings, else the base's native size), is over the pixel budget: the
        contract can check only requests that name both sides."""
        width = request.width or self.call_defaults.width
        height = request.height or self.call_defaults.height
        filled = [f"width {width}"] if not request.width else []
        filled += [f"height {height}"] if not request.height else []
        verb = "is" if len(filled) == 1 else "are"
        note = f"{' and '.join(filled)} {verb} this worker's default" if filled else ""
        check_pixel_budget(width, height, note)

    def warm_up(self) -> None:
        """One small generation so kernels are loaded and memory allocated before /readyz;
        in compiled mode a second one with the (empty) slot on, so both graphs exist before
        the first request. With ``MERGE=auto`` it then measures what fused serving weighs
        (:func:`~loraplex.worker.merge.measure_costs`)."""
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
        if self.settings.merge == "auto":
            self.merge_costs = measure_costs(
                self.slot,
                self.merger,
                lambda: self.run_pipe(request, output_type="latent"),
                self.settings.warmup_steps,
                sync=self._sync,
            )

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
