"""The router's HTTP shell: public APIs wired to :mod:`loraplex.router.service`.

* ``POST /models/{model_id}`` — Hugging Face Inference API (``inputs``, ``parameters``,
  ``options``) → image bytes by ``Accept`` (png default). On a base model id, the seed's
  ``lora: <adapter id>`` header selects an adapter. ``options.wait_for_model: false`` or
  ``X-Wait-For-Model: false`` → 503 at once while the pool warms up.
* ``POST /v1/images/generations`` — OpenAI images API. ``response_format`` ``b64_json``
  (default) or ``url``: the router is stateless and stores nothing, so ``url`` is a
  ``data:image/<fmt>;base64,…`` URL (RFC 2397) — valid wherever a URL is fetched by a browser
  or PIL, with no expiry and no storage to secure.
* ``GET /v1/models`` (each base with its recently served public ``adapters``), ``GET /healthz``,
  ``GET /readyz``, ``GET /metrics``.
* ``GET /`` — the playground page (:mod:`loraplex.router.playground`; setting ``playground``).

Errors are ``{"error": "<what and what to do>"}`` through :mod:`loraplex.shared.errors`.
A client that disconnects cancels its upstream request (the worker sees the connection close;
:mod:`loraplex.router.client_request` reads that and the rest of the client's side).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from loraplex.router.client_request import (
    ClientGone,
    FormBodyIsJson,
    cancel_on_disconnect,
    user_token,
    wants_to_wait,
)
from loraplex.router.forward import WorkerAnswer
from loraplex.router.openai_errors import OpenAIErrors
from loraplex.router.playground import add_playground_routes
from loraplex.router.pools import PoolSource
from loraplex.router.resolve import CardSource, Route
from loraplex.router.runtime import RouterRuntime, build_runtime
from loraplex.router.schemas import (
    HFTextToImageRequest,
    ModelCardOut,
    ModelList,
    OpenAIErrorBody,
    OpenAIImage,
    OpenAIImageRequest,
    OpenAIImagesResponse,
)
from loraplex.router.service import CLIENT_CLOSED, GenerationCall
from loraplex.router.settings import RouterSettings
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.background import BackgroundTask

from loraplex import __version__
from loraplex.shared.contract import ErrorBody, GenerationParameters, Headers, ImageFormat
from loraplex.shared.edge import install_edge_guards
from loraplex.shared.errors import BadRequest, LoraplexError
from loraplex.shared.http_errors import install_handlers, status_of

log = logging.getLogger(__name__)
_ERROR_CASES = {
    400: "invalid parameters or model id",
    401: "gated or private repo and no token",
    403: "token refused for this repo",
    404: "no such model",
    408: "request head or body did not arrive in time",
    413: "request body over max_body_bytes",
    415: "a cross-origin body that is not JSON",
    422: "model exists but cannot be served here",
    429: "queue full (Retry-After)",
    502: "workers failed after retries",
    503: "pool warming up (estimated_time, Retry-After)",
    504: "deadline passed",
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": why} for code, why in _ERROR_CASES.items()
}
_OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIErrorBody, "description": why} for code, why in _ERROR_CASES.items()
}
_HEADER_DOCS = [
    {
        "name": name,
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": why,
    }
    for name, why in (
        ("lora", "adapter id to apply when the model id is a base (the seed's header)"),
        ("x-wait-for-model", "'false': answer 503 at once while the pool warms up"),
        ("authorization", "'Bearer <Hub token>' for gated/private repos; never logged"),
    )
]
_IMAGE_CONTENT = {
    f.media_type: {"schema": {"type": "string", "format": "binary"}} for f in ImageFormat
}


class ReplicaIds:
    """Opaque ids for worker addresses, for ``X-Loraplex-Worker`` (``debug_replica_header``).

    A keyed hash with a random key per router process: a plain hash of ``10.x.y.z:8000`` is
    reversed by trying the pod network's few million addresses. Each new id is logged once
    with its address, so an operator can map it; ids differ between router replicas."""

    MAX_KNOWN = 4096  # endpoints remembered (pods churn; beyond it the map starts over)

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._known: dict[str, str] = {}

    def __call__(self, endpoint: str) -> str:
        known = self._known.get(endpoint)
        if known is None:
            known = hmac.new(self._key, endpoint.encode(), hashlib.sha256).hexdigest()[:12]
            if len(self._known) >= self.MAX_KNOWN:
                self._known.clear()
            self._known[endpoint] = known
            log.info("replica id %s is worker %s", known, endpoint)
        return known


def public_headers(
    headers: Mapping[str, str], replica_id: Callable[[str], str] | None
) -> dict[str, str]:
    """The worker answer's headers for the client: the worker address becomes its opaque id
    when ``replica_id`` is given, and is dropped otherwise."""
    public = {name: value for name, value in headers.items() if name != Headers.WORKER}
    endpoint = headers.get(Headers.WORKER)
    if endpoint is not None and replica_id is not None:
        public[Headers.WORKER] = replica_id(endpoint)
    return public


def answer_to_response(
    answer: WorkerAnswer, replica_id: Callable[[str], str] | None = None
) -> Response:
    headers = public_headers(answer.headers, replica_id)
    if answer.stream is not None:
        # The background close runs after the response, also when the client left before the
        # first chunk and the stream was never iterated (its own finally never ran then).
        return StreamingResponse(
            answer.stream,
            answer.status,
            headers,
            answer.media_type,
            background=BackgroundTask(answer.close),
        )
    return Response(answer.body, answer.status, headers, answer.media_type)


def create_app(
    settings: RouterSettings,
    *,
    card_source: CardSource | None = None,
    pool_source: PoolSource | None = None,
) -> FastAPI:
    """The router app. ``card_source``/``pool_source`` default from ``settings`` (Hub or
    ``models_dir``; static pools or Kubernetes); tests and the embedded mode may pass their own."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await build_runtime(settings, card_source=card_source, pool_source=pool_source)
        app.state.runtime = runtime
        try:
            yield
        finally:
            await runtime.close()

    app = FastAPI(
        title="loraplex router",
        version=__version__,
        lifespan=lifespan,
        description="Serve thousands of LoRA adapters from a few warm base-model pools.",
    )
    app.state.replica_ids = ReplicaIds() if settings.debug_replica_header else None
    install_handlers(app)
    app.add_middleware(FormBodyIsJson)
    _add_generation_routes(app)
    _add_info_routes(app)
    add_playground_routes(app, enabled=settings.playground)
    # Last, so it runs first: Host/Origin/size checks before any body is read or relabelled.
    install_edge_guards(app, settings)
    app.add_middleware(OpenAIErrors)  # outermost: it reshapes the edge guard's refusals too
    return app


def _runtime(request: Request) -> RouterRuntime:
    return request.app.state.runtime


def _with_token(request: Request, call: GenerationCall) -> GenerationCall:
    """``call`` with the caller's Hub token; a malformed Authorization is a 400 that is
    counted like every other answer (it is read here, not before the request is counted)."""
    try:
        return replace(call, token=user_token(request.headers.get("authorization")))
    except LoraplexError as exc:
        _runtime(request).service.record(None, call, status_of(exc), time.monotonic())
        raise


async def _serve(request: Request, call: GenerationCall) -> tuple[Route, WorkerAnswer] | Response:
    """Resolve and generate one image, counting the answer; errors become JSON answers."""
    service = _runtime(request).service
    started = time.monotonic()
    route: Route | None = None
    try:
        route = await service.resolve(call)
        answer = await cancel_on_disconnect(request, service.generate(call, route))
    except ClientGone:
        service.record(route, call, CLIENT_CLOSED, started)
        return Response(status_code=CLIENT_CLOSED)
    except LoraplexError as exc:
        service.record(route, call, status_of(exc), started)
        raise
    service.record(route, call, answer.status, started)
    return route, answer


def _add_generation_routes(app: FastAPI) -> None:
    _add_hf_route(app)
    _add_openai_route(app)


def _add_hf_route(app: FastAPI) -> None:
    @app.post(
        "/models/{model_id:path}",
        response_class=Response,
        responses={200: {"content": _IMAGE_CONTENT, "description": "the image"}, **_ERRORS},
        summary="Hugging Face Inference API: text to image",
        openapi_extra={"parameters": _HEADER_DOCS},
    )
    async def hf_text_to_image(
        request: Request,
        body: HFTextToImageRequest,
        model_id: Annotated[str, Path(description="LoRA repo id or served base id")],
    ) -> Response:
        # Headers are read from request.headers, not declared as FastAPI Header parameters:
        # FastAPI's per-request parameter solving cost ~30 % of the router's throughput.
        headers = request.headers
        x_wait_for_model = headers.get(Headers.WAIT_FOR_MODEL)
        call = GenerationCall(
            model_id=model_id,
            prompt=body.inputs,
            parameters=body.parameters.generation(),
            output_format=ImageFormat.from_accept(headers.get("accept")),
            lora=headers.get(Headers.SEED_LORA),
            wait_for_model=wants_to_wait(x_wait_for_model, body.options.wait_for_model),
        )
        served = await _serve(request, _with_token(request, call))
        if isinstance(served, Response):
            return served
        return answer_to_response(served[1], request.app.state.replica_ids)


def _add_openai_route(app: FastAPI) -> None:
    @app.post(
        "/v1/images/generations",
        response_model=OpenAIImagesResponse,
        responses=_OPENAI_ERRORS,
        summary="OpenAI images API: generations",
        openapi_extra={"parameters": _HEADER_DOCS[1:]},
    )
    async def openai_generations(request: Request, body: OpenAIImageRequest) -> Any:
        x_wait_for_model = request.headers.get(Headers.WAIT_FOR_MODEL)
        settings_n = _runtime(request).settings.max_images_per_request
        if body.n > settings_n:
            raise BadRequest(f"n={body.n} is over this router's limit of {settings_n} images")
        fmt = body.output_format or ImageFormat.PNG
        calls = [
            GenerationCall(
                model_id=body.model,
                prompt=body.prompt,
                parameters=_openai_parameters(body, i),
                output_format=fmt,
                wait_for_model=wants_to_wait(x_wait_for_model, True),
            )
            for i in range(body.n)
        ]
        token = _with_token(request, calls[0]).token  # one request: a bad token counts once
        calls = [replace(call, token=token) for call in calls]
        served = await asyncio.gather(*(_serve(request, c) for c in calls), return_exceptions=True)
        try:
            images = [await _openai_image(item, body, fmt) for item in served]
        except _EarlyAnswer as early:
            return early.response
        finally:
            for item in served:  # answers left unread when a sibling failed
                if isinstance(item, tuple):
                    item[1].close()
        return OpenAIImagesResponse(created=int(time.time()), data=images, output_format=fmt)


class _EarlyAnswer(Exception):
    """One of n images failed: answer with its response instead of a list of images."""

    def __init__(self, response: Response) -> None:
        self.response = response


async def _openai_image(
    item: tuple[Route, WorkerAnswer] | Response | BaseException,
    body: OpenAIImageRequest,
    fmt: ImageFormat,
) -> OpenAIImage:
    if isinstance(item, BaseException):
        raise item
    if isinstance(item, Response):
        raise _EarlyAnswer(item)
    answer = item[1]
    data = await _whole_body(answer)
    if answer.status != 200:
        raise _EarlyAnswer(Response(data, answer.status, media_type=answer.media_type))
    encoded = base64.b64encode(data).decode()
    if body.response_format == "url":
        return OpenAIImage(url=f"data:{fmt.media_type};base64,{encoded}")
    return OpenAIImage(b64_json=encoded)


def _openai_parameters(body: OpenAIImageRequest, index: int) -> GenerationParameters:
    try:
        return body.parameters(index)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise BadRequest(f"invalid image parameters: {exc}") from None


async def _whole_body(answer: WorkerAnswer) -> bytes:
    if answer.body is not None:
        return answer.body
    assert answer.stream is not None
    return b"".join([chunk async for chunk in answer.stream])


def _add_info_routes(app: FastAPI) -> None:
    @app.get("/v1/models", response_model=ModelList, summary="Served base models and their pools")
    async def list_models(request: Request) -> ModelList:
        runtime = _runtime(request)
        data = []
        for base, pool in sorted(runtime.registry.pools.items()):
            data.append(
                ModelCardOut(
                    id=base,
                    replicas=len(pool.replicas),
                    ready_replicas=pool.ready_count,
                    pending=pool.pending,
                    adapters=pool.recent_adapters(),
                )
            )
        return ModelList(data=data)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: pools listed", responses={503: {"model": ErrorBody}})
    async def readyz(request: Request) -> JSONResponse:
        registry = _runtime(request).registry
        if not registry.synced:
            return JSONResponse({"error": "pool list not loaded yet"}, status_code=503)
        return JSONResponse({"status": "ready", "pools": len(registry.pools)})

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics")
    async def metrics(request: Request) -> Response:
        runtime = _runtime(request)
        for base, pool in runtime.registry.pools.items():
            runtime.metrics.replicas_ready.labels(base).set(pool.ready_count)
        body = generate_latest(runtime.metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
