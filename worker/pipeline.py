"""The warm base pipeline and the adapter switch: everything that runs on the device thread.

:class:`Engine` is not thread-safe by design: the queue (``queue.py``) calls
:meth:`Engine.generate` from ONE executor thread per device. Only :meth:`Engine.snapshot`
(cache contents for ``/v1/state`` and metrics) and prefetch's half of a load (``fetch_file``,
``convert_file``, ``needs_load``, ``admit_host``; ``worker/prefetch.py``) are called from other
threads; they take the lock that guards the cache structures where they touch them.

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
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import DiffusionPipeline
from loraplex.worker.adapters import AdapterCache, AdapterKey, Hit
from loraplex.worker.batching import BatchItem, BatchKey, CallDefaults, batch_key
from loraplex.worker.convert import Converted, SlowReason, convert
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
from loraplex.worker.merge import MergeCosts, Merger, measure_costs, slot_modules
from loraplex.worker.prefetch import Settled
from loraplex.worker.progress import LoadProgress
from loraplex.worker.queue import CancelToken
from loraplex.worker.settings import WorkerSettings
from loraplex.worker.slot import ATTENTION_TARGETS, LoraSlot, PackedAdapter, SlotLayout
from loraplex.worker.slow_tier import SlowTier

from loraplex.shared.contract import (
    AdapterRef,
    GenerateRequest,
    SwitchTier,
    check_pixel_budget,
)

if TYPE_CHECKING:
    from loraplex.worker.prefetch import Prefetcher

log = logging.getLogger(__name__)
WARMUP_PROMPT = "warm-up"


@dataclass(frozen=True)
class Switch:
    tier: SwitchTier
    seconds: float
    active: AdapterKey | None
    slow_reason: SlowReason | None = None  # why a slow-tier adapter does not fit the slot


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
        # Fused serving (worker/merge.py): restored before anything else becomes active.
        modules = slot_modules(self.components, self.layout)
        self.merger = Merger(self.slot, modules, pristine=settings.merge_pristine)
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
        key = None if ref is None else self.fetcher.resolve(ref, token)
        return self.switch_to_key(key, token, spill=spill, started=started)

    def switch_to_key(
        self,
        key: AdapterKey | None,
        token: str | None,
        *,
        spill: bool = False,
        started: float | None = None,
    ) -> Switch:
        """:meth:`switch_to` for an adapter already resolved (and so authorized) for ``token``:
        a batch resolves each member once, before it joins (generation.py)."""
        started = time.perf_counter() if started is None else started
        if key is None:
            self._deactivate()
            return Switch(SwitchTier.NONE, time.perf_counter() - started, None)
        if key == self.active:
            return Switch(SwitchTier.ACTIVE, time.perf_counter() - started, key)
        lookup = partial(self._lookup, key)
        # A prefetch in flight for the key is waited for, not downloaded again: then the switch
        # counts under the tier the prefetch loaded from (see prefetch.Settled), else a host hit.
        settled = self.prefetcher.settle(key, lookup) if self.prefetcher else Settled(lookup())
        hit = settled.found
        if hit is not None:
            self._activate_slot(key, hit.value)
            tier = settled.waited_from if settled.waited_from is not None else hit.tier
            return Switch(tier, time.perf_counter() - started, key)
        tier, reason = self._load_new(key, token, keep=not spill)
        return Switch(tier, time.perf_counter() - started, key, reason)

    def _lookup(self, key: AdapterKey) -> Hit[PackedAdapter] | None:
        with self._lock:
            return self.cache.lookup(key, self._nbytes)

    def _load_new(
        self, key: AdapterKey, token: str | None, *, keep: bool = True
    ) -> tuple[SwitchTier, SlowReason | None]:
        self._deactivate()  # a slow adapter's peft layers must not be in the model we convert for
        known_slow = self._slow.known(key)
        if known_slow is not None:
            self._activate_slow(key, known_slow[0])
            return SwitchTier.SLOW, known_slow[1]
        path, tier = self.fetch_file(key, token)
        converted = self.convert_file(path)
        if converted.packed is None:
            log.info("adapter %s takes the slow path: %s", key, converted.slow_reason)
            self._slow.paths[key] = (path, converted.slow_reason)
            self._activate_slow(key, path)
            return SwitchTier.SLOW, converted.slow_reason
        with self._lock:
            value = self.cache.admit(key, converted.packed, converted.nbytes, keep=keep)
        self._activate_slot(key, value)
        return tier, None

    # Download + convert: the half of a load that prefetch (worker/prefetch.py) also runs, on
    # its I/O threads; thread-safe (the fetcher is; convert only reads the module tree).

    def fetch_file(self, key: AdapterKey, token: str | None) -> tuple[Path, SwitchTier]:
        """The adapter's local file: from the disk tier, else downloaded (then the disk trimmed)."""
        weight = self.fetcher.weight_file(key, token)
        path = self.fetcher.cached_path(weight)
        if path is not None:
            return path, SwitchTier.DISK
        path = self.fetcher.download(weight, token)
        protected = frozenset({self.settings.base_model, key.repo_id})
        self.fetcher.trim_disk(self.settings.disk_cache_bytes, protected)
        return path, SwitchTier.HUB

    def convert_file(self, path: Path) -> Converted:
        return convert(
            type(self.pipe),
            path,
            self.components,
            self.layout,
            dtype=self.dtype,
            pin_memory=self.cuda,
        )

    def needs_load(self, key: AdapterKey) -> bool:
        """False when ``key`` is in memory (then touched: most recently used, so a prefetch
        admitted for a later job does not evict it) or known to take the slow tier."""
        with self._lock:
            if self.cache.host.get(key) is not None or key in self.cache.resident:
                return False
        return key not in self._slow.paths

    def admit_host(self, key: AdapterKey, packed: PackedAdapter, nbytes: int, keep: bool) -> None:
        """Store a prefetched adapter in the host tier only (the device promotes it on use)."""
        with self._lock:
            self.cache.host.put(key, packed, nbytes, recent=keep)

    def _activate_slot(self, key: AdapterKey, value: PackedAdapter) -> None:
        self.merger.restore()  # a fused adapter's delta leaves the weights first
        self._slow.unload()
        self.slot.load(value)
        self._sync()  # the copy is async: wait so switch_ms is the copy, not its launch
        self.active = key

    def _activate_slow(self, key: AdapterKey, path: Path) -> None:
        self._deactivate()
        self._slow.load(key, path)
        self.active = key

    def _deactivate(self) -> None:
        self.merger.restore()
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

    def _sync(self) -> None:
        """On CUDA, wait for the work queued on the device (no-op on CPU)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)

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
