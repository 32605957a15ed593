"""Simulated GPU workers: one request at a time, service time = adapter switch + inference.

Workers are modelled by service times only; which worker gets a request, and how many
workers exist, is decided by the project's real picker and scaling policy (see
:mod:`loraplex.simulate.scenarios`). Three adapter models cover the three scenarios:
:class:`DedicatedAdapter` (the seed's "before": the adapter is part of the deployment),
:class:`SingleAdapterSlot` (the seed's "after": unload + load on every switch) and
:class:`TieredAdapterCache` (loraplex: resident slots ◂ host RAM ◂ disk ◂ Hub, LRU each).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import simpy

from loraplex.router.pick import ReplicaView
from loraplex.shared.contract import SwitchTier
from loraplex.simulate.config import SwitchTimes
from loraplex.simulate.traffic import Request

COLD_START = "cold_start"  # tier label: the request waited for its deployment to warm up


@dataclass(frozen=True)
class Switch:
    seconds: float
    tier: str
    loaded: bool  # adapter weights were copied onto the GPU


class DedicatedAdapter:
    """The deployment *is* the adapter: loaded once during warm-up, never switched."""

    resident: tuple[str, ...] = ()
    host: tuple[str, ...] = ()

    def __init__(self, adapter: str | None) -> None:
        self.active = adapter

    def switch(self, adapter: str | None) -> Switch:
        return Switch(0.0, SwitchTier.ACTIVE.value, loaded=False)


class SingleAdapterSlot:
    """One adapter at a time; a different adapter costs unload (if any) + a fresh load."""

    resident: tuple[str, ...] = ()
    host: tuple[str, ...] = ()

    def __init__(self, load_s: float, unload_s: float) -> None:
        self.active: str | None = None
        self._load_s = load_s
        self._unload_s = unload_s

    def switch(self, adapter: str | None) -> Switch:
        if adapter == self.active:
            tier = SwitchTier.NONE if adapter is None else SwitchTier.ACTIVE
            return Switch(0.0, tier.value, loaded=False)
        seconds = self._unload_s if self.active is not None else 0.0
        self.active = adapter
        if adapter is None:
            return Switch(seconds, SwitchTier.NONE.value, loaded=False)
        return Switch(seconds + self._load_s, SwitchTier.HUB.value, loaded=True)


class LruSet:
    """Keys in least-recently-used order, at most ``capacity`` of them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def touch(self, key: str) -> None:
        if self.capacity <= 0:
            return
        self._items[key] = None
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


class TieredAdapterCache:
    """loraplex's worker cache: each tier an LRU, inclusive (a resident adapter is also cached
    in host RAM and on disk). Evicting from the GPU costs nothing: the host copy stays.
    ``disk`` may be one :class:`LruSet` shared by a pool's workers (a shared model-cache volume).
    """

    def __init__(self, times: SwitchTimes, slots: int, host: int, disk: int | LruSet) -> None:
        self.active: str | None = None
        self._times = times
        self._resident = LruSet(slots)
        self._host = LruSet(host)
        self._disk = disk if isinstance(disk, LruSet) else LruSet(disk)

    @property
    def resident(self) -> tuple[str, ...]:
        return tuple(self._resident)

    @property
    def host(self) -> tuple[str, ...]:
        return tuple(self._host)

    def _locate(self, adapter: str) -> Switch:
        if adapter == self.active:
            return Switch(0.0, SwitchTier.ACTIVE.value, loaded=False)
        if adapter in self._resident:
            return Switch(self._times.resident, SwitchTier.RESIDENT.value, loaded=False)
        if adapter in self._host:
            return Switch(self._times.host, SwitchTier.HOST.value, loaded=True)
        if adapter in self._disk:
            return Switch(self._times.disk, SwitchTier.DISK.value, loaded=True)
        return Switch(self._times.hub, SwitchTier.HUB.value, loaded=True)

    def switch(self, adapter: str | None) -> Switch:
        if adapter is None:
            self.active = None
            return Switch(0.0, SwitchTier.NONE.value, loaded=False)
        found = self._locate(adapter)
        self.active = adapter
        for tier in (self._resident, self._host, self._disk):
            tier.touch(adapter)
        return found


AdapterModel = DedicatedAdapter | SingleAdapterSlot | TieredAdapterCache


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


class Replica:
    """One GPU worker: warms up, then serves its FIFO queue one request at a time."""

    def __init__(
        self,
        env: simpy.Environment,
        name: str,
        inference_s: float,
        adapters: AdapterModel,
        recorder: Recorder,
        warmup_s: float,
        on_ready: Callable[[Replica], None] | None = None,
    ) -> None:
        self.env = env
        self.name = name
        self.inference_s = inference_s
        self.adapters = adapters
        self.recorder = recorder
        self.depth = 0  # queued + running; updated on enqueue so the picker sees it at once
        self.draining = False
        self.stopped = False
        self.ready_event = env.event()
        self._gpu = simpy.Resource(env, capacity=1)
        self._span = recorder.gpu_start(env.now)
        self._view: ReplicaView | None = None
        self._on_ready = on_ready
        self._idle_since = env.now
        env.process(self._warm_up(warmup_s))

    @property
    def ready(self) -> bool:
        return self.ready_event.triggered and not self.stopped

    def _warm_up(self, seconds: float) -> Iterator[simpy.Event]:
        yield self.env.timeout(seconds)
        if self.stopped:
            return
        self.ready_event.succeed()
        if self._on_ready is not None:
            self._on_ready(self)

    def view(self) -> ReplicaView:
        """The router's view of this worker; cached until the worker's state changes."""
        if self._view is None:
            self._view = ReplicaView(
                endpoint=self.name,
                queue_depth=self.depth,
                active_adapter=self.adapters.active,
                resident_adapters=frozenset(self.adapters.resident),
                host_cached_adapters=frozenset(self.adapters.host),
            )
        return self._view

    def enqueue(self, request: Request) -> None:
        self.depth += 1
        self._view = None
        self.env.process(self._serve(request))

    def _serve(self, request: Request) -> Iterator[simpy.Event]:
        waited_warmup = not self.ready_event.triggered
        if waited_warmup:
            yield self.ready_event
        with self._gpu.request() as turn:
            yield turn
            switch = self.adapters.switch(request.adapter)
            self._view = None
            if switch.loaded:
                self.recorder.loaded.add(request.index)
            yield self.env.timeout(switch.seconds + self.inference_s)
        self.depth -= 1
        self._view = None
        self.recorder.complete(request, self.env.now, COLD_START if waited_warmup else switch.tier)
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
