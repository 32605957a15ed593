"""Raw HTTP/1.1 over loopback sockets for the edge tests: heads and bodies sent byte by byte,
which no HTTP client library lets a test do. Every wait here is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fixtures.router_stubs import serve_app

from loraplex.shared.edge import uvicorn_edge_options
from loraplex.shared.settings import ComponentSettings


@dataclass
class Answer:
    """What came back on a connection before the server closed it (or the wait ended)."""

    raw: bytes
    closed: bool
    seconds: float

    @property
    def status(self) -> int | None:
        line = self.raw.split(b"\r\n", 1)[0].split()
        return int(line[1]) if len(line) > 1 and line[1].isdigit() else None

    def json(self) -> Any:
        return json.loads(self.raw.partition(b"\r\n\r\n")[2])


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    return await asyncio.open_connection(parts.hostname, parts.port)


async def read_until_closed(
    reader: asyncio.StreamReader, timeout_s: float, started: float | None = None
) -> Answer:
    """Read until EOF or ``timeout_s``; ``closed`` says which."""
    started = time.monotonic() if started is None else started
    raw = b""
    deadline = started + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except TimeoutError:
            break
        except ConnectionError:
            return Answer(raw, True, time.monotonic() - started)
        if not chunk:
            return Answer(raw, True, time.monotonic() - started)
        raw += chunk
    return Answer(raw, False, time.monotonic() - started)


async def trickle(url: str, head: bytes, byte: bytes, every_s: float, bound_s: float) -> Answer:
    """Send ``head``, then one ``byte`` every ``every_s`` until the server closes the
    connection or ``bound_s`` passes (a slow-loris client)."""
    reader, writer = await connect(url)
    started = time.monotonic()
    raw = b""
    try:
        writer.write(head)
        while time.monotonic() - started < bound_s:
            answer = await read_until_closed(reader, every_s)
            raw += answer.raw
            if answer.closed:
                return Answer(raw, True, time.monotonic() - started)
            with contextlib.suppress(ConnectionError):
                writer.write(byte)
        return Answer(raw, False, time.monotonic() - started)
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def serve_with_edge(app: Any, settings: ComponentSettings) -> AsyncIterator[str]:
    """``app`` under uvicorn on 127.0.0.1:0 in this loop with the CLIs' edge options (the
    request-head timeout); yields its base URL."""
    async with serve_app(app, **uvicorn_edge_options(settings)) as url:
        yield url
