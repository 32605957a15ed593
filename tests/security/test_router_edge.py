"""The router's HTTP edge over real sockets on loopback (issue 17 rows 3, 4, 5, 10, 11).

The router is ``create_app`` with a static pool of stub workers and a LocalCardSource, served
by uvicorn with the same edge options as ``loraplex router`` (the request-head timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fixtures.router_stubs import StubWorker, serve_app, stub_workers
from loraplex.router.app import create_app
from loraplex.router.settings import RouterSettings
from prometheus_client.parser import text_string_to_metric_families
from security.raw_http import connect, read_until_closed, serve_with_edge, trickle

from loraplex.shared.http_errors import install_handlers

BASE = "org/base"
BODY = {"inputs": "a red fox"}
FORM = {"content-type": "application/x-www-form-urlencoded"}


@dataclass
class Router:
    url: str
    client: httpx.AsyncClient
    app: FastAPI
    worker: StubWorker

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    async def counted(self, code: str) -> float:
        """loraplex_router_requests_total summed over every label but ``code``."""
        text = (await self.client.get("/metrics")).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "loraplex_router_requests_total" and sample.labels["code"] == code
        )


@contextlib.asynccontextmanager
async def running_router(models: Path, **overrides: Any) -> AsyncIterator[Router]:
    (models / "u" / "style").mkdir(parents=True, exist_ok=True)
    (models / "u" / "style" / "README.md").write_text(
        "---\nbase_model: org/base\ntags: [lora]\n---\n"
    )
    async with stub_workers(BASE, 1) as (worker,):
        settings = RouterSettings(
            static_pools={BASE: [worker.url]},
            models_dir=models,
            hold_timeout_s=0.3,
            state_poll_interval_s=0.05,
            **overrides,
        )
        app = create_app(settings)
        async with (
            serve_with_edge(app, settings) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as client,
        ):
            yield Router(url, client, app, worker)


@pytest.fixture
async def router(tmp_path: Path) -> AsyncIterator[Router]:
    async with running_router(tmp_path, max_body_bytes=64 * 1024) as running:
        yield running


# --- row 3: body size ---------------------------------------------------------------------


async def test_declared_body_over_the_limit_is_413_before_a_byte_of_it_is_sent(
    router: Router,
) -> None:
    reader, writer = await connect(router.url)
    head = f"POST /models/u/style HTTP/1.1\r\nHost: {router.host}\r\n"
    writer.write((head + "Content-Length: 300000000\r\n\r\n").encode())
    answer = await read_until_closed(reader, 3.0)  # old code: waits for 300 MB that never come
    writer.close()
    assert answer.status == 413 and answer.closed
    assert "65536 bytes" in answer.json()["error"]
    assert router.worker.seen == []


async def test_streamed_body_is_cut_off_past_the_limit(router: Router) -> None:
    reader, writer = await connect(router.url)
    head = f"POST /models/u/style HTTP/1.1\r\nHost: {router.host}\r\n"
    writer.write(
        (head + "Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n").encode()
    )
    chunk = b"4000\r\n" + b" " * 0x4000 + b"\r\n"  # 16 KiB of JSON whitespace per chunk

    async def send_forever() -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(512):  # 8 MiB at most
                writer.write(chunk)
                await writer.drain()

    sending = asyncio.create_task(send_forever())
    answer = await read_until_closed(reader, 5.0)
    sending.cancel()
    await asyncio.gather(sending, return_exceptions=True)
    writer.close()
    assert answer.status == 413, answer.raw[:200]
    assert "MAX_BODY_BYTES" in answer.json()["error"]


async def test_a_chunked_body_within_the_limit_is_served(router: Router) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b'{"inputs": '
        yield b'"a red fox"}'

    json_type = {"content-type": "application/json"}
    resp = await router.client.post("/models/u/style", content=body(), headers=json_type)
    assert resp.status_code == 200, resp.text


# --- row 11: slow clients -----------------------------------------------------------------


async def test_slow_loris_connections_are_closed_and_others_are_served(tmp_path: Path) -> None:
    timeout_s, slack_s = 1.0, 1.5
    async with running_router(tmp_path, header_timeout_s=timeout_s, body_timeout_s=timeout_s) as r:
        head = f"POST /models/u/style HTTP/1.1\r\nHost: {r.host}\r\nX-Slow: ".encode()
        full = f"POST /models/u/style HTTP/1.1\r\nHost: {r.host}\r\nContent-Length: 100\r\n\r\n"
        bound = timeout_s + slack_s + 2  # the old code keeps them all open until this bound
        attacks = [trickle(r.url, head, b"a", 0.2, bound) for _ in range(20)]
        attacks += [trickle(r.url, full.encode(), b" ", 0.2, bound) for _ in range(5)]
        attacks += [trickle(r.url, b"", b"", 0.2, bound) for _ in range(3)]  # opens, sends nothing
        running = [asyncio.create_task(a) for a in attacks]
        await asyncio.sleep(0.3)
        served = await r.client.post("/models/u/style", json=BODY)  # while they trickle
        answers = await asyncio.gather(*running)
    assert served.status_code == 200
    assert all(a.closed and a.seconds < timeout_s + slack_s for a in answers), answers
    assert {a.status for a in answers[:25]} == {408}
    assert answers[-1].raw == b""  # nothing sent, nothing answered: just closed
    assert "body did not arrive" in answers[20].json()["error"]


# --- row 4: tokens ------------------------------------------------------------------------


async def test_a_non_ascii_token_is_a_counted_400(router: Router) -> None:
    before = await router.counted("400")
    bad = {"authorization": "Bearer hf_tøken".encode()}  # UTF-8 bytes on the wire
    resp = await router.client.post("/models/u/style", json=BODY, headers=bad)
    assert resp.status_code == 400 and "visible ASCII" in resp.json()["error"]
    openai = await router.client.post(
        "/v1/images/generations", json={"model": "u/style", "prompt": "a fox"}, headers=bad
    )
    assert openai.status_code == 400 and "visible ASCII" in openai.json()["error"]["message"]
    assert await router.counted("400") == before + 2
    assert router.worker.seen == []


# --- row 5: cross-site requests -------------------------------------------------------------


async def test_a_foreign_host_name_is_refused(router: Router) -> None:
    rebinding = {"host": f"attacker.example:{router.url.rsplit(':', 1)[1]}"}
    resp = await router.client.post("/models/u/style", json=BODY, headers=rebinding)
    assert resp.status_code == 400 and "ALLOWED_HOSTS" in resp.json()["error"]
    assert (await router.client.get("/v1/models", headers=rebinding)).status_code == 400
    assert (await router.client.get("/v1/models", headers={"host": "localhost"})).status_code == 200
    assert router.worker.seen == []


async def test_cross_site_posts_are_refused_and_curl_and_same_origin_work(router: Router) -> None:
    raw = b'{"inputs": "a red fox"}'
    for headers in ({"origin": "http://evil.example"}, {"origin": "null"}):
        resp = await router.client.post("/models/u/style", content=raw, headers={**FORM, **headers})
        assert resp.status_code == 403 and "CORS_ORIGINS" in resp.json()["error"]
        resp = await router.client.post("/models/u/style", json=BODY, headers=headers)
        assert resp.status_code == 403
    assert router.worker.seen == []
    curl = await router.client.post("/models/u/style", content=raw, headers=FORM)  # no Origin
    assert curl.status_code == 200
    own = {**FORM, "origin": router.url}
    assert (
        await router.client.post("/models/u/style", content=raw, headers=own)
    ).status_code == 200


async def test_configured_cors_origins_get_cors_answers_and_must_send_json(tmp_path: Path) -> None:
    app_origin = "https://app.example"
    async with running_router(tmp_path, cors_origins=app_origin) as r:
        preflight = {
            "origin": app_origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type,authorization",
        }
        resp = await r.client.options("/models/u/style", headers=preflight)
        assert resp.status_code == 200
        assert resp.headers["access-control-allow-origin"] == app_origin
        foreign = await r.client.options(
            "/models/u/style", headers={**preflight, "origin": "https://evil.example"}
        )
        assert foreign.status_code == 403 and "error" in foreign.json()
        ok = await r.client.post("/models/u/style", json=BODY, headers={"origin": app_origin})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == app_origin
        form = await r.client.post(
            "/models/u/style", content=b"{}", headers={**FORM, "origin": app_origin}
        )
        assert form.status_code == 415 and "application/json" in form.json()["error"]


# --- row 10: one error shape, nothing internal in answers ------------------------------------


async def test_framework_errors_have_the_error_shape(router: Router) -> None:
    missing = await router.client.get("/no/such/endpoint")
    assert missing.status_code == 404 and set(missing.json()) == {"error"}
    method = await router.client.delete("/healthz")
    assert method.status_code == 405 and set(method.json()) == {"error"}
    assert "GET" in method.headers["allow"]
    broken = await router.client.post(
        "/models/u/style", content=b'{"inputs": ', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]
    form = await router.client.post("/models/u/style", content=b"inputs=a+fox", headers=FORM)
    assert form.status_code == 400 and set(form.json()) == {"error"}


async def test_answers_name_no_server_path(router: Router, tmp_path: Path) -> None:
    resp = await router.client.post("/models/u/nothing", json=BODY)
    assert resp.status_code == 404
    assert str(tmp_path) not in resp.text and "models folder" in resp.json()["error"]


async def test_worker_address_only_as_an_opaque_id_and_only_when_asked(
    router: Router, tmp_path: Path
) -> None:
    resp = await router.client.post("/models/u/style", json=BODY)
    assert resp.status_code == 200 and "x-loraplex-worker" not in resp.headers
    async with running_router(tmp_path / "debug", debug_replica_header=True) as r:
        first = await r.client.post("/models/u/style", json=BODY)
        second = await r.client.post("/models/u/style", json=BODY)
        replica = first.headers["x-loraplex-worker"]
        assert re.fullmatch(r"[0-9a-f]{12}", replica)
        assert (
            second.headers["x-loraplex-worker"] == replica == r.app.state.replica_ids(r.worker.url)
        )
        port = r.worker.url.rsplit(":", 1)[1]
        assert port not in replica and "127.0.0.1" not in replica


async def test_an_unexpected_failure_is_json_without_a_traceback() -> None:
    app = FastAPI()
    install_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals at /srv/loraplex/x.py")

    async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as client:
        resp = await client.get("/boom")
    assert resp.status_code == 500 and set(resp.json()) == {"error"}
    assert "secret internals" not in resp.text and "Traceback" not in resp.text
