"""The playground page (GET /) and the adapter list it reads from GET /v1/models.

The page is checked here as files and headers (strict CSP, nothing inline, nothing from another
origin); a real browser drives it against ``loraplex up`` in
``tests/e2e/test_playground_browser.py``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from fixtures.router_stubs import serve_app, stub_workers, write_card_repos
from loraplex.router.app import create_app
from loraplex.router.playground import CONTENT_SECURITY_POLICY
from loraplex.router.settings import RouterSettings

BASE = "org/base"
OPEN_TOKEN = "hf_local_open_token"
CARDS = {
    "u/style": "base_model: org/base\ntags: [lora]",
    "u/listed": "base_model: org/base\nbase_model_relation: adapter",
    "u/gated": "base_model: org/base\ntags: [lora]\ngated: true",
    "u/private": "base_model: org/base\ntags: [lora]",
    "u/other": "base_model: org/unserved\ntags: [lora]",
}


def write_cards(root: Path) -> Path:
    write_card_repos(root, CARDS)
    (root / ".hub-access.json").write_text('{"private": ["u/private"]}')
    return root


async def router(tmp_path: Path, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    async with stub_workers(BASE, 1) as workers:
        settings = RouterSettings(
            static_pools={BASE: [w.url for w in workers]},
            models_dir=write_cards(tmp_path),
            models_dir_token=OPEN_TOKEN,
            **overrides,
        )
        async with (
            serve_app(create_app(settings)) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as client,
        ):
            yield client


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for c in router(tmp_path):
        yield c


class PageParts(HTMLParser):
    """What the page loads and whether anything in it is inline."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.inline += [f"{tag} {name}" for name in found if name == "style" or name[:2] == "on"]
        if tag == "script":
            self._in_script = True
            if found.get("src"):
                self.scripts.append(str(found["src"]))
            else:
                self.inline.append("script without src")
        if tag == "style":
            self.inline.append("style element")
        if tag == "link" and found.get("rel") == "stylesheet":
            self.styles.append(str(found["href"]))

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("script body")


async def test_page_and_assets_have_a_strict_csp_and_nothing_inline(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert csp == CONTENT_SECURITY_POLICY
    assert "default-src 'self'" in csp and "img-src 'self' blob: data:" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    parts = PageParts()
    parts.feed(page.text)
    assert parts.inline == []
    assert parts.scripts == ["playground/playground.js"]
    assert parts.styles == ["playground/playground.css"]
    bodies = [page.text]
    for path, media_type in [(parts.scripts[0], "text/javascript"), (parts.styles[0], "text/css")]:
        asset = await client.get("/" + path)  # relative to the page at /
        assert asset.status_code == 200
        assert asset.headers["content-type"].startswith(media_type)
        assert asset.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        bodies.append(asset.text)
    # Offline: no file names another origin (no CDN, no web font).
    for body in bodies:
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", body), body[:200]


async def test_page_is_behind_the_edge_guard(client: httpx.AsyncClient) -> None:
    """The Host check (DNS rebinding) covers the page like every path."""
    assert (await client.get("/", headers={"host": "evil.example"})).status_code == 400


async def test_page_calls_the_public_api_only(client: httpx.AsyncClient) -> None:
    script = (await client.get("/playground/playground.js")).text
    assert '"v1/models"' in script and '"models/"' in script
    assert "x-loraplex-switch-tier" in script and "retry-after" in script


async def test_page_is_not_in_the_openapi_schema(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/" not in paths and not any(p.startswith("/playground") for p in paths)


async def test_disabled_playground_answers_404_json(tmp_path: Path) -> None:
    async for client in router(tmp_path, playground=False):
        page = await client.get("/")
        assert page.status_code == 404
        assert "LORAPLEX_ROUTER_PLAYGROUND" in page.json()["error"]
        asset = await client.get("/playground/playground.js")
        assert asset.status_code == 404 and "error" in asset.json()
        assert (await client.get("/v1/models")).status_code == 200


async def adapters(client: httpx.AsyncClient) -> list[str]:
    (model,) = (await client.get("/v1/models")).json()["data"]
    assert model["id"] == BASE
    return model["adapters"]


async def generate(client: httpx.AsyncClient, model_id: str, token: str | None = None) -> None:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    body = {"inputs": "a red fox", "parameters": {"seed": 1}}
    answer = await client.post(f"/models/{model_id}", json=body, headers=headers)
    assert answer.status_code == 200, answer.text


async def test_models_lists_open_loras_then_recently_served_first(
    client: httpx.AsyncClient,
) -> None:
    # At start: the folder's open LoRAs of the served base, by id; no gated, private or
    # unserved-base repo.
    assert await adapters(client) == ["u/listed", "u/style"]
    await generate(client, "u/style")
    assert await adapters(client) == ["u/style", "u/listed"]


async def test_gated_and_private_adapters_are_never_listed(client: httpx.AsyncClient) -> None:
    """They were resolved with one caller's token; naming them to all would leak that."""
    await generate(client, "u/gated", OPEN_TOKEN)
    await generate(client, "u/private", OPEN_TOKEN)
    # The seed's lora header on the base id takes the same path.
    headers = {"lora": "u/gated", "authorization": f"Bearer {OPEN_TOKEN}"}
    body = {"inputs": "a red fox"}
    assert (await client.post(f"/models/{BASE}", json=body, headers=headers)).status_code == 200
    assert await adapters(client) == ["u/listed", "u/style"]


async def test_failed_requests_are_not_listed(client: httpx.AsyncClient) -> None:
    bad = await client.post("/models/u/style", json={"inputs": "x", "parameters": {"width": 65}})
    assert bad.status_code == 400
    assert (await adapters(client))[0] == "u/listed"


async def test_the_list_is_bounded_and_can_be_off(tmp_path: Path) -> None:
    async for client in router(tmp_path / "one", recent_adapters=1):
        assert await adapters(client) == ["u/listed"]
        await generate(client, "u/style")
        assert await adapters(client) == ["u/style"]
    async for client in router(tmp_path / "off", recent_adapters=0):
        await generate(client, "u/style")
        assert await adapters(client) == []
