"""What the worker's handlers share: :class:`WorkerRuntime`, built in the API app's lifespan
(:mod:`loraplex.worker.app`) and reached through ``app.state.runtime``.

It runs each batch on the device thread (the executor's ``run_batch``) and records its metrics
and measured costs, refreshes the gauges ``/metrics`` exports, and answers ``/v1/state``
(:class:`~loraplex.shared.contract.WorkerState`, with the disk tier's listing).
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from loraplex.worker.batching import BatchItem
from loraplex.worker.hf_cache import scan_hf_cache
from loraplex.worker.load_costs import DiskListing, LoadCosts
from loraplex.worker.metrics import WorkerMetrics
from loraplex.worker.pipeline import Engine, Generated
from loraplex.worker.prefetch import Prefetcher
from loraplex.worker.progress import LoadProgress
from loraplex.worker.queue import CancelToken, DeviceExecutor
from loraplex.worker.settings import WorkerSettings

from loraplex.shared.contract import GenerateRequest, WorkerState


@dataclass
class Job:
    request: GenerateRequest
    token: str | None
    enqueued: float = field(default_factory=time.perf_counter)
    spill: bool = False  # the router sent it past the adapter's homes (Headers.PLACEMENT)


@dataclass
class Outcome:
    generated: Generated
    queue_seconds: float


@dataclass
class WorkerRuntime:
    """What the handlers share; built in the lifespan, reached through ``app.state.runtime``."""

    settings: WorkerSettings
    metrics: WorkerMetrics
    engine: Engine | None = None
    executor: DeviceExecutor | None = None
    ready: bool = False
    load_error: str | None = None
    progress: LoadProgress = field(default_factory=LoadProgress)  # what /readyz says
    # What /v1/state tells the router's placement: measured switch costs, the disk tier.
    load_costs: LoadCosts = field(init=False)
    disk: DiskListing = field(init=False)
    _fuses_counted: int = field(default=0, init=False, repr=False)  # merge_fuses exported so far

    @property
    def prefetcher(self) -> Prefetcher | None:
        """The engine's prefetcher (worker/prefetch.py), once the engine is built."""
        return self.engine.prefetcher if self.engine else None

    def __post_init__(self) -> None:
        settings = self.settings
        self.load_costs = LoadCosts(settings.load_cost_alpha)
        scan = scan_hf_cache(settings.cache_dir, frozenset({settings.base_model}))
        self.disk = DiskListing(
            scan,
            time.monotonic,
            ttl_s=settings.disk_scan_interval_s,
            limit=settings.state_disk_adapters,
        )

    def run(
        self, jobs: Sequence[Job], cancels: Sequence[CancelToken], upcoming: int = 0
    ) -> list[Outcome | Exception]:
        """Device thread: one batch of jobs (the executor's ``run_batch``; docs/batching.md),
        one outcome or exception per job, with each request's metrics; a job stops once its
        token is set. ``upcoming``: same-adapter jobs still waiting (fused serving weighs it)."""
        assert self.engine is not None
        started = time.perf_counter()
        self.metrics.batch_size.observe(len(jobs))
        # Probation (spill) for a fresh load only when no job of the batch is at its home.
        options: dict[str, Any] = {"spill": True} if all(job.spill for job in jobs) else {}
        if upcoming:  # keyword options only when set: test wrappers of generate take 3 args
            options["upcoming"] = upcoming
        if len(jobs) == 1:  # a lone job takes exactly the unbatched path (errors raise)
            job = jobs[0]
            outcomes: list[Generated | Exception] = [
                self.engine.generate(job.request, job.token, cancels[0], **options)
            ]
        else:
            items = [BatchItem(j.request, j.token, c) for j, c in zip(jobs, cancels, strict=True)]
            outcomes = self.engine.generate_batch(items, **options)
        return [
            out if isinstance(out, Exception) else self._observe(out, started - job.enqueued)
            for job, out in zip(jobs, outcomes, strict=True)
        ]

    def _observe(self, generated: Generated, queued_s: float) -> Outcome:
        """One request's metrics; in a batch each reports the shared switch and call."""
        tier = generated.switch.tier.value
        self.metrics.switch_seconds.labels(tier=tier).observe(generated.switch.seconds)
        if generated.switch.slow_reason is not None:
            self.metrics.slow_switches.labels(reason=generated.switch.slow_reason.kind).inc()
        self.metrics.inference_seconds.observe(generated.compute_seconds)
        self.load_costs.observe_switch(tier, generated.switch.seconds)
        # Per image: what the router's placement prices a queued request at.
        self.load_costs.observe_generate(generated.compute_seconds / generated.batch_size)
        return Outcome(generated, queued_s)

    def batch_key(self, job: Job) -> Hashable:
        """Jobs with equal keys may share a pipeline call (None: this one never does)."""
        if self.engine is None or self.settings.max_batch == 1:
            return None
        return self.engine.batch_key(job.request)

    def refresh_gauges(self) -> None:
        m = self.metrics
        if self.executor is not None:
            m.queue_depth.set(self.executor.depth)
            m.in_flight.set(self.executor.in_flight)
        if self.engine is not None:
            snap = self.engine.snapshot()
            m.resident_adapters.set(len(snap.resident))
            m.resident_bytes.set(snap.resident_bytes)
            m.host_adapters.set(len(snap.host))
            m.host_bytes.set(snap.host_bytes)
            merger = self.engine.merger
            m.merge_pristine_bytes.set(merger.pristine_bytes)
            # The merger counts on the device thread; the counter catches up when scraped.
            m.merge_fuses.inc(merger.fuses - self._fuses_counted)
            self._fuses_counted = merger.fuses
        m.ready.set(1 if self.ready else 0)

    def state(self) -> WorkerState:
        settings = self.settings
        executor = self.executor
        snap = self.engine.snapshot() if self.engine else None
        return WorkerState(
            base_model=settings.base_model,
            base_revision=self.engine.base_commit if self.engine else settings.base_revision,
            ready=self.ready,
            queue_depth=executor.depth if executor else 0,
            queue_capacity=settings.queue_capacity,
            in_flight=executor.in_flight if executor else 0,
            running_seconds=executor.running_seconds if executor else 0.0,
            active_adapter=snap.active if snap else None,
            resident_adapters=snap.resident if snap else [],
            host_cached_adapters=snap.host if snap else [],
            free_slots=snap.free_slots if snap else settings.max_adapter_slots,
            disk_cached_adapters=self.disk.keys() if settings.state_disk_adapters else [],
            load_seconds=self.load_costs.load_seconds(),
            generate_seconds=self.load_costs.generate_seconds(),
            load_error=self.load_error,
        )
