"""Domain errors and the one place that maps them to HTTP status codes.

Cores raise these; the FastAPI shells of router and worker install :func:`install_handlers`,
which turns each into ``{"error": "<what and what to do>"}`` with its status code (and
``Retry-After`` where the client should come back). Messages must never contain a token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class LoraplexError(Exception):
    """Base of every error that becomes an HTTP answer."""

    status_code: ClassVar[int] = 500

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        estimated_time_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.estimated_time_s = estimated_time_s


class BadRequest(LoraplexError, ValueError):
    """Invalid parameters or model id (400). A ValueError so pydantic validators may raise it."""

    status_code = 400


class Unauthorized(LoraplexError):
    """A gated or private repo and no token (401)."""

    status_code = 401


class Forbidden(LoraplexError):
    """A token that the Hub refused for this repo (403)."""

    status_code = 403


class NotFound(LoraplexError):
    """No such model or adapter (404)."""

    status_code = 404


class PayloadTooLarge(LoraplexError):
    """An adapter over the configured maximum size (413)."""

    status_code = 413


class NotServable(LoraplexError):
    """The model exists but cannot be served here (422): wrong base, not a LoRA, pickle only…"""

    status_code = 422


class QueueFull(LoraplexError):
    """The queue is at capacity (429, with Retry-After)."""

    status_code = 429


class UpstreamFailed(LoraplexError):
    """Workers failed after every retry (502)."""

    status_code = 502


class WarmingUp(LoraplexError):
    """The pool has no ready replica yet (503, with estimated_time and Retry-After)."""

    status_code = 503


class DeadlineExceeded(LoraplexError):
    """The request's deadline passed (504)."""

    status_code = 504


def error_response(exc: LoraplexError) -> JSONResponse:
    """The JSON answer for a domain error: the mapping from error to status lives here."""
    body: dict[str, object] = {"error": exc.message}
    headers: dict[str, str] = {}
    if exc.estimated_time_s is not None:
        body["estimated_time"] = round(exc.estimated_time_s, 1)
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


def describe_validation_error(errors: list[Mapping[str, object]]) -> str:
    """One line naming each bad field and why, from pydantic's error list."""
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
