"""The OpenAI route's errors, read by the real ``openai`` SDK: the message reaches the user.

The SDK puts a server's message into its exception only when the body is OpenAI's error
object, ``{"error": {"message": …}}``; the router's other routes keep ``{"error": "…"}``.
Workers are :class:`fixtures.router_stubs.StubWorker` (real HTTP servers without a pipeline).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fixtures.router_stubs import StubWorker, serve_app, stub_workers, write_card_repos
from loraplex.router.app import create_app
from loraplex.router.openai_errors import reshape
from loraplex.router.settings import RouterSettings

BASE = "org/base"
CARDS = {"u/style": "base_model: org/base\ntags: [lora]"}


@dataclass
class Env:
    url: str
    client: httpx.AsyncClient
    workers: list[StubWorker]

    async def sdk_error(self, **request: Any) -> openai.APIStatusError:
        """What ``client.images.generate(**request)`` raises for a user (no retries)."""
        sdk = openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)
        call: Callable[[], object] = lambda: sdk.images.generate(  # noqa: E731
            **{"model": "u/style", "prompt": "a fox", "size": "64x64", **request}
        )
        with pytest.raises(openai.APIStatusError) as caught:
            await asyncio.to_thread(call)  # the router serves on this loop
        return caught.value


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with stub_workers(BASE, 1) as workers:
        settings = RouterSettings(
            static_pools={BASE: [w.url for w in workers], "org/cold": ["http://127.0.0.1:9"]},
            models_dir=write_card_repos(tmp_path, CARDS),
            hold_timeout_s=0.3,
            max_body_bytes=4096,
        )
        async with (
            serve_app(create_app(settings)) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as client,
        ):
            yield Env(url, client, workers)


async def test_the_sdk_shows_the_routers_own_refusals(env: Env) -> None:
    too_many = await env.sdk_error(n=5)
    assert isinstance(too_many, openai.BadRequestError)
    assert "over this router's limit of 4 images" in str(too_many)
    assert too_many.type == "invalid_request_error"
    bad_size = await env.sdk_error(size="abc")
    assert bad_size.status_code == 400 and "size" in str(bad_size)
    unknown = await env.sdk_error(model="u/nope")
    assert isinstance(unknown, openai.NotFoundError) and "no model 'u/nope'" in str(unknown)


async def test_a_workers_error_and_a_warming_pool_keep_status_headers_and_message(
    env: Env,
) -> None:
    env.workers[0].fail_status = 422
    refused = await env.sdk_error()
    assert refused.status_code == 422 and "stub failure" in str(refused)
    cold = await env.client.post(
        "/v1/images/generations",
        json={"model": "org/cold", "prompt": "a fox"},
        headers={"x-wait-for-model": "false"},
    )
    assert cold.status_code == 503 and "retry-after" in cold.headers
    error = cold.json()["error"]
    assert error["type"] == "server_error" and error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert int(cold.headers["content-length"]) == len(cold.content)


async def test_the_edge_guards_refusal_is_reshaped_too(env: Env) -> None:
    resp = await env.client.post(
        "/v1/images/generations",
        content=b'{"model": "u/style", "prompt": "' + b"x" * 5000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 413 and "bytes" in resp.json()["error"]["message"]
    assert env.workers[0].seen == []


async def test_other_routes_keep_the_plain_shape(env: Env) -> None:
    resp = await env.client.post("/models/u/nope", json={"inputs": "a fox"})
    assert resp.status_code == 404 and isinstance(resp.json()["error"], str)
    ok = await env.client.post("/v1/images/generations", json={"model": "u/style", "prompt": "x"})
    assert ok.status_code == 200 and ok.json()["data"][0]["b64_json"]


def test_reshape_leaves_other_bodies_alone() -> None:
    assert reshape(b"not json", 500) == b"not json"
    assert reshape(b'{"error": {"message": "m"}}', 400) == b'{"error": {"message": "m"}}'
    assert reshape(b"[1]", 400) == b"[1]"
    assert b'"estimated_time": 4' in reshape(b'{"error": "warming", "estimated_time": 4}', 503)
