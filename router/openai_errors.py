"""Error answers of the OpenAI images route in OpenAI's shape, so its SDK shows the message.

Every other error answer of loraplex is ``{"error": "<what and what to do>"}``
(:mod:`loraplex.shared.http_errors`) — the shape the Hugging Face Inference API and its client
read. The ``openai`` SDK reads a different one: it puts ``error.message`` into the exception's
text only when ``error`` is an object, so ``{"error": "n=5 is over …"}`` surfaces to a user as a
bare ``BadRequestError('Error code: 400')``. On the paths under :data:`OPENAI_PREFIXES` this
pure ASGI middleware rewrites an error answer's JSON body to

    {"error": {"message": "<the same text>", "type": "<by status>", "param": null, "code": null}}

keeping its status, its headers (``Retry-After``) and any other keys (``estimated_time``). It
sits outermost, so it reshapes every source of errors alike: request validation, the domain
errors the router raises, a worker's error passed through, and the edge guard's refusals
(size, time, Host). Success answers (images, streamed or not) pass through untouched: only an
answer with status ≥ 400 and a JSON body is buffered, and those are small.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

OPENAI_PREFIXES = ("/v1/images/",)


def openai_error_type(status: int) -> str:
    """OpenAI's ``error.type`` for a status code."""
    if status >= 500:
        return "server_error"
    return {
        401: "authentication_error",
        403: "permission_error",
        429: "rate_limit_error",
    }.get(status, "invalid_request_error")


def reshape(body: bytes, status: int) -> bytes:
    """``{"error": "<text>", …}`` as OpenAI's error object; any other body is left as it is."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    if not isinstance(parsed, dict) or not isinstance(parsed.get("error"), str):
        return body
    error = {"message": parsed.pop("error"), "type": openai_error_type(status)}
    return json.dumps({"error": {**error, "param": None, "code": None}, **parsed}).encode()


class OpenAIErrors:
    """Pure ASGI middleware applying :func:`reshape` on the OpenAI paths; see the module."""

    def __init__(self, app: ASGIApp, prefixes: tuple[str, ...] = OPENAI_PREFIXES) -> None:
        self.app = app
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _ErrorBuffer(send).send)


class _ErrorBuffer:
    """``send`` for one answer: pass it through, or hold an error answer until its body is
    whole, then send it reshaped with a new length."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._start: Message | None = None  # an error answer's start, held back
        self._chunks: list[bytes] = []

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and _is_json_error(message):
            self._start = message
            return
        if self._start is None or message["type"] != "http.response.body":
            await self._send(message)
            return
        self._chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = reshape(b"".join(self._chunks), self._start["status"])
        headers = [(k, v) for k, v in self._start["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self._send({**self._start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})


def _is_json_error(start: Message) -> bool:
    if start["status"] < 400:
        return False
    for name, value in start.get("headers", []):
        if name.lower() == b"content-type":
            return bytes(value).startswith(b"application/json")
    return False
