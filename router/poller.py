"""The state poller: the I/O shell that keeps :mod:`loraplex.router.pools` current.

Every ``interval_s`` it reads each replica's ``GET /v1/state`` (concurrently, one poll in
flight per replica) and writes the answer into its :class:`~loraplex.router.pools.ReplicaState`;
a failed, oversized, malformed or wrong-base answer marks the replica not ready.

A replica whose poll failed and then succeeds again was restarted (or its network came back):
its forwarding backoff ends at once (:meth:`~loraplex.router.retry.ReplicaBackoff.came_back`),
so it takes requests as soon as it says it is ready. The worker's ``load_error`` (its base
cannot be served) is kept on the replica until it is ready again; the pool then answers 503
"failing" with that reason instead of holding (:mod:`loraplex.router.service`).

The poll carries the worker secret (a default header of the router's worker session, see
:func:`loraplex.router.runtime.worker_headers`); a worker answering 401/403 does not hold the
router's secret, which is logged once per replica as an error naming the settings to fix (never
the secret), and the replica stays out of the pool until a poll succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from loraplex.router.pools import Pool, PoolRegistry, ReplicaState

from loraplex.shared.contract import WorkerState

log = logging.getLogger(__name__)

MAX_STATE_BYTES = 1 << 20  # a state of ~10,000 adapter keys; more is a broken or hostile worker
REFUSED = (401, 403)  # the worker's answers to a missing or wrong worker secret


class StatePollFailed(ValueError):
    """``GET /v1/state`` answered ``status``, not 200. Unlike aiohttp's ClientResponseError it
    holds no request_info, whose headers would carry the worker secret into any repr."""

    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(f"GET /v1/state answered {status}")


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or ValueError once it passes ``limit`` bytes (never held in full)."""
    if resp.content_length is not None and resp.content_length > limit:
        raise ValueError(f"state answer of {resp.content_length} bytes is over {limit}")
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ValueError(f"state answer over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class StatePoller:
    """Polls ``GET /v1/state`` of every replica every ``interval_s`` (concurrently)."""

    def __init__(
        self,
        registry: PoolRegistry,
        session: aiohttp.ClientSession,
        *,
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
    ) -> None:
        self.registry = registry
        self.session = session
        self.interval_s = interval_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._task: asyncio.Task[None] | None = None
        self._refused: set[str] = set()  # endpoints whose refusal of the secret was logged
        self._unreachable: set[str] = set()  # endpoints whose last poll failed

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loraplex-state-poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def poll_once(self) -> None:
        pairs = self.registry.replicas()
        await asyncio.gather(*(self._poll(pool, replica) for pool, replica in pairs))

    async def _run(self) -> None:
        # One poll in flight per replica, started every interval: a hung replica delays only
        # its own next poll, not the pool's (waiting for all would stretch every cycle).
        inflight: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                pairs = self.registry.replicas()
                for pool, replica in pairs:
                    task = inflight.get(replica.endpoint)
                    if task is None or task.done():
                        inflight[replica.endpoint] = asyncio.create_task(self._poll(pool, replica))
                live = {replica.endpoint for _, replica in pairs}
                for endpoint in [e for e in inflight if e not in live]:
                    inflight.pop(endpoint).cancel()
                self._refused &= live
                self._unreachable &= live
                await asyncio.sleep(self.interval_s)
        finally:
            for task in inflight.values():
                task.cancel()

    async def _poll(self, pool: Pool, replica: ReplicaState) -> None:
        try:
            async with self.session.get(
                f"{replica.endpoint}/v1/state", timeout=self.timeout
            ) as resp:
                if resp.status != 200:
                    raise StatePollFailed(resp.status)
                body = await _read_capped(resp, MAX_STATE_BYTES)
            state = WorkerState.model_validate_json(body)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # ValidationError too
            self._not_ready(pool, replica, exc)
        else:
            self._refused.discard(replica.endpoint)
            if replica.endpoint in self._unreachable:
                self._unreachable.discard(replica.endpoint)
                replica.backoff.came_back()
            if state.base_model != pool.base_model:
                log.error(
                    "replica %s serves %s, not %s; ignoring it",
                    replica.endpoint,
                    state.base_model,
                    pool.base_model,
                )
                replica.ready = False
            else:
                replica.observe_state(state, pool.clock())
                note_failure(replica, state)
        pool.refresh()

    def _not_ready(self, pool: Pool, replica: ReplicaState, exc: Exception) -> None:
        refused = isinstance(exc, StatePollFailed) and exc.status in REFUSED
        if refused and replica.endpoint not in self._refused:
            self._refused.add(replica.endpoint)
            log.error(
                "replica %s of %s refused the router's worker secret (%s): set "
                "LORAPLEX_ROUTER_WORKER_SECRET to the workers' LORAPLEX_WORKER_SECRET",
                replica.endpoint,
                pool.base_model,
                exc,
            )
        elif replica.ready:
            log.warning("replica %s of %s not ready: %s", replica.endpoint, pool.base_model, exc)
        replica.ready = False
        self._unreachable.add(replica.endpoint)


def note_failure(replica: ReplicaState, state: WorkerState) -> None:
    """Keep the worker's reason its base cannot be served until it is ready again (a worker
    that failed exits, and its restart says nothing until it fails again)."""
    if state.load_error:
        if replica.failure != state.load_error:
            log.error("replica %s cannot serve: %s", replica.endpoint, state.load_error)
        replica.failure = state.load_error
    elif state.ready:
        replica.failure = None
