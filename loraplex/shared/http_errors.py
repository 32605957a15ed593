"""The one place that maps errors to HTTP: status codes and the ``{"error"}`` body.

Used by the FastAPI shells of router and worker (:func:`install_handlers`) and by shells that
must count an answer before it is sent (:func:`status_of`); the pure cores raise
:mod:`loraplex.shared.errors` and know nothing of this module or of the web framework.

Every answer that is not a success has the one shape ``{"error": "<what and what to do>"}``:
domain errors, request validation (400, also for a body that is not JSON), the framework's
own 404/405 (no such path or method) and an unexpected failure (500, no traceback: that goes
to the log). The edge guard's refusals (:mod:`loraplex.shared.edge`) have it too. (The router's
OpenAI route restates the same text in OpenAI's error object on the way out:
``loraplex/router/openai_errors.py``.)
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from loraplex.shared.errors import (
    BadRequest,
    DeadlineExceeded,
    Forbidden,
    LoraplexError,
    NotFound,
    NotServable,
    PayloadTooLarge,
    QueueFull,
    Unauthorized,
    Unavailable,
    UpstreamFailed,
    WarmingUp,
)

STATUS_CODES: Mapping[type[LoraplexError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    PayloadTooLarge: 413,
    NotServable: 422,
    QueueFull: 429,
    UpstreamFailed: 502,
    WarmingUp: 503,
    Unavailable: 503,
    DeadlineExceeded: 504,
}


def status_of(exc: LoraplexError) -> int:
    """The status of the nearest mapped class in the error's MRO (subclasses inherit), else 500."""
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return 500


def error_response(exc: LoraplexError) -> JSONResponse:
    """The JSON answer for a domain error, with ``estimated_time`` and ``Retry-After`` when set."""
    body: dict[str, object] = {"error": exc.message}
    headers: dict[str, str] = {}
    if exc.estimated_time_s is not None:
        body["estimated_time"] = round(exc.estimated_time_s, 1)
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    return JSONResponse(body, status_code=status_of(exc), headers=headers)


# The framework's own answers (no route, wrong method…): what they mean for a caller.
_FRAMEWORK_MESSAGES: Mapping[int, str] = {
    404: "no such endpoint; see /docs for this server's API",
    405: "this endpoint does not take that method (the Allow header lists the ones it takes)",
}


def describe_validation_error(errors: list[Mapping[str, object]]) -> str:
    """One line naming each bad field and why, from pydantic's error list."""
    if any(err.get("type") == "json_invalid" for err in errors):
        return (
            "request body is not valid JSON; send a JSON object such as "
            '{"inputs": "a red fox"} with Content-Type: application/json'
        )
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]  # type: ignore[union-attr]
        field = ".".join(loc) or "body"
        parts.append(f"{field}: {err.get('msg')}")
    return "invalid request: " + "; ".join(parts)


def install_handlers(app: FastAPI) -> None:
    """Map domain errors and request-validation errors to JSON ``{"error": …}`` answers."""

    async def on_domain_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LoraplexError)
        return error_response(exc)

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"error": describe_validation_error(list(exc.errors()))}, 400)

    app.add_exception_handler(LoraplexError, on_domain_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_framework_error)
    app.add_exception_handler(Exception, on_unexpected_error)


async def on_framework_error(_: Request, exc: Exception) -> JSONResponse:
    """Starlette's and FastAPI's own HTTPException (404, 405, a body it could not parse)."""
    assert isinstance(exc, StarletteHTTPException)
    message = _FRAMEWORK_MESSAGES.get(exc.status_code, str(exc.detail))
    return JSONResponse({"error": message}, exc.status_code, headers=exc.headers)


async def on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug: 500 as JSON, never a traceback in the answer (Starlette logs it and re-raises)."""
    return JSONResponse(
        {"error": "internal error; the server log has the details (retry, or report it)"}, 500
    )
