"""Domain errors: what went wrong, in words a user can act on. No HTTP here.

Cores raise these; the FastAPI shells of router and worker map them to status codes in
:mod:`loraplex.shared.http_errors` (the one place that does). Messages must never contain a token.
The status each class becomes is in its docstring.
"""

from __future__ import annotations


class LoraplexError(Exception):
    """Base of every error that becomes an HTTP answer."""

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


class Unauthorized(LoraplexError):
    """A gated or private repo and no token (401)."""


class Forbidden(LoraplexError):
    """A token that the Hub refused for this repo (403)."""


class NotFound(LoraplexError):
    """No such model or adapter (404)."""


class PayloadTooLarge(LoraplexError):
    """An adapter over the configured maximum size (413)."""


class NotServable(LoraplexError):
    """The model exists but cannot be served here (422): wrong base, not a LoRA, pickle only…"""


class QueueFull(LoraplexError):
    """The queue is at capacity (429, with Retry-After)."""


class UpstreamFailed(LoraplexError):
    """Workers failed after every retry (502)."""


class WarmingUp(LoraplexError):
    """The pool has no ready replica yet (503, with estimated_time and Retry-After)."""


class Unavailable(LoraplexError):
    """No replica can take the request now: they restarted, dropped connections or are
    unreachable, and none came back in time (503, with Retry-After)."""


class PoolFailing(Unavailable):
    """The pool's base cannot be served: its workers say so, or its operator does (503, with
    Retry-After and the reason; waiting would not help, so nothing is held)."""


class DeadlineExceeded(LoraplexError):
    """The request's deadline passed (504)."""
