"""The HTTP edge of router and worker: an ASGI guard and a uvicorn protocol with a head timeout.

* :func:`install_edge_guards` puts :class:`EdgeGuard` (a pure ASGI middleware: it never reads
  a body into memory itself) outermost on an app. It applies the rules of
  :mod:`loraplex.shared.edge_policy` to each request head — Host, Origin, content type, a
  declared Content-Length — and, while the app reads the body, counts its bytes against
  ``max_body_bytes`` and bounds the wait for them by ``body_timeout_s``. Its refusals are
  ``{"error": ...}`` JSON with ``Connection: close`` (the unread body is not drained). With
  ``cors_origins`` set it also adds Starlette's CORS middleware for preflights.
* :func:`uvicorn_edge_options` gives ``uvicorn.run``/``uvicorn.Config`` the HTTP protocol to
  use: uvicorn's own (httptools when installed, else h11) plus a deadline for the request head.
  uvicorn (0.54) has no header timeout: its only timer is keep-alive, armed after an answer and
  cancelled by the first byte of the next request, so a client that trickles header bytes (or
  opens a connection and sends nothing) holds it forever. An ASGI middleware cannot help —
  the app is called only once the head is complete — hence the protocol subclass.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraplex.shared.edge_policy import (
    EdgePolicy,
    EdgeRefusal,
    EdgeSettings,
    check_head,
    too_large,
)
from loraplex.shared.settings import ComponentSettings

_DISCONNECT: Message = {"type": "http.disconnect"}


def edge_settings(settings: ComponentSettings) -> EdgeSettings:
    """The edge fields of a component's settings: the object itself when its class inherits
    :class:`EdgeSettings` (the router), else read from the environment with the component's
    prefix (``LORAPLEX_WORKER_MAX_BODY_BYTES``…), so a component adopts them without a change."""
    if isinstance(settings, EdgeSettings):
        return settings
    return EdgeSettings(_env_prefix=_env_prefix(settings))


def _env_prefix(settings: ComponentSettings) -> str:
    return str(settings.model_config.get("env_prefix") or "LORAPLEX_")


def install_edge_guards(app: Starlette, settings: ComponentSettings) -> None:
    """Add the edge checks to a Starlette/FastAPI ``app``; call it last so they run first."""
    listen_host = str(getattr(settings, "host", ""))
    policy = EdgePolicy.from_settings(edge_settings(settings), listen_host, _env_prefix(settings))
    if policy.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(policy.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["*"],
        )
    app.add_middleware(EdgeGuard, policy=policy)


def uvicorn_edge_options(settings: ComponentSettings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``/``uvicorn.Config``: the head-timeout protocol."""
    return {"http": head_timeout_protocol(edge_settings(settings).header_timeout_s)}


class EdgeGuard:
    """Pure ASGI middleware applying an :class:`EdgePolicy`; see the module docstring."""

    def __init__(self, app: ASGIApp, policy: EdgePolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _first_values(scope["headers"])
        refusal = check_head(self.policy, scope["method"], headers)
        if refusal is not None:
            await send_refusal(send, refusal)
            return
        if "content-length" not in headers and "transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body: nothing to count or wait for
            return
        body = _GuardedBody(receive, send, self.policy)
        await self.app(scope, body.receive, body.send)


class _GuardedBody:
    """``receive``/``send`` for one request: count body bytes, bound the wait for them, and
    answer 413/408 in the app's stead (the app then sees a disconnect; its own answer is
    dropped). Once the body is complete, ``receive`` is the server's own, untimed: the router
    waits on it for the client's disconnect while a generation runs."""

    def __init__(self, receive: Receive, send: Send, policy: EdgePolicy) -> None:
        self._receive = receive
        self._send = send
        self._policy = policy
        self._deadline = asyncio.get_running_loop().time() + policy.body_timeout_s
        self._received = 0
        self._complete = False
        self._started = False
        self._answered = False

    async def receive(self) -> Message:
        if self._complete:
            return await self._receive()
        if self._answered:
            return _DISCONNECT
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:
            timeout = self._policy.body_timeout_s
            return await self._refuse(
                EdgeRefusal(408, f"the request body did not arrive within {timeout:g} s")
            )
        if message["type"] != "http.request":
            self._complete = True  # a disconnect: later calls return it again, untimed
            return message
        self._received += len(message.get("body", b""))
        if self._received > self._policy.max_body_bytes:
            return await self._refuse(too_large(self._policy))
        self._complete = not message.get("more_body", False)
        return message

    async def send(self, message: Message) -> None:
        if self._answered:
            return  # the guard answered for the app
        self._started = self._started or message["type"] == "http.response.start"
        await self._send(message)

    async def _refuse(self, refusal: EdgeRefusal) -> Message:
        self._answered = True
        if not self._started:  # else the answer is under way: the connection just ends
            await send_refusal(self._send, refusal)
        return _DISCONNECT


def _first_values(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return headers


def refusal_bytes(refusal: EdgeRefusal) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = json.dumps({"error": refusal.message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),  # the body may be unread: never parse it as a next request
    ]
    return headers, body


async def send_refusal(send: Send, refusal: EdgeRefusal) -> None:
    headers, body = refusal_bytes(refusal)
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------- the head timeout


class _HeadDeadline:
    """Mixin for uvicorn's HTTP/1.1 protocols (httptools and h11): the request head must be
    complete within ``header_timeout_s`` of the connection's opening or of the previous
    answer; else the connection is closed (with a 408 when part of a head had arrived).

    Hooks shared by both implementations: a request head is complete when ``self.cycle``
    changes during ``data_received``; an answer is done in ``on_response_complete``."""

    header_timeout_s: float = 10.0
    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = False

    # The attributes below belong to the uvicorn protocol this is mixed into.
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        self._head_bytes = True
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not before:
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing() and not self._serving():
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _serving(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_bytes = False
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self._serving():
            return  # a request is being answered: its answer re-arms the timer
        if self._head_bytes:
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()


def _request_timeout_answer() -> bytes:
    headers, body = refusal_bytes(
        EdgeRefusal(408, "the request head (request line and headers) did not arrive in time")
    )
    lines = [b"HTTP/1.1 408 Request Timeout", *(name + b": " + value for name, value in headers)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


_REQUEST_TIMEOUT = _request_timeout_answer()


@functools.cache
def head_timeout_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (what its ``http="auto"`` picks) with the head deadline."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # httptools is optional (the router's extra): uvicorn's fallback
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    name = f"HeadDeadline{base.__name__}"
    return type(name, (_HeadDeadline, base), {"header_timeout_s": header_timeout_s})
