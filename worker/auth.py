"""Who may call the worker's API: the router, proven by the shared worker secret.

The API port (``/v1/generate``, ``/v1/state``, any other path) answers only requests that carry
the worker secret in ``X-Loraplex-Worker-Secret``
(:attr:`loraplex.shared.contract.Headers.WORKER_SECRET`): none → 401, a wrong one → 403, both
as ``{"error": ...}``, decided from the headers before any body is read. The comparison is
constant-time (:func:`hmac.compare_digest`), and the secret is never logged or echoed. Health
and metrics live on the other port (``metrics_port``) and need no secret: they reveal no
adapter names.

Why a shared secret and not mTLS: the router is the only client and the two always ship
together, so a bearer-style secret gives the same "only the router" property without a CA,
per-pod certificates, their renewal and a TLS-terminating worker; the NetworkPolicy already
limits who can connect at all (the router's pods, on this port only), so the secret is the
second, independent lock rather than the only one. Rotation is a Secret update plus a rollout
of routers and workers. What it does not give: encryption on the wire — a cluster that needs
that runs a service mesh (which adds mTLS transparently) and keeps the secret as well.

No secret configured: allowed only on a loopback address (``WorkerSettings.exposure_problem``),
where only local processes can connect — tests and a worker run by hand. ``loraplex up``
makes a random secret per run anyway, and on Kubernetes the operator always sets one.
"""

from __future__ import annotations

import hmac

from loraplex.worker.settings import WorkerSettings
from starlette.types import ASGIApp, Receive, Scope, Send

from loraplex.shared.contract import Headers
from loraplex.shared.errors import Forbidden, LoraplexError, Unauthorized
from loraplex.shared.http_errors import error_response

_HEADER = Headers.WORKER_SECRET.encode("latin-1")


def refusal(given: bytes | None, secret: bytes) -> LoraplexError | None:
    """Why a request presenting ``given`` is refused (401 none, 403 wrong), or None."""
    if not given:
        return Unauthorized(
            "this worker API is for the loraplex router only: send the worker secret in "
            f"{Headers.WORKER_SECRET}"
        )
    if not hmac.compare_digest(given, secret):
        return Forbidden(f"the worker secret in {Headers.WORKER_SECRET} is not this worker's")
    return None


class RouterOnly:
    """Pure ASGI middleware of the API app: every HTTP request must carry the worker secret.

    A middleware, not a FastAPI dependency, so a refused request is answered from its headers
    alone: FastAPI reads and parses a body before it runs dependencies, and a caller without
    the secret should not get even that (nor a 400 saying what was wrong with its JSON)."""

    def __init__(self, app: ASGIApp, settings: WorkerSettings) -> None:
        self.app = app
        secret = settings.secret
        self._secret = secret.get_secret_value().encode() if secret is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._secret is None:  # None: loopback only, see above
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == _HEADER), None)
        refused = refusal(given, self._secret)
        if refused is None:
            await self.app(scope, receive, send)
            return
        await error_response(refused)(scope, receive, send)
