"""The worker's request queue: one executor per device, bounded, grouping by adapter.

:class:`GroupingQueue` is the pure policy. Algorithm of :meth:`GroupingQueue.pop`:

1. Drop jobs whose client went away before they started (counted, never run).
2. If some waiting job uses the adapter of the job that ran last, take the OLDEST such job —
   unless taking it would overtake a job that has already been overtaken ``max_overtake``
   times; then take the head of the queue.
3. Otherwise take the head (FIFO).

So a run of same-adapter requests saves switches, and no request is ever overtaken by more
than ``max_overtake`` later ones (each overtake increments a counter on every job passed over,
and a job at the limit blocks further overtaking). ``max_overtake=0`` is strict FIFO.

:class:`DeviceExecutor` is the async shell: ``submit`` enqueues (raising QueueFull with
Retry-After when at capacity) and waits, watching for the client's disconnect while the job
has not started; one loop task feeds a single worker thread, so the device runs one
generation at a time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from loraplex.shared.errors import QueueFull, WarmingUp

log = logging.getLogger(__name__)
DISCONNECT_POLL_S = 0.1


class ClientGone(Exception):
    """The client disconnected before its job started; the job was dropped."""


@dataclass(eq=False)
class Job:
    """One queued request: its grouping key (adapter id or None) and what to run."""

    group: Hashable
    payload: Any
    seq: int = 0
    overtaken: int = 0
    cancelled: bool = False
    started: bool = False
    future: asyncio.Future[Any] | None = field(default=None, repr=False)


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
        self._drop_cancelled()
        if not self._jobs:
            return None
        chosen = 0
        for i, job in enumerate(self._jobs):
            if job.group == last_group:
                passed = list(itertools.islice(self._jobs, i))
                if all(p.overtaken < self.max_overtake for p in passed):
                    for p in passed:
                        p.overtaken += 1
                    chosen = i
                break
        job = self._jobs[chosen]
        del self._jobs[chosen]
        return job

    def cancel(self, job: Job) -> bool:
        """Drop a waiting job now (its client left); False when it already started."""
        job.cancelled = True
        try:
            self._jobs.remove(job)
        except ValueError:
            return False
        self.dropped += 1
        return True

    def _drop_cancelled(self) -> None:
        kept = deque(j for j in self._jobs if not j.cancelled)
        self.dropped += len(self._jobs) - len(kept)
        self._jobs = kept


class DeviceExecutor:
    """Runs jobs one at a time on a dedicated thread, fed from a :class:`GroupingQueue`."""

    def __init__(
        self,
        run: Callable[[Any], Any],
        *,
        capacity: int,
        max_overtake: int,
        retry_after_s: float,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.queue = GroupingQueue(capacity, max_overtake)
        self._run = run
        self._retry_after_s = retry_after_s
        self._on_change = on_change
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loraplex-device")
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_group: Hashable = None
        self._stopping = False
        self.in_flight = 0
        self.completed = 0

    @property
    def depth(self) -> int:
        return len(self.queue)

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
        self, group: Hashable, payload: Any, is_disconnected: Callable[[], Awaitable[bool]]
    ) -> Any:
        """Queue ``payload`` and return its result; raises ClientGone if dropped unstarted."""
        job = Job(group, payload, future=asyncio.get_running_loop().create_future())
        try:
            self.queue.push(job)
        except QueueFull as exc:
            exc.retry_after_s = self._retry_after_s
            raise
        self._changed()
        assert job.future is not None
        try:
            while not job.started:
                done, _ = await asyncio.wait({job.future}, timeout=DISCONNECT_POLL_S)
                if done or job.started:
                    break
                if await is_disconnected() and self.queue.cancel(job):
                    self._on_change()
                    raise ClientGone
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            self.queue.cancel(job)
            raise

    def _changed(self) -> None:
        self._wake.set()
        self._on_change()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            job = self.queue.pop(self._last_group)
            self._on_change()
            if job is None:
                await self._wake.wait()
                self._wake.clear()
                continue
            job.started = True
            self._last_group = job.group
            self.in_flight = 1
            try:
                running = loop.run_in_executor(self._pool, self._run, job.payload)
                result = await asyncio.shield(running)
            except Exception as exc:  # noqa: BLE001 - handed to the request that waits for it
                _settle(job, exc=exc)
            else:
                _settle(job, result=result)
            finally:
                self.in_flight = 0
                self.completed += 1
                self._on_change()


def _settle(job: Job, *, result: Any = None, exc: BaseException | None = None) -> None:
    if job.future is None or job.future.done():
        return
    if exc is not None:
        job.future.set_exception(exc)
    else:
        job.future.set_result(result)
