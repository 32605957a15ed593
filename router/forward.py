"""Forwarding a generation to a worker: pick, send, retry on another replica, stream back.

Transport: one pooled ``aiohttp.ClientSession`` per app. Chosen by measurement
(``bench/router_overhead.py``, and the figures in issue 4 on this 2-core machine): a FastAPI
proxy forwarding through a plain ``httpx.AsyncClient`` managed ~300 req/s, httpx over the
aiohttp transport ~1,500, aiohttp directly ~2,500 (httpx's pool is slow under concurrency,
encode/httpx#3215). The forwarding path is small enough that the httpx API buys nothing here.

Retry rule (the pure decisions are :mod:`loraplex.router.retry`; this module does the I/O):
a failure *before the answer starts* (connect error, reset, 5xx, 429 queue full) is retried
on another available replica, up to ``attempts`` replicas per round and within the request's
:class:`~loraplex.router.retry.RetryBudget`. Answers up to ``buffer_limit_bytes`` are read
whole before the client gets a byte, so a body cut short is retried too; larger answers
stream and are not retried once started. 4xx answers (bad parameters, adapter refused) are
the worker's verdict and pass through unchanged. An unreachable replica, one that drops the
connection, or one answering 503 is backed off (:meth:`~loraplex.router.pools.Pool.mark_failed`)
and the round ends with :class:`ReplicasLost` when that is why it failed: the caller
(:mod:`loraplex.router.service`) holds for a ready replica and tries again, as for a restart.

Deadline and cancellation: each attempt tells the worker how much of the request's deadline
is left (``x-loraplex-deadline-ms``, whole milliseconds rounded down, relative because router
and worker share no clock), and uses the same budget as aiohttp's total timeout. When it
passes, or when the caller's task is cancelled (``router/app.py`` cancels it when the client
disconnects), aiohttp closes the upstream connection; the worker sees the disconnect (and its
own copy of the deadline) and stops the generation at its next denoising step. A worker's 504
means that budget ran out there: it ends the request with 504, never a retry elsewhere (no
replica can give the time back).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
from loraplex.router.metrics import RouterMetrics
from loraplex.router.pick import NoReplicaError, Picker, is_spill
from loraplex.router.pools import Pool, ReplicaState
from loraplex.router.resolve import Route
from loraplex.router.retry import (
    Action,
    GiveUp,
    RetryBudget,
    Transport,
    buffer_whole,
    classify_failure,
    give_up,
)

from loraplex.shared.contract import GenerateRequest, Headers
from loraplex.shared.errors import DeadlineExceeded, QueueFull, Unavailable, UpstreamFailed

log = logging.getLogger(__name__)

# Worker answer headers the client may see (timings, which tier the adapter came from).
PASSED_HEADERS = (
    Headers.SWITCH_TIER,
    Headers.SWITCH_MS,
    Headers.COMPUTE_MS,
    Headers.QUEUE_MS,
    Headers.ADAPTER_COMMIT,
)


@dataclass
class WorkerAnswer:
    """A worker's answer: whole ``body`` or a ``stream`` (exactly one is set)."""

    status: int
    headers: dict[str, str]
    media_type: str
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None
    # Releases a streamed answer's connection and in-flight count. Idempotent; call it when
    # the stream may never be iterated (a client gone, a sibling image failed).
    close: Callable[[], None] = field(default=lambda: None)


class _StreamRelease:
    """Idempotent release of one streamed worker answer: its connection and the replica's
    in-flight count (the very replica object that was counted up)."""

    def __init__(self, resp: aiohttp.ClientResponse, replica: ReplicaState | None) -> None:
        self._resp, self._replica, self._done = resp, replica, False

    def __call__(self) -> None:
        if self._done:
            return
        self._done = True
        self._resp.release()
        if self._replica is not None:
            self._replica.own_inflight -= 1


class ReplicasLost(Unavailable):
    """The round's replicas went away before answering (dropped, refused, 503: a restart looks
    like that): the caller holds for a ready replica and tries again. A 503 if it escapes."""


class _RetryableError(Exception):
    """This attempt failed before the answer started; another replica may succeed."""

    def __init__(self, message: str, *, queue_full: bool = False, lost: bool = False) -> None:
        super().__init__(message)
        self.queue_full = queue_full  # the worker answered 429: its queue was full
        self.lost = lost  # the replica went away (backed off), not a failure of this request


class Forwarder:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        picker: Picker,
        metrics: RouterMetrics,
        *,
        attempts: int = 3,
        connect_timeout_s: float = 2.0,
        buffer_limit_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.session = session
        self.picker = picker
        self.metrics = metrics
        self.attempts = attempts
        self.connect_timeout_s = connect_timeout_s
        self.buffer_limit_bytes = buffer_limit_bytes

    async def generate(
        self,
        pool: Pool,
        route: Route,
        request: GenerateRequest,
        deadline: float,
        token: str | None = None,
        budget: RetryBudget | None = None,
    ) -> WorkerAnswer:
        """Send ``request`` to a replica of ``pool``: one round of at most ``attempts``
        replicas, each attempt taken from ``budget`` (default: ``attempts`` of them); see the
        module docstring for retries. Raises :class:`ReplicasLost` when the round failed
        because replicas went away.

        ``token`` (the caller's Hub token) goes to the worker only for a gated/private adapter,
        which the worker must download with it."""
        budget = budget or RetryBudget(self.attempts)
        body = request.model_dump_json(exclude_none=True).encode()
        headers = {"content-type": "application/json"}
        if token and route.needs_token:
            headers["authorization"] = f"Bearer {token}"
        tried: list[str] = []
        last_error = "no replica was ready"
        queue_full = lost = False
        while len(tried) < self.attempts:
            try:
                views = pool.ready_views(exclude=tried)
                view = self.picker.pick(views, route.adapter_key)
            except NoReplicaError:
                break
            if not budget.take():
                break
            tried.append(view.endpoint)
            if budget.spent > 1:
                self.metrics.retries.labels(route.base_model).inc()
            spill = is_spill(self.picker, views, route.adapter_key, view)  # docs/placement.md
            sent = {**headers, Headers.PLACEMENT: "spill"} if spill else headers
            try:
                return await self._attempt(pool, view.endpoint, body, sent, deadline)
            except _RetryableError as exc:
                last_error = str(exc)
                queue_full = queue_full or exc.queue_full
                lost = lost or exc.lost
        verdict = give_up(
            queue_full=queue_full,
            tried=len(tried),
            pool_ready=pool.ready_event.is_set(),
            lost=lost,
        )
        if verdict is GiveUp.QUEUE_FULL:
            raise QueueFull(
                f"every replica of {route.base_model} has a full queue; retry later",
                retry_after_s=1,
            )
        if verdict is GiveUp.REPLICAS_LOST:
            raise ReplicasLost(
                f"replicas of {route.base_model} went away ({last_error}); they are restarting "
                "or unreachable",
                retry_after_s=1,
            )
        raise UpstreamFailed(
            f"workers of {route.base_model} failed after {len(tried)} attempt(s) "
            f"({last_error}); retry later"
        )

    async def _attempt(
        self, pool: Pool, endpoint: str, body: bytes, headers: dict[str, str], deadline: float
    ) -> WorkerAnswer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("the request deadline passed before a worker answered")
        replica = pool.replicas.get(endpoint)
        timeout = aiohttp.ClientTimeout(total=remaining, connect=self.connect_timeout_s)
        if replica is not None:
            replica.own_inflight += 1
        started = time.monotonic()
        release = True
        try:
            resp = await self.session.post(
                f"{endpoint}/v1/generate",
                data=body,
                headers={**headers, Headers.DEADLINE_MS: str(int(remaining * 1000))},
                timeout=timeout,
            )
            self.metrics.upstream_latency.labels(pool.base_model).observe(
                time.monotonic() - started
            )
            answer, release = await self._read(pool, endpoint, resp, replica)
            return answer
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            raise self._transport_failure(pool, endpoint, exc) from None
        finally:
            if release and replica is not None:
                replica.own_inflight -= 1

    @staticmethod
    def _transport_failure(
        pool: Pool, endpoint: str, exc: OSError | aiohttp.ClientError
    ) -> DeadlineExceeded | _RetryableError:
        """The error to raise for an attempt that got no usable answer (marks per the rule)."""
        kind = _transport_kind(exc)
        decision = classify_failure(transport=kind)
        if decision.action is Action.DEADLINE:
            return DeadlineExceeded(
                "the request deadline passed while a worker was generating; retry with fewer "
                "steps or a smaller image"
            )
        backoff_s = pool.mark_failed(endpoint) if decision.mark_down else 0.0
        if kind is Transport.CONNECT_TIMEOUT:
            return _RetryableError(f"{type(exc).__name__} connecting to a worker", lost=True)
        # %s, never %r: an aiohttp error's repr holds the request headers (the user's token).
        log.warning(
            "worker %s failed before answering: %s: %s; out for %.1f s",
            endpoint,
            type(exc).__name__,
            exc,
            backoff_s,
        )
        return _RetryableError(f"{type(exc).__name__} from a worker", lost=decision.mark_down)

    async def _read(
        self,
        pool: Pool,
        endpoint: str,
        resp: aiohttp.ClientResponse,
        replica: ReplicaState | None,
    ) -> tuple[WorkerAnswer, bool]:
        """Turn a worker response into an answer; returns (answer, release-inflight-now)."""
        status = resp.status
        decision = classify_failure(status)
        if decision.action is Action.DEADLINE:
            detail = _error_text(await resp.read())
            resp.release()
            raise DeadlineExceeded(
                detail.removeprefix(": ") or "the request deadline passed at the worker"
            )
        if decision.retry:
            detail = _error_text(await resp.read())
            resp.release()
            if decision.mark_down:
                pool.mark_failed(endpoint)
            raise _RetryableError(
                f"worker answered {status}{detail}",
                queue_full=decision.queue_full,
                lost=decision.mark_down,
            )
        headers = {h: resp.headers[h] for h in PASSED_HEADERS if h in resp.headers}
        headers[Headers.WORKER] = endpoint
        media_type = resp.headers.get("content-type", "application/octet-stream")
        if status == 200:
            replica = pool.replicas.get(endpoint)
            if replica is not None:
                replica.observe_answer(resp.headers, pool.clock())
                replica.backoff.answered()
        if buffer_whole(status, resp.content_length, self.buffer_limit_bytes):
            data = await resp.read()
            resp.release()
            return WorkerAnswer(status, headers, media_type, body=data), True
        release = _StreamRelease(resp, replica)
        stream = _stream(resp, release)
        return WorkerAnswer(status, headers, media_type, stream=stream, close=release), False


async def _stream(resp: aiohttp.ClientResponse, release: _StreamRelease) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.content.iter_chunked(256 * 1024):
            yield chunk
    finally:
        release()


def _transport_kind(exc: OSError | aiohttp.ClientError) -> Transport:
    """Which transport failure an aiohttp/socket error is."""
    # ConnectionTimeoutError first: it is a TimeoutError too, but means "never connected".
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return Transport.CONNECT_TIMEOUT
    if isinstance(exc, TimeoutError):
        return Transport.DEADLINE
    return Transport.CONNECTION


def _error_text(body: bytes) -> str:
    """``: <message>`` from a worker's ``{"error": …}`` body, or nothing."""
    try:
        message = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return ""
    return f": {message}" if isinstance(message, str) else ""
