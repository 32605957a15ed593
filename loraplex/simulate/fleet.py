"""Simulated GPU workers: the worker's own queue, service time = adapter switch + inference.

Workers are modelled by service times; which worker gets a request, and how many workers
exist, is decided by the project's real picker and scaling policy (see
:mod:`loraplex.simulate.scenarios`). Which waiting request a worker runs next is decided by the
worker's own :class:`~loraplex.worker.queue.GroupingQueue` (bounded; same-adapter requests
overtake, at most ``max_overtake`` times each; ``max_overtake=0`` is FIFO), and what it holds
by an adapter model of :mod:`loraplex.simulate.adapters`. Each replica measures its switches
and generations with the worker's own :class:`~loraplex.worker.load_costs.LoadCosts` and shows
the router what a worker's ``/v1/state`` shows (tiers incl. the disk, measured load seconds).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field, replace

import simpy

from loraplex.router.pick import LoadSeconds, ReplicaView
from loraplex.simulate.adapters import AdapterModel, WorkerAdapters
from loraplex.simulate.traffic import Request
from loraplex.worker.load_costs import LoadCosts
from loraplex.worker.queue import GroupingQueue, Job
from loraplex.worker.settings import WorkerSettings

COLD_START = "cold_start"  # tier label: the request waited for its deployment to warm up
WORKER_ALPHA = WorkerSettings.model_fields["load_cost_alpha"].default


@dataclass
class Recorder:
    """Everything a scenario measures; one per scenario run."""

    total: int
    done: simpy.Event
    latencies: dict[int, float] = field(default_factory=dict)
    tiers: dict[int, str] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)  # request index → reason
    loaded: set[int] = field(default_factory=set)  # requests that caused an adapter load
    gpu_spans: list[list[float]] = field(default_factory=list)  # [start, stop or inf]
    # (t, replicas alive = GPUs held)
    samples: list[tuple[float, int]] = field(default_factory=list)
    # base → (picker, scaling policy or None): the policy objects this run really used
    parts: dict[str, tuple[object, object | None]] = field(default_factory=dict)
    # base → requests answered (completed or rejected): the router counts
    # loraplex_router_requests_total when it answers, so this is what the operator scrapes.
    answered: Counter[str] = field(default_factory=Counter)

    def _resolved(self) -> None:
        if len(self.latencies) + len(self.rejected) == self.total and not self.done.triggered:
            self.done.succeed()

    def complete(self, request: Request, now: float, tier: str) -> None:
        self.answered[request.base] += 1
        self.latencies[request.index] = now - request.time
        self.tiers[request.index] = tier
        self._resolved()

    def reject(self, request: Request, reason: str) -> None:
        self.answered[request.base] += 1
        self.rejected[request.index] = reason
        self._resolved()

    def gpu_start(self, now: float) -> list[float]:
        span = [now, float("inf")]
        self.gpu_spans.append(span)
        return span


@dataclass(frozen=True)
class Waiting:
    """A queued request (a :class:`~loraplex.worker.queue.Job` payload)."""

    request: Request
    cold: bool  # queued before its worker was ready: it waited for the warm-up
    spill: bool = False  # the router sent it past its homes (x-loraplex-placement: spill)


class Replica:
    """One GPU worker: warms up, then runs the job its :class:`GroupingQueue` hands out next.

    ``enqueue`` raises :class:`~loraplex.shared.errors.QueueFull` when the queue is at capacity
    (the worker's 429), so the caller decides whether to try another replica.
    """

    def __init__(
        self,
        env: simpy.Environment,
        name: str,
        inference_s: float,
        adapters: AdapterModel,
        recorder: Recorder,
        warmup_s: float,
        queue: GroupingQueue,
        on_ready: Callable[[Replica], None] | None = None,
        pool: str = "",
    ) -> None:
        self.env = env
        self.name = name
        self.inference_s = inference_s
        self.adapters = adapters
        self.recorder = recorder
        self.queue = queue
        self.running = 0
        self.draining = False
        self.stopped = False
        self.ready_event = env.event()
        self._span = recorder.gpu_start(env.now)
        self._view: ReplicaView | None = None
        self._on_ready = on_ready
        self._idle_since = env.now
        self._running_since = env.now  # when the job running now began (valid while running)
        self._last_group: Hashable = None  # the worker's executor keeps the same
        self._wake: simpy.Event | None = None
        self.pool = pool
        self.costs = LoadCosts(WORKER_ALPHA)  # the worker's own estimator, fed as the worker does
        self._prices: LoadSeconds | None = None  # what costs says, until it measures again
        env.process(self._warm_up(warmup_s))
        env.process(self._serve())

    @property
    def ready(self) -> bool:
        return self.ready_event.triggered and not self.stopped

    @property
    def depth(self) -> int:
        """Queued + running: what the router's view counts."""
        return len(self.queue) + self.running

    def _warm_up(self, seconds: float) -> Iterator[simpy.Event]:
        yield self.env.timeout(seconds)
        if self.stopped:
            return
        self.ready_event.succeed()
        if self._on_ready is not None:
            self._on_ready(self)

    def view(self) -> ReplicaView:
        """The router's view of this worker (cached until the worker's state changes), with
        the running job's age as the worker's ``/v1/state`` reports it."""
        view = self._cached_view()
        if not self.running:
            return view
        return replace(view, running_seconds=self.env.now - self._running_since)

    def _cached_view(self) -> ReplicaView:
        if self._view is None:
            adapters = self.adapters
            if isinstance(adapters, WorkerAdapters):
                disk = adapters.disk_names()
                resident, host = adapters.names()
            else:
                disk, resident, host = frozenset(), frozenset(), frozenset()
            if self._prices is None:
                costs = self.costs
                self._prices = LoadSeconds.from_state(
                    costs.load_seconds(), costs.generate_seconds()
                )
            self._view = ReplicaView(
                endpoint=self.name,
                queue_depth=self.depth,
                active_adapter=adapters.active,
                resident_adapters=resident,
                host_cached_adapters=host,
                disk_cached_adapters=disk,
                load_seconds=self._prices,
                pool=self.pool,
            )
        return self._view

    def enqueue(self, request: Request, *, spill: bool = False) -> None:
        waiting = Waiting(request, cold=not self.ready_event.triggered, spill=spill)
        self.queue.push(Job(request.adapter, waiting))  # the worker groups by adapter id
        self._view = None
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def _serve(self) -> Iterator[simpy.Event]:
        """The executor's loop: pop after the last job's adapter, run, repeat."""
        yield self.ready_event
        while not self.stopped:
            job = self.queue.pop(self._last_group)
            if job is None:
                self._wake = self.env.event()
                yield self._wake
                continue
            self._last_group = job.group
            yield from self._run(job.payload)

    def _run(self, waiting: Waiting) -> Iterator[simpy.Event]:
        request = waiting.request
        self.running = 1
        self._running_since = self.env.now
        switch = self.adapters.switch(request.adapter, spill=waiting.spill)
        self._view = None
        if switch.loaded:
            self.recorder.loaded.add(request.index)
        self.costs.observe_switch(switch.tier, switch.seconds, switch.nbytes or None)
        self.costs.observe_generate(self.inference_s)
        self._prices = None
        yield self.env.timeout(switch.seconds + self.inference_s)
        self.running = 0
        self._view = None
        self.recorder.complete(request, self.env.now, COLD_START if waiting.cold else switch.tier)
        if self.depth == 0:
            self._idle_since = self.env.now
            if self.draining:
                self.stop()

    def idle_for(self) -> float:
        return self.env.now - self._idle_since if self.depth == 0 else 0.0

    def drain(self) -> None:
        """Take no new requests; stop once the queue is empty (at once if it is)."""
        self.draining = True
        if self.depth == 0:
            self.stop()

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self._span[1] = self.env.now
