"""The worker's HTTP shell (FastAPI): wires the contract to the queue and the engine.

Two apps on two ports of one process (``loraplex worker`` serves both, see
:mod:`loraplex.worker.cli`):

* ``create_app(settings, engine_factory=...)`` — the API port (``settings.port``):
  ``/v1/generate`` and ``/v1/state``, for the router only (the worker secret,
  :mod:`loraplex.worker.auth`). Its lifespan builds everything: metrics (own registry), the
  device executor, and — in the background, so ``/healthz`` answers at once — the engine (base
  download + load) and one warm-up generation. ``/readyz`` and ``/v1/generate`` answer 503
  until then. What the handlers share is :class:`~loraplex.worker.runtime.WorkerRuntime`.
* ``create_ops_app(api_app)`` — the metrics port (``settings.metrics_port``): ``/healthz``,
  ``/readyz`` and ``/metrics`` of that same runtime, with no secret, so kubelet probes and
  Prometheus never need (or get) a way into generation.

Endpoints are described in :mod:`loraplex.shared.contract`. ``/readyz`` answers the load's
state as :class:`~loraplex.shared.contract.Readiness` (starting, downloading with byte counts,
loading, warming_up, ready, failed with the reason; :mod:`loraplex.worker.progress`): 200 once
ready, else 503 with ``error`` as every 503 has.

If the base cannot be loaded or served (a missing repo, corrupt files, a pipeline this worker
cannot serve: ``NotServable`` at Engine construction), ``/healthz`` answers 503 with the reason
(as does ``/readyz``, state ``failed``) and ``on_load_failed`` is called with the reason: the
``loraplex worker`` command then exits non-zero shortly after (:mod:`loraplex.worker.cli`), so
Kubernetes shows CrashLoopBackOff with the reason in the pod log instead of a pod unready forever.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from loraplex.worker.auth import RouterOnly
from loraplex.worker.metrics import WorkerMetrics
from loraplex.worker.pipeline import Engine
from loraplex.worker.prefetch_engine import engine_prefetcher, prefetching
from loraplex.worker.queue import Cancelled, CancelReason, CancelToken, DeviceExecutor
from loraplex.worker.runtime import Job, Outcome, WorkerRuntime
from loraplex.worker.settings import WorkerSettings
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from loraplex.shared.contract import (
    GenerateRequest,
    Headers,
    LoadState,
    Readiness,
    WorkerState,
    bearer_token,
)
from loraplex.shared.edge import install_edge_guards
from loraplex.shared.errors import BadRequest, DeadlineExceeded, LoraplexError, WarmingUp
from loraplex.shared.http_errors import error_response, install_handlers, status_of

log = logging.getLogger(__name__)
EngineFactory = Callable[[WorkerSettings], Engine]
# Until the base is warm, tell clients to come back in this many seconds (a tiny model loads in
# ~1 s; SD-1.5 from a warm cache in ~10 s).
WARMING_RETRY_S = 5.0
CLIENT_CLOSED_REQUEST = 499  # nginx's code: nobody reads it, but logs and metrics say why


def load_failure_text(base_model: str, exc: Exception) -> str:
    """The one line that says why ``base_model`` cannot be served (log, /readyz, exit)."""
    why = exc.message if isinstance(exc, LoraplexError) else f"{type(exc).__name__}: {exc}"
    return f"loading base {base_model} failed: {why}"


async def _warm(
    runtime: WorkerRuntime, factory: EngineFactory, on_failed: Callable[[str], None] | None
) -> None:
    """Load the base and run one warm-up generation, then turn ready; on failure report it
    (/healthz, /readyz) and call ``on_failed`` with the reason."""
    started = time.perf_counter()
    try:
        engine = await asyncio.to_thread(factory, runtime.settings)
        runtime.progress.warming_up()
        await asyncio.to_thread(engine.warm_up)
    except Exception as exc:  # not hidden: reported, logged and (CLI) the process exits non-zero
        runtime.load_error = load_failure_text(runtime.settings.base_model, exc)
        runtime.progress.failed(runtime.load_error)
        if isinstance(exc, LoraplexError):  # a verdict (not servable, no such repo): no trace
            log.error("%s", runtime.load_error)
        else:
            log.exception("%s", runtime.load_error)
        if on_failed is not None:
            on_failed(runtime.load_error)
        return
    runtime.engine = engine
    engine.prefetcher = engine_prefetcher(engine, runtime.settings, runtime.metrics)
    runtime.ready = True
    runtime.progress.ready()
    log.info("worker ready in %.1f s", time.perf_counter() - started)


def create_app(
    settings: WorkerSettings,
    *,
    engine_factory: EngineFactory | None = None,
    on_load_failed: Callable[[str], None] | None = None,
) -> FastAPI:
    """The worker's API app; ``engine_factory`` defaults to loading the base from the Hub
    (reporting the download and load to ``/readyz``; another factory's load shows as starting).
    ``on_load_failed`` is called (in the event loop) with the reason when the base cannot be
    loaded or served; the CLI exits non-zero then, an in-process test server keeps answering.

    Raises ValueError when the settings would expose it without a secret (off loopback)."""
    problem = settings.exposure_problem()
    if problem is not None:
        raise ValueError(problem)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = WorkerRuntime(settings, WorkerMetrics(settings.base_model))
        factory = engine_factory or partial(Engine.load, progress=runtime.progress)
        runtime.executor = DeviceExecutor(
            run_batch=runtime.run,
            max_batch=settings.max_batch,
            batch_key=runtime.batch_key,
            capacity=settings.queue_capacity,
            max_overtake=settings.max_overtake,
            retry_after_s=settings.retry_after_seconds,
            on_change=lambda: runtime.metrics.queue_depth.set(runtime.executor.depth),  # type: ignore[union-attr]
        )
        runtime.executor.start()
        app.state.runtime = runtime
        warming = asyncio.create_task(
            _warm(runtime, factory, on_load_failed), name="worker-warm-up"
        )
        try:
            yield
        finally:
            warming.cancel()
            await runtime.executor.stop()
            if runtime.prefetcher is not None:  # after the executor: a run may wait on it
                await asyncio.to_thread(runtime.prefetcher.stop)

    app = FastAPI(
        title="loraplex worker", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    install_handlers(app)
    _routes(app)
    # Every route of this app is the router's: the secret is checked before the body is read.
    app.add_middleware(RouterOnly, settings=settings)
    install_edge_guards(app, settings)  # Host/Origin/body-size/body-time checks, run first
    return app


def create_ops_app(api: FastAPI) -> FastAPI:
    """Health and metrics of ``api``'s runtime, for the metrics port (no secret, no lifespan:
    ``api`` owns the runtime; until its lifespan has built it, every answer is 503)."""
    ops = FastAPI(
        title="loraplex worker health and metrics", docs_url=None, redoc_url=None, openapi_url=None
    )
    install_handlers(ops)  # the documented {"error"} shape on this port too (404, 405, …)
    _ops_routes(ops, api)
    return ops


def _runtime(request: Request) -> WorkerRuntime:
    return request.app.state.runtime


def _routes(app: FastAPI) -> None:
    @app.post("/v1/generate")
    async def generate(body: GenerateRequest, request: Request) -> Response:
        runtime = _runtime(request)
        if not runtime.ready or runtime.executor is None:
            raise WarmingUp(
                runtime.load_error or "the worker is still loading its base model; retry shortly",
                retry_after_s=WARMING_RETRY_S,
                estimated_time_s=WARMING_RETRY_S,
            )
        group = str(body.adapter) if body.adapter else None
        try:
            # The budget counts from now: the caller's clock is not ours (see Headers).
            budget_s = deadline_budget_s(request.headers.get(Headers.DEADLINE_MS))
            cancel = CancelToken.with_budget(budget_s)
            job = Job(body, bearer_token(request.headers.get("authorization")))
            job.spill = request.headers.get(Headers.PLACEMENT) == "spill"
            if runtime.engine is not None:  # refuse an oversized image before it queues
                runtime.engine.check_size(body)
            with prefetching(runtime.prefetcher, body.adapter, job.token, keep=not job.spill):
                outcome: Outcome = await runtime.executor.submit(
                    group, job, request.is_disconnected, cancel=cancel
                )
        except Cancelled as exc:
            return _cancelled_response(exc, runtime)
        except LoraplexError as exc:
            runtime.metrics.requests.labels(code=str(status_of(exc))).inc()
            raise
        runtime.metrics.requests.labels(code="200").inc()
        return _image_response(outcome, runtime)

    @app.get("/v1/state")
    async def state(request: Request) -> WorkerState:
        # In a thread: every disk_scan_interval_s the state re-scans the HF cache.
        return await asyncio.to_thread(_runtime(request).state)


STARTING = "starting: the worker's runtime is not built yet"
WARMING = "warming up: the base model is not loaded yet"


def _ops_routes(ops: FastAPI, api: FastAPI) -> None:
    def runtime_of() -> WorkerRuntime | None:
        return getattr(api.state, "runtime", None)

    @ops.get("/healthz")
    async def healthz() -> JSONResponse:
        runtime = runtime_of()
        if runtime is None or runtime.load_error:
            reason = runtime.load_error if runtime else STARTING
            return JSONResponse({"error": reason}, status_code=503)
        return JSONResponse({"status": "ok"})

    @ops.get("/readyz")
    async def readyz() -> JSONResponse:
        runtime = runtime_of()
        if runtime is None:
            return _not_ready(Readiness(state=LoadState.STARTING), STARTING)
        readiness = runtime.progress.snapshot()
        if not runtime.ready:
            return _not_ready(readiness, runtime.load_error or WARMING)
        return JSONResponse(
            {"status": "ready", **readiness.model_dump(mode="json", exclude_none=True)}
        )

    @ops.get("/metrics")
    async def metrics() -> Response:
        runtime = runtime_of()
        if runtime is None:
            return JSONResponse({"error": STARTING}, status_code=503)
        runtime.refresh_gauges()
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _not_ready(readiness: Readiness, error: str) -> JSONResponse:
    """503 with the load's state, and ``error`` as on every 503."""
    body = readiness.model_dump(mode="json", exclude_none=True)
    return JSONResponse({**body, "error": error}, status_code=503)


def deadline_budget_s(header: str | None) -> float | None:
    """Seconds left from the ``x-loraplex-deadline-ms`` header (None: no deadline; ≤ 0: spent)."""
    if header is None:
        return None
    try:
        milliseconds = float(header)
    except ValueError:
        milliseconds = math.nan
    if not math.isfinite(milliseconds):
        shown = header[:40]  # never echo an unbounded header back
        raise BadRequest(f"{Headers.DEADLINE_MS} must be a number of milliseconds, not {shown!r}")
    return milliseconds / 1000


def _cancelled_response(exc: Cancelled, runtime: WorkerRuntime) -> Response:
    """Count a request stopped by its client or deadline, and answer it: 499 or 504."""
    metrics = runtime.metrics
    metrics.cancelled.labels(reason=exc.reason.value).inc()
    if not exc.started:
        metrics.dropped.inc()
    log.info("generate request cancelled: %s", exc)
    if exc.reason is CancelReason.CLIENT_GONE:
        metrics.requests.labels(code=str(CLIENT_CLOSED_REQUEST)).inc()
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    error = DeadlineExceeded(
        f"the request's deadline passed ({exc.detail}); retry with fewer steps, a smaller "
        "image or a longer deadline"
    )
    metrics.requests.labels(code=str(status_of(error))).inc()
    return error_response(error)


def _image_response(outcome: Outcome, runtime: WorkerRuntime) -> Response:
    generated = outcome.generated
    switch = generated.switch
    headers = {
        Headers.SWITCH_TIER: switch.tier.value,
        Headers.SWITCH_MS: f"{switch.seconds * 1000:.3f}",
        Headers.COMPUTE_MS: f"{generated.compute_seconds * 1000:.3f}",
        Headers.QUEUE_MS: f"{outcome.queue_seconds * 1000:.3f}",
        Headers.QUEUE_DEPTH: str(runtime.executor.depth if runtime.executor else 0),
        Headers.ACTIVE_ADAPTER: str(switch.active) if switch.active else "",
        Headers.BATCH_SIZE: str(generated.batch_size),
    }
    if switch.active is not None:
        headers[Headers.ADAPTER_COMMIT] = switch.active.commit
    if switch.slow_reason:
        headers[Headers.SLOW_REASON] = switch.slow_reason.text.encode("ascii", "replace").decode()
    return Response(generated.image, media_type=generated.media_type, headers=headers)
