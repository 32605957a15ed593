"""Pools: base model → its worker replicas and what the router knows about each.

* :class:`PoolRegistry` — the pools and their replicas (pure state; sources write endpoints
  into it, the poller and the forwarder write live state, pickers read :class:`ReplicaView`).
* :class:`PoolSource` — where endpoints come from: :class:`StaticPoolSource` (settings) here,
  the Kubernetes source in :mod:`loraplex.router.pools_k8s`.
* :class:`~loraplex.router.poller.StatePoller` — the I/O shell that polls every replica's
  ``GET /v1/state`` and writes what it reads here (kept out of this module: no aiohttp here).

A replica is *ready* when its last ``/v1/state`` said ``ready: true``; a failed poll marks it
not ready until the next good poll. It is *available* (picked, and counted by ``ready_event``)
when ready and not backing off: a forward that lost its request (connection dropped, refused,
503) takes it out for a backoff (:class:`~loraplex.router.retry.ReplicaBackoff`, exponential,
capped) that ends early when a state poll reaches it again after failing (it restarted).
Queue depth is the router's best knowledge: its own in-flight requests plus what the worker
reported beyond those at the last poll (other routers' requests), updated again from every
answer's headers.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from loraplex.router.pick import DEFAULT_LOAD_SECONDS, LoadSeconds, ReplicaView
from loraplex.router.retry import BackoffPolicy, ReplicaBackoff

from loraplex.shared.contract import Headers, WorkerState


@dataclass
class ReplicaState:
    endpoint: str
    ready: bool = False
    polled_depth: int = 0
    own_at_poll: int = 0
    own_inflight: int = 0
    active_adapter: str | None = None
    resident: frozenset[str] = frozenset()
    host_cached: frozenset[str] = frozenset()
    disk_cached: frozenset[str] = frozenset()
    load_seconds: LoadSeconds = DEFAULT_LOAD_SECONDS  # the worker's measured switch costs
    base_model: str = ""  # as the worker reports it: the picker's pool key
    backoff: ReplicaBackoff = field(default_factory=ReplicaBackoff)
    failure: str | None = None  # why its base cannot be served, as the worker last said
    # When the worker's running job began, by the pool's clock (from a poll or an answer).
    running_since: float | None = None

    def view(self, now: float | None = None) -> ReplicaView:
        """What the pickers see; ``now`` (the pool's clock) gives the running job's age."""
        others = max(0, self.polled_depth - self.own_at_poll)
        depth = self.own_inflight + others
        return ReplicaView(
            endpoint=self.endpoint,
            queue_depth=depth,
            active_adapter=self.active_adapter,
            resident_adapters=self.resident,
            host_cached_adapters=self.host_cached,
            disk_cached_adapters=self.disk_cached,
            load_seconds=self.load_seconds,
            pool=self.base_model,
            running_seconds=self._running_for(now) if depth else 0.0,
        )

    def _running_for(self, now: float | None) -> float:
        if self.running_since is None or now is None:
            return 0.0
        return max(0.0, now - self.running_since)

    def observe_state(self, state: WorkerState, now: float | None = None) -> None:
        self.ready = state.ready
        self.polled_depth = state.queue_depth + state.in_flight
        self.own_at_poll = self.own_inflight
        self.active_adapter = state.active_adapter
        self.resident = frozenset(state.resident_adapters)
        self.host_cached = frozenset(state.host_cached_adapters)
        self.disk_cached = frozenset(state.disk_cached_adapters)
        self.load_seconds = LoadSeconds.from_state(state.load_seconds, state.generate_seconds)
        self.base_model = state.base_model
        busy = state.in_flight > 0 and now is not None
        self.running_since = now - state.running_seconds if busy else None

    def observe_answer(self, headers: Mapping[str, str], now: float | None = None) -> None:
        """A worker answered: it is alive, and its headers say what is active now. Its run
        just ended, so the next job there (if any) starts about ``now``."""
        self.ready = True
        self.running_since = now
        active = headers.get(Headers.ACTIVE_ADAPTER)
        if active is not None:
            self.active_adapter = active or None
            if active:
                self.resident = self.resident | {active}


@dataclass
class Pool:
    base_model: str
    replicas: dict[str, ReplicaState] = field(default_factory=dict)
    ready_event: asyncio.Event = field(default_factory=asyncio.Event)
    pending: int = 0  # requests held for this pool right now (mirrors the pending gauge)
    # Public LoRA ids served from this pool, oldest first (an ordered set: values unused).
    recent: OrderedDict[str, None] = field(default_factory=OrderedDict)
    backoff_policy: BackoffPolicy = field(default_factory=BackoffPolicy)
    clock: Callable[[], float] = time.monotonic
    failing: str | None = None  # set by a pool source that knows the pool fails (why)

    def available(self, replica: ReplicaState) -> bool:
        """Ready and not backing off: a replica requests may be sent to now."""
        return replica.ready and not replica.backoff.out(self.clock())

    def failure_reason(self) -> str | None:
        """Why this pool cannot serve, when no replica is available and its source or a
        replica said it is failing (a base that cannot be loaded); None otherwise."""
        if any(self.available(r) for r in self.replicas.values()):
            return None
        reported = (r.failure for r in self.replicas.values() if r.failure)
        return self.failing or next(reported, None)

    def set_endpoints(self, endpoints: Iterable[str]) -> None:
        wanted = list(dict.fromkeys(endpoints))
        for gone in set(self.replicas) - set(wanted):
            del self.replicas[gone]
        for endpoint in wanted:
            self.replicas.setdefault(endpoint, ReplicaState(endpoint))
        self.refresh()

    def refresh(self) -> None:
        if any(self.available(r) for r in self.replicas.values()):
            self.ready_event.set()
        else:
            self.ready_event.clear()

    def ready_views(self, exclude: Iterable[str] = ()) -> list[ReplicaView]:
        skip = set(exclude)
        now = self.clock()
        return [
            r.view(now)
            for r in self.replicas.values()
            if self.available(r) and r.endpoint not in skip
        ]

    @property
    def ready_count(self) -> int:
        return sum(1 for r in self.replicas.values() if r.ready)

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until a replica is ready; False when ``timeout_s`` passes first."""
        if self.ready_event.is_set():
            return True
        try:
            await asyncio.wait_for(self.ready_event.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def note_adapter(self, repo_id: str, keep: int) -> None:
        """Remember ``repo_id`` as this pool's newest adapter, keeping the ``keep`` newest.

        Only for public repos: the list is shown to every caller (GET /v1/models)."""
        self.recent.pop(repo_id, None)
        self.recent[repo_id] = None
        while len(self.recent) > keep:
            self.recent.popitem(last=False)

    def recent_adapters(self) -> list[str]:
        """The remembered adapter ids, newest first."""
        return list(reversed(self.recent))

    def mark_failed(self, endpoint: str) -> float:
        """A request was lost on ``endpoint``: back it off; returns the backoff in seconds."""
        replica = self.replicas.get(endpoint)
        if replica is None:
            return 0.0
        delay = replica.backoff.failed(self.clock(), self.backoff_policy)
        self.refresh()
        return delay


@dataclass
class PoolRegistry:
    """Every pool this router serves. ``synced`` turns true once the source has listed them."""

    pools: dict[str, Pool] = field(default_factory=dict)
    synced: bool = False
    backoff_policy: BackoffPolicy = field(default_factory=BackoffPolicy)
    clock: Callable[[], float] = time.monotonic

    def set_pool(self, base_model: str, endpoints: Iterable[str]) -> None:
        pool = self.pools.get(base_model)
        if pool is None:
            pool = Pool(base_model, backoff_policy=self.backoff_policy, clock=self.clock)
            self.pools[base_model] = pool
        pool.set_endpoints(endpoints)

    def set_failing(self, base_model: str, reason: str | None) -> None:
        """A pool source says the pool fails (``reason``), or no longer (None)."""
        pool = self.pools.get(base_model)
        if pool is not None:
            pool.failing = reason

    def remove_pool(self, base_model: str) -> None:
        pool = self.pools.pop(base_model, None)
        if pool is not None:
            pool.set_endpoints(())

    def served(self) -> frozenset[str]:
        return frozenset(self.pools)

    def get(self, base_model: str) -> Pool | None:
        return self.pools.get(base_model)

    def replicas(self) -> list[tuple[Pool, ReplicaState]]:
        return [(p, r) for p in self.pools.values() for r in p.replicas.values()]


class PoolSource(Protocol):
    async def start(self, registry: PoolRegistry) -> None:
        """Fill ``registry`` and keep it current until :meth:`stop`; set ``synced`` once listed."""
        ...

    async def stop(self) -> None: ...


class StaticPoolSource:
    """Pools from settings: ``{base model: [worker base URL, …]}``; never changes."""

    def __init__(self, pools: Mapping[str, list[str]]) -> None:
        self.pools = dict(pools)

    async def start(self, registry: PoolRegistry) -> None:
        for base, endpoints in self.pools.items():
            registry.set_pool(base, endpoints)
        registry.synced = True

    async def stop(self) -> None:
        return None
