"""The client's side of a router request, as the routes read it: the Hub token from
``Authorization``, the wait-for-model choice, a form-labelled body read as JSON
(:class:`FormBodyIsJson`), and the client leaving mid-request (:func:`cancel_on_disconnect`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from loraplex.shared.contract import bearer_token
from loraplex.shared.errors import BadRequest

T = TypeVar("T")


def user_token(authorization: str | None) -> str | None:
    """The user's Hub token from ``Authorization: Bearer …``; any other Authorization is a 400."""
    if not authorization:
        return None
    token = bearer_token(authorization)
    if token is None:
        raise BadRequest("Authorization must be 'Bearer <Hub token>'")
    return token


def wants_to_wait(header: str | None, options: bool) -> bool:
    if header is not None and header.strip().lower() in ("false", "0", "no"):
        return False
    return options


class ClientGone(Exception):
    """The client closed the connection; its upstream work was cancelled."""


async def _cancel_when_gone(request: Request, task: asyncio.Task[Any], gone: list[bool]) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    gone.append(True)
    task.cancel()


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` in this task; if the client disconnects first, cancel it (which closes
    the upstream call) and raise :class:`ClientGone`. One watcher task per request: cheaper
    than running ``work`` in a task of its own and waiting on both."""
    current = asyncio.current_task()
    assert current is not None
    gone: list[bool] = []
    watcher = asyncio.create_task(_cancel_when_gone(request, current, gone))
    try:
        return await work
    except asyncio.CancelledError:
        if gone and current.uncancel() == 0:
            raise ClientGone from None
        raise
    finally:
        watcher.cancel()


class FormBodyIsJson:
    """Read a POST body sent as ``application/x-www-form-urlencoded`` as JSON.

    ``curl -d '{"inputs": …}'`` (the seed's documented call) sends that content type, and the
    Hugging Face Inference API reads the body as JSON whatever its type; FastAPI would refuse
    it. Every POST body of this API is JSON, so relabelling it is exact, not a guess.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = [
                (b"content-type", b"application/json")
                if name == b"content-type" and value.startswith(b"application/x-www-form")
                else (name, value)
                for name, value in scope["headers"]
            ]
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)
