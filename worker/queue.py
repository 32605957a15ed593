"""The worker's request queue: one executor per device, bounded, grouping by adapter.

:class:`GroupingQueue` is the pure policy. Algorithm of :meth:`GroupingQueue.pop`:

1. Drop jobs whose client went away before they started (counted, never run).
2. If some waiting job uses the adapter of the job that ran last, take the OLDEST such job —
   unless taking it would overtake a job that has already been overtaken ``max_overtake``
   times; then take the head of the queue.
3. Otherwise take the head (FIFO).
4. Batching (:meth:`GroupingQueue.pop_batch`, ``max_batch`` > 1): then walk the jobs behind
   the one taken, oldest first, and add each of the same group and the same (non-None) batch
   key, until the batch has ``max_batch`` jobs. Adding one overtakes every job before it that
   is not in the batch: each such job's counter goes up; when one of them is already at
   ``max_overtake`` the walk stops (every later candidate would pass it too).

So a run of same-adapter requests saves switches, and no request is ever overtaken by more
than ``max_overtake`` later ones (each overtake increments a counter on every job passed over,
and a job at the limit blocks further overtaking; jobs of one batch run together, so they do
not overtake each other). ``max_overtake=0`` is strict FIFO: a batch is then only consecutive
jobs at the head. :meth:`GroupingQueue.expire` removes waiting jobs whose deadline has passed.

:class:`DeviceExecutor` is the async shell: ``submit`` enqueues (raising QueueFull with
Retry-After when at capacity) and waits; one loop task feeds a single worker thread, so the
device runs one generation (one pipeline call, of up to ``max_batch`` jobs) at a time. Each job
of a batch gets its own answer: the batch function returns one result or exception per job.

Cancellation (:class:`CancelToken`, one per request): the client's disconnect and the
request's deadline. While the job waits, ``submit`` polls both every ``DISCONNECT_POLL_S`` and
drops the job (:class:`Cancelled` with ``started=False``); the executor loop also drops expired
jobs before it picks the next one. Once the job runs, ``submit`` keeps polling and sets the
token; the run function checks it (the engine does at every denoising step, and raises
:class:`Cancelled`), so a gone client or a passed deadline frees the device within one step.
A job that shares its run with others (a batch) answers Cancelled (``started=True``) at once
instead, and its batch goes on for the others (the engine stops the pipeline only when every
job of the batch is cancelled); its result is discarded.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from loraplex.worker.cancel import DEADLINE_GRACE_S, Cancelled, CancelReason, CancelToken

from loraplex.shared.errors import QueueFull, WarmingUp

# Re-exported: callers have imported the cancellation types from here since before cancel.py.
__all__ = [
    "DEADLINE_GRACE_S",
    "CancelReason",
    "CancelToken",
    "Cancelled",
    "DeviceExecutor",
    "GroupingQueue",
    "Job",
]

log = logging.getLogger(__name__)
# How often a waiting request checks its client and deadline: the worst added latency of a
# drop or of a stop signal; an is_disconnected() poll costs a few µs.
DISCONNECT_POLL_S = 0.1


@dataclass(eq=False)
class Job:
    """One queued request: its grouping key (adapter id or None) and what to run.

    ``cancel`` is its stop signal; its deadline lets :meth:`GroupingQueue.expire` drop the job
    unstarted once nobody waits for the answer any more. ``batch``: jobs of one group with
    equal batch keys may share a run (None: never); ``batch_size``: how many did, once started.
    """

    group: Hashable
    payload: Any
    seq: int = 0
    overtaken: int = 0
    cancelled: bool = False
    started: bool = False
    future: asyncio.Future[Any] | None = field(default=None, repr=False)
    cancel: CancelToken | None = field(default=None, repr=False)
    batch: Hashable = None
    batch_size: int = 0

    @property
    def deadline(self) -> float | None:
        return self.cancel.deadline if self.cancel is not None else None


class GroupingQueue:
    """Bounded FIFO that lets same-adapter jobs overtake, at most ``max_overtake`` times each."""

    def __init__(self, capacity: int, max_overtake: int) -> None:
        if capacity < 1 or max_overtake < 0:
            raise ValueError("capacity must be ≥ 1 and max_overtake ≥ 0")
        self.capacity = capacity
        self.max_overtake = max_overtake
        self._jobs: deque[Job] = deque()
        self._seq = itertools.count()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def push(self, job: Job) -> None:
        if len(self._jobs) >= self.capacity:
            raise QueueFull(f"the worker queue is full ({self.capacity} waiting); retry shortly")
        job.seq = next(self._seq)
        self._jobs.append(job)

    def pop(self, last_group: Hashable) -> Job | None:
        """The next job to run after one of ``last_group`` (see the module docstring)."""
        batch = self.pop_batch(last_group, 1)
        return batch[0] if batch else None

    def pop_batch(self, last_group: Hashable, max_batch: int) -> list[Job]:
        """The next jobs to run together after one of ``last_group``, oldest first: the job
        :meth:`pop` would take and up to ``max_batch - 1`` more (module docstring, step 4)."""
        self._drop_cancelled()
        if not self._jobs:
            return []
        jobs = list(self._jobs)
        chosen = 0
        for i, job in enumerate(jobs):
            if job.group == last_group:
                if self._overtake(jobs[:i]):
                    chosen = i
                break
        first = jobs[chosen]
        taken, passed = [first], jobs[:chosen]
        for job in jobs[chosen + 1 :]:
            if len(taken) >= max_batch or first.batch is None:
                break
            if job.group != first.group or job.batch != first.batch:
                passed.append(job)
            elif not self._overtake(passed):
                break
            else:
                taken.append(job)
        self._jobs = deque(j for j in jobs if all(j is not t for t in taken))
        return taken

    def _overtake(self, passed: list[Job]) -> bool:
        """Count one overtake on each of ``passed``; False (nothing counted) when one of them
        is at the bound already."""
        if any(p.overtaken >= self.max_overtake for p in passed):
            return False
        for p in passed:
            p.overtaken += 1
        return True

    def waiting(self, group: Hashable) -> int:
        """Waiting jobs of ``group`` (the same-adapter work still queued)."""
        return sum(1 for j in self._jobs if j.group == group and not j.cancelled)

    def cancel(self, job: Job) -> bool:
        """Drop a waiting job now (its client left); False when it already started."""
        job.cancelled = True
        try:
            self._jobs.remove(job)
        except ValueError:
            return False
        self.dropped += 1
        return True

    def expire(self, now: float) -> list[Job]:
        """Remove and return the waiting jobs whose deadline is at or before ``now``."""
        expired = [j for j in self._jobs if j.deadline is not None and j.deadline <= now]
        if expired:
            for job in expired:
                job.cancelled = True
            self._drop_cancelled()
        return expired

    def _drop_cancelled(self) -> None:
        kept = deque(j for j in self._jobs if not j.cancelled)
        self.dropped += len(self._jobs) - len(kept)
        self._jobs = kept


# Device thread: (payloads, their tokens, same-group jobs still waiting) → one result or
# exception instance per payload, in order; raising answers every job with that exception.
RunBatch = Callable[[Sequence[Any], Sequence[CancelToken], int], Sequence[Any]]


class DeviceExecutor:
    """Runs jobs one run at a time on a dedicated thread, fed from a :class:`GroupingQueue`.

    ``run(payload, cancel)`` does one job on that thread; it should check ``cancel`` where it
    can stop (and raise :class:`Cancelled`). Or, instead, ``run_batch`` (:data:`RunBatch`)
    does up to ``max_batch`` jobs whose ``batch_key(payload)`` (computed at submit; None: never
    batched) and group are equal. ``clock`` must be the tokens' clock."""

    def __init__(
        self,
        run: Callable[[Any, CancelToken], Any] | None = None,
        *,
        capacity: int,
        max_overtake: int,
        retry_after_s: float,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        run_batch: RunBatch | None = None,
        max_batch: int = 1,
        batch_key: Callable[[Any], Hashable] | None = None,
    ) -> None:
        if (run is None) == (run_batch is None) or max_batch < 1:
            raise ValueError("give exactly one of run and run_batch, and max_batch ≥ 1")
        self.queue = GroupingQueue(capacity, max_overtake)
        self._run_batch = run_batch or _one_at_a_time(run)  # type: ignore[arg-type]
        self.max_batch = max_batch if run_batch is not None else 1
        self._batch_key = batch_key
        self._retry_after_s = retry_after_s
        self._on_change = on_change
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loraplex-device")
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_group: Hashable = None
        self._stopping = False
        self.in_flight = 0
        self.completed = 0
        self.running: Job | None = None  # the (first) job on the device now
        self._running_since: float | None = None  # clock() when that run began

    @property
    def depth(self) -> int:
        return len(self.queue)

    @property
    def running_seconds(self) -> float:
        """Seconds the run on the device has been going (0 when idle)."""
        since = self._running_since
        return 0.0 if since is None else max(0.0, self._clock() - since)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="device-executor")

    async def stop(self) -> None:
        """Stop taking jobs: the one running finishes and gets its answer; waiting ones get 503."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._pool.shutdown(wait=True)
        while (job := self.queue.pop(None)) is not None:
            _settle(job, exc=WarmingUp("the worker is shutting down; retry on another replica"))

    async def submit(
        self,
        group: Hashable,
        payload: Any,
        is_disconnected: Callable[[], Awaitable[bool]],
        *,
        cancel: CancelToken | None = None,
    ) -> Any:
        """Queue ``payload`` and return its result (see the module docstring on cancellation).

        Raises :class:`Cancelled` when the client left or ``cancel``'s deadline passed: with
        ``started=False`` if the job never ran; a running job ends with whatever the run
        function raises once it sees ``cancel`` set."""
        cancel = cancel or CancelToken(clock=self._clock)
        if (reason := cancel.check()) is not None:  # the budget was spent before it arrived
            raise Cancelled(reason, started=False, detail="before it was queued")
        loop = asyncio.get_running_loop()
        job = Job(group, payload, future=loop.create_future(), cancel=cancel)
        if self._batch_key is not None:
            job.batch = self._batch_key(payload)
        try:
            self.queue.push(job)
        except QueueFull as exc:
            exc.retry_after_s = self._retry_after_s
            raise
        self._changed()
        try:
            return await self._wait(job, cancel, is_disconnected)
        except asyncio.CancelledError:
            # Nobody will read the answer (this handler was cancelled): stop the work too, and
            # retrieve its outcome so asyncio does not log it as never retrieved.
            cancel.client_gone()
            self.queue.cancel(job)
            job.future.add_done_callback(_discard)
            raise

    async def _wait(
        self, job: Job, cancel: CancelToken, is_disconnected: Callable[[], Awaitable[bool]]
    ) -> Any:
        future = job.future
        assert future is not None
        while not future.done():
            await asyncio.wait({future}, timeout=DISCONNECT_POLL_S)
            if future.done():
                break
            if await is_disconnected():
                cancel.client_gone()
            reason = cancel.check()
            if reason is not None and self.queue.cancel(job):
                self._on_change()
                raise Cancelled(reason, started=False, detail="while it waited in the queue")
            if reason is not None and job.batch_size > 1:  # the batch goes on for the others
                future.add_done_callback(_discard)
                raise Cancelled.in_batch(reason, job.batch_size)
            # Started alone: the run function sees the token at its next check and raises.
        return future.result()

    def _changed(self) -> None:
        self._wake.set()
        self._on_change()

    def _expire(self) -> None:
        for job in self.queue.expire(self._clock()):
            detail = "while it waited in the queue"
            _settle(job, exc=Cancelled(CancelReason.DEADLINE, started=False, detail=detail))

    async def _loop(self) -> None:
        while not self._stopping:
            self._expire()  # an expired job must not take the device from a live one
            batch = self.queue.pop_batch(self._last_group, self.max_batch)
            self._on_change()
            if not batch:
                await self._wake.wait()
                self._wake.clear()
                continue
            for job in batch:
                job.batch_size = len(batch)
                job.started = True
            self._last_group = batch[0].group
            self.in_flight = len(batch)
            self.running = batch[0]
            self._running_since = self._clock()
            try:
                await self._run_on_device(batch, self.queue.waiting(batch[0].group))
            finally:
                self.running = None
                self._running_since = None
                self.in_flight = 0
                self.completed += len(batch)
                self._on_change()

    async def _run_on_device(self, batch: list[Job], upcoming: int) -> None:
        """Run ``batch`` on the device thread and settle each job's future on its own."""
        payloads = [job.payload for job in batch]
        cancels = [job.cancel or CancelToken(clock=self._clock) for job in batch]
        loop = asyncio.get_running_loop()
        try:
            running = loop.run_in_executor(self._pool, self._run_batch, payloads, cancels, upcoming)
            results = list(await asyncio.shield(running))
            if len(results) != len(batch):
                raise RuntimeError(f"the run returned {len(results)} results for {len(batch)}")
        except Exception as exc:  # noqa: BLE001 - handed to the requests that wait for it
            for job in batch:
                _settle(job, exc=exc)
            return
        for job, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                _settle(job, exc=result)
            else:
                _settle(job, result=result)


def _one_at_a_time(run: Callable[[Any, CancelToken], Any]) -> RunBatch:
    def run_batch(payloads: Sequence[Any], cancels: Sequence[CancelToken], _: int) -> list[Any]:
        return [run(payloads[0], cancels[0])]

    return run_batch


def _discard(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _settle(job: Job, *, result: Any = None, exc: BaseException | None = None) -> None:
    if job.future is None or job.future.done():
        return
    if exc is not None:
        job.future.set_exception(exc)
    else:
        job.future.set_result(result)
