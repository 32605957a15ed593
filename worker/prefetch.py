"""Prefetch: a queued job's adapter is resolved, downloaded and converted before it reaches the
device, so that the device thread only copies it into the slot (a host-tier hit).

Flow. The generate handler calls :meth:`Prefetcher.want` when it accepts a job (before it waits
in the queue) and :meth:`Prefetcher.release` once the job is over (answered, cancelled, expired,
refused). ``want`` never blocks: a planner thread resolves the job's revision to its commit with
the job's own token (:meth:`Loader.plan`: the Hub's listing also gives the file size); an adapter
already in the host or resident tier (or known to take the slow tier) needs nothing. Otherwise
the job joins the one prefetch of that ``(repo, commit)`` — dedup: however many jobs want a
commit, it is downloaded and converted once — and the prefetch waits its turn (FIFO) for a
loader thread. On the device, :meth:`Prefetcher.settle` (called by ``Engine.switch_to`` after its
own resolve) waits for an in-flight prefetch of the key instead of downloading again, and takes
over (drops) one that has not started; then the engine looks the key up as usual. A prefetched
adapter switches as tier ``host``; a switch that waited reports the tier the prefetch loaded
from (``hub``/``disk``, :class:`Settled`). While the device loads a key itself, no prefetch of
that key starts (no second download behind its back).

Bounds (:class:`Budget`, a pure core): at most ``concurrency`` prefetches download or convert at
once; the bytes in flight (the file size the Hub lists; a file of unknown size counts once it is
downloaded) stay under ``max_bytes_in_flight``; and in-flight plus prefetched-but-unused bytes
(admitted, not yet used by the device) stay under ``host_budget_bytes`` — a fraction of the host
tier — so prefetching cannot push out of the host tier what queued jobs need (an adapter a queued
job wants that is already there is also touched: made most recently used). An adapter bigger
than either bound is never prefetched: the device loads it as before.

Cancellation: each prefetch counts the jobs that want it. When the last one is released before
the prefetch started, it is dropped. If it is already downloading, the download finishes (it is
bounded: one file, under the byte bounds) and stays in the disk tier, but the file is neither
converted nor admitted to the host tier when nobody wants it any more.

Failures: a prefetch that fails (any Hub or conversion error) admits nothing and is logged; no
job fails because of it. The job's own load on the device then runs the normal path, which
raises the same domain error as without prefetch, with the job's own token: so one user's
failed (or refused) prefetch never becomes another user's answer, and a transient failure gets
a second try.

Security: the engine resolves (and authorizes) every job with the job's own token on the device
thread before it looks at the cache, as without prefetch, so a commit another user's prefetch
put into the host tier is served only to callers the Hub lets read it. Keys are commits: a branch
that moved on resolves to a new key, so a prefetch never serves a stale commit.

Threads: ``want``/``release`` run on the event loop, ``settle`` on the device thread, the rest on
the planner and loader pools; one lock guards the bookkeeping, and the loader's callbacks run
outside it (``admit`` takes the engine's cache lock). :meth:`Prefetcher.stop` drops what waits and
joins the pools (no thread outlives the app).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from loraplex.worker.adapters import AdapterKey

from loraplex.shared.contract import AdapterRef
from loraplex.shared.errors import LoraplexError

log = logging.getLogger(__name__)
PLANNER_THREADS = 2  # resolutions are one metadata call each; two keep a slow one from blocking
H = TypeVar("H")


class Settled(NamedTuple, Generic[H]):
    """What :meth:`Prefetcher.settle` found: the lookup's answer, and — when the device waited
    for a prefetch in flight — where that prefetch got the file (``waited_from``). The engine
    reports such a switch under that tier (hub or disk), not as a host hit: the device did wait
    for the load, and the router prices each tier by the switch times workers report."""

    found: H | None
    waited_from: Any = None


class Plan(NamedTuple):
    """What a job's adapter needs: its commit, the file size the Hub lists (None: unknown), and
    whether it must be loaded at all (False: cached in memory or known to take the slow tier)."""

    key: AdapterKey
    size: int | None
    needed: bool


class Loader(Protocol):
    """The I/O a prefetch does (``prefetch_engine.EngineLoader`` in the worker; fakes in
    tests)."""

    def plan(self, ref: AdapterRef, token: str | None) -> Plan: ...

    def download(self, key: AdapterKey, token: str | None) -> tuple[Any, int, Any]:
        """The local file (disk tier; downloaded if missing), its size in bytes, and where it
        came from (the worker: ``SwitchTier.DISK`` or ``HUB``; see :class:`Settled`)."""
        ...

    def convert(self, file: Any) -> tuple[Any, int] | None:
        """The host-tier value and its bytes, or None when it takes the slow tier."""
        ...

    def admit(self, key: AdapterKey, value: Any, nbytes: int, keep: bool) -> None: ...


@dataclass
class Budget:
    """The bounds of the module docstring, as arithmetic (pure: no threads, no I/O)."""

    concurrency: int
    max_bytes_in_flight: int
    host_budget_bytes: int
    running: int = 0
    in_flight_bytes: int = 0
    unused_bytes: int = 0  # admitted to the host tier, not yet used by the device

    def ever_fits(self, size: int) -> bool:
        return size <= self.max_bytes_in_flight and size <= self.host_budget_bytes

    def may_start(self, size: int) -> bool:
        return (
            self.running < self.concurrency
            and self.in_flight_bytes + size <= self.max_bytes_in_flight
            and self.unused_bytes + self.in_flight_bytes + size <= self.host_budget_bytes
        )


class State(Enum):
    PENDING = "pending"  # waiting for a loader thread or for the bounds
    RUNNING = "running"  # downloading or converting
    DONE = "done"  # admitted to the host tier, not used by the device yet
    OVER = "over"  # finished without a value, dropped, or used: out of the books


@dataclass(eq=False)
class _Prefetch:
    key: AdapterKey
    size: int | None
    token: str | None = field(repr=False)  # of the job planned first: it downloads with it
    keep: bool
    state: State = State.PENDING
    wanted: int = 0
    counted: int = 0  # bytes it holds in Budget.in_flight_bytes
    nbytes: int = 0  # bytes in the host tier once admitted
    source: Any = None  # where the download got the file (Loader.download)
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(eq=False)
class Ticket:
    """One job's claim on a prefetch (from :meth:`Prefetcher.want`, for ``release``)."""

    ref: AdapterRef
    token: str | None = field(repr=False)
    keep: bool = True
    released: bool = False
    prefetch: _Prefetch | None = None


# Events passed to ``on_event`` (and counted in ``Prefetcher.events``). Device side, once per
# switch that found no active adapter: hit (prefetched before the job got the device), wait (the
# device waited for a prefetch in flight), miss (the device loads the adapter itself).
# Prefetch side: admitted, failed, dropped (nobody wanted it before it started), unwanted
# (downloaded, then nobody wanted it: not converted), skipped (over the bounds), slow.
DEVICE_EVENTS = ("hit", "wait", "miss")


class Prefetcher:
    """Loads queued jobs' adapters ahead of the device; see the module docstring."""

    def __init__(
        self,
        loader: Loader,
        *,
        concurrency: int,
        max_bytes_in_flight: int,
        host_budget_bytes: int,
        on_event: Callable[[str], None] = lambda event: None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be ≥ 1, got {concurrency}")
        self.loader = loader
        self.budget = Budget(concurrency, max_bytes_in_flight, host_budget_bytes)
        self.events: Counter[str] = Counter()
        self._on_event = on_event
        self._lock = threading.Lock()
        self._prefetches: dict[AdapterKey, _Prefetch] = {}
        self._pending: deque[_Prefetch] = deque()
        self._stopped = False
        self._device_loading: AdapterKey | None = None  # what the device loads itself now
        self._planner = ThreadPoolExecutor(PLANNER_THREADS, thread_name_prefix="loraplex-plan")
        self._loaders = ThreadPoolExecutor(concurrency, thread_name_prefix="loraplex-prefetch")

    @property
    def downloading_bytes(self) -> int:
        """Bytes of the prefetches downloading or converting now (the gauge)."""
        return self.budget.in_flight_bytes

    def state_of(self, key: AdapterKey) -> State | None:
        """The state of ``key``'s prefetch (None: none in the books); for tests and logs."""
        with self._lock:
            found = self._prefetches.get(key)
            return found.state if found is not None else None

    # ------------------------------------------------------------------ event loop side

    def want(self, ref: AdapterRef, token: str | None, *, keep: bool = True) -> Ticket:
        """A job wanting ``ref`` was accepted; never blocks. ``keep=False``: a spilled job (the
        adapter is admitted on probation, as ``AdapterCache.admit(keep=False)``)."""
        ticket = Ticket(ref, token, keep)
        with self._lock:
            if not self._stopped:
                self._planner.submit(self._plan, ticket)
        return ticket

    def release(self, ticket: Ticket) -> None:
        """The job is over, however it ended; a prefetch nobody wants any more is dropped."""
        with self._lock:
            if ticket.released:
                return
            ticket.released = True
            prefetch = ticket.prefetch
            if prefetch is None:
                return
            prefetch.wanted -= 1
            dropped = prefetch.wanted == 0 and self._unwanted(prefetch)
        if dropped:
            self._event("dropped")
        self._pump()

    def _unwanted(self, prefetch: _Prefetch) -> bool:
        """Nobody wants ``prefetch`` (lock held): out of the books unless it runs (it checks
        itself); True when it was dropped before it started."""
        if prefetch.state is State.PENDING:
            self._pending.remove(prefetch)
            self._retire(prefetch)
            return True
        if prefetch.state is State.DONE:  # an ordinary host-tier entry from now on
            self._retire(prefetch)
        return False

    # ------------------------------------------------------------------ device thread side

    def settle(self, key: AdapterKey, lookup: Callable[[], H | None]) -> Settled[H]:
        """Before the device looks ``key`` up: wait for its prefetch in flight, take over one
        that has not started; returns ``lookup()`` and counts hit, wait or miss (nothing when
        no prefetch was involved and the adapter was cached anyway)."""
        with self._lock:
            self._device_loading = None  # the device's previous load, if any, is over
            prefetch = self._prefetches.get(key)
            arrived = prefetch.state if prefetch is not None else None
            if prefetch is not None and arrived is State.PENDING:
                self._pending.remove(prefetch)  # the device loads it now: no second download
                self._retire(prefetch)
        if prefetch is not None and arrived is State.RUNNING:
            prefetch.done.wait()  # bounded by the download's own timeouts, as on the device
        if prefetch is not None and arrived in (State.RUNNING, State.DONE):
            with self._lock:
                if prefetch.state is State.DONE:
                    self._retire(prefetch)  # used: no longer prefetched-but-unused
        if prefetch is not None:
            self._pump()  # its bytes no longer count: the next may start
        found = lookup()
        if found is None:
            with self._lock:
                self._device_loading = key  # no prefetch of it until this load is over
            self._event("miss")
        elif arrived is State.RUNNING:
            self._event("wait")
            return Settled(found, prefetch.source if prefetch is not None else None)
        elif arrived is State.DONE:
            self._event("hit")
        return Settled(found)

    # ------------------------------------------------------------------ planner / loaders

    def _plan(self, ticket: Ticket) -> None:
        if ticket.released:
            return
        try:
            plan = self.loader.plan(ticket.ref, ticket.token)
        except LoraplexError as exc:  # the job's own load on the device answers it
            log.info("no prefetch of %s: %s", ticket.ref.repo_id, exc.message)
            self._event("failed")
            return
        except Exception:  # logged with its trace; the job's own load on the device answers it
            log.exception("no prefetch of %s: resolving it failed", ticket.ref.repo_id)
            self._event("failed")
            return
        if not plan.needed:
            return
        if not self.budget.ever_fits(plan.size or 0):  # the device loads it, as without prefetch
            self._event("skipped")
            return
        with self._lock:
            if ticket.released or self._stopped or plan.key == self._device_loading:
                return
            prefetch = self._prefetches.get(plan.key)
            if prefetch is None:
                prefetch = _Prefetch(plan.key, plan.size, ticket.token, ticket.keep)
                self._prefetches[plan.key] = prefetch
                self._pending.append(prefetch)
            prefetch.wanted += 1
            ticket.prefetch = prefetch
        self._pump()

    def _pump(self) -> None:
        """Start what the bounds allow, oldest first (lock not held by the caller)."""
        with self._lock:
            while self._pending and not self._stopped:
                prefetch = self._pending[0]
                size = prefetch.size or 0  # unknown: counted once downloaded
                if not self.budget.may_start(size):
                    break
                self._pending.popleft()
                prefetch.state = State.RUNNING
                self._count(prefetch, size)
                self.budget.running += 1
                self._loaders.submit(self._run, prefetch)

    def _run(self, prefetch: _Prefetch) -> None:
        event = "failed"
        try:
            event = self._load(prefetch)
        except LoraplexError as exc:
            log.info(
                "prefetch of %s failed (its jobs load it on the device): %s",
                prefetch.key,
                exc.message,
            )
        except Exception:  # logged with its trace; the jobs load it on the device
            log.exception("prefetch of %s failed; its jobs load it on the device", prefetch.key)
        finally:
            with self._lock:
                self.budget.running -= 1
                self.budget.in_flight_bytes -= prefetch.counted
                prefetch.counted = 0
                if prefetch.state is State.RUNNING:
                    self._retire(prefetch)
                prefetch.done.set()
            self._event(event)
            self._pump()

    def _load(self, prefetch: _Prefetch) -> str:
        """Download, convert, admit (loader thread); returns the event to count."""
        file, size, prefetch.source = self.loader.download(prefetch.key, prefetch.token)
        with self._lock:
            if prefetch.size is None:  # unknown until now: counted from here on
                self._count(prefetch, size)
            if prefetch.wanted == 0:
                return "unwanted"
        converted = self.loader.convert(file)
        if converted is None:
            return "slow"
        value, nbytes = converted
        with self._lock:
            if prefetch.wanted == 0:
                return "unwanted"
        self.loader.admit(prefetch.key, value, nbytes, prefetch.keep)
        with self._lock:
            if prefetch.wanted > 0 and prefetch.state is State.RUNNING:
                prefetch.state = State.DONE
                prefetch.nbytes = nbytes
                self.budget.unused_bytes += nbytes
        return "admitted"

    def _count(self, prefetch: _Prefetch, size: int) -> None:
        prefetch.counted += size
        self.budget.in_flight_bytes += size

    def _retire(self, prefetch: _Prefetch) -> None:
        """Out of the books (lock held): no longer waiting, unused or findable."""
        if prefetch.state is State.DONE:
            self.budget.unused_bytes -= prefetch.nbytes
        prefetch.state = State.OVER
        if self._prefetches.get(prefetch.key) is prefetch:
            del self._prefetches[prefetch.key]

    def _event(self, event: str) -> None:
        with self._lock:
            self.events[event] += 1
        self._on_event(event)

    def stop(self) -> None:
        """Drop what waits, let what runs finish, join the threads (idempotent)."""
        with self._lock:
            self._stopped = True
            while self._pending:
                self._retire(self._pending.popleft())
        self._planner.shutdown(wait=True, cancel_futures=True)
        self._loaders.shutdown(wait=True, cancel_futures=True)
        with self._lock:  # a load cancelled before it ran must not leave a waiter hanging
            for prefetch in list(self._prefetches.values()):
                if prefetch.state is State.RUNNING:
                    self._retire(prefetch)
                prefetch.done.set()
