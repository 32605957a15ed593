"""The playground: a browser page at ``GET /`` over the router's own public API.

Three static files shipped in the package (``router/static/``: ``playground.html``,
``playground.js``, ``playground.css``; pyproject's package-data puts them in the wheel), read
once with :mod:`importlib.resources` and served as they are: no build step, no CDN, works
offline. The script lists ``GET /v1/models`` (bases and their ``adapters``), posts the form to
``POST /models/{id}`` with a same-origin ``fetch`` (so the edge guard's Origin check passes
as for any same-origin page) and shows the image, the ``x-loraplex-*`` timing headers, or the
API's ``{"error"}`` message with ``Retry-After``.

Every answer carries a strict Content-Security-Policy: scripts and styles from this origin
only (the HTML has no inline script or style), images from here or the ``blob:`` URL the
script makes of the answer, no framing. With the router's ``playground`` setting off, ``GET /``
and the asset paths answer the usual 404 ``{"error"}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from typing import Final

from fastapi import FastAPI
from fastapi.responses import Response

from loraplex.shared.errors import NotFound

ASSET_PREFIX: Final = "/playground/"
CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'self'",
        "img-src 'self' blob: data:",
        "script-src 'self'",
        "style-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS: Final = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    # The files change with the installed version; a stale script against a newer API misleads.
    "cache-control": "no-cache",
}
_MEDIA_TYPES: Final = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
}
PAGE: Final = "playground.html"
ASSETS: Final = ("playground.js", "playground.css")


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    media_type: str

    def response(self) -> Response:
        return Response(self.body, media_type=self.media_type, headers=SECURITY_HEADERS)


def read_static(name: str) -> StaticFile:
    """One of the package's playground files (read at app creation: a missing file fails the
    start, not the first visitor)."""
    body = files("loraplex.router").joinpath("static", name).read_bytes()
    return StaticFile(body, _MEDIA_TYPES[name.rpartition(".")[2]])


def add_playground_routes(app: FastAPI, *, enabled: bool) -> None:
    """``GET /`` and its two assets; off: a 404 ``{"error"}`` that says how to turn it on.

    Out of the OpenAPI schema: they are a page for people, not part of the API."""
    if not enabled:

        @app.get("/", include_in_schema=False)
        async def playground_off() -> Response:
            raise NotFound(
                "the playground is turned off on this router (LORAPLEX_ROUTER_PLAYGROUND="
                "false); the API is at /models/{model_id} and /v1/images/generations, see /docs"
            )

        return
    page = read_static(PAGE)
    assets = {name: read_static(name) for name in ASSETS}

    @app.get("/", include_in_schema=False)
    async def playground() -> Response:
        return page.response()

    for name, asset in assets.items():
        app.add_api_route(
            ASSET_PREFIX + name, asset.response, methods=["GET"], include_in_schema=False
        )
