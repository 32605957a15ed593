"""A real worker's HTTP edge on loopback (issue 17 rows 3, 4, 5, 6, 7, 10).

One tiny-demo worker serves the module, with no default width and a default height of 1024:
the pixel budget must then be checked with that default filled in (row 6). Generations here
ask for 64×64 so they stay ~0.1 s on CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest
from fixtures.hub import point_client_at
from fixtures.worker import (
    WorkerServer,
    one_torch_thread,  # noqa: F401 - pytest fixture
    tiny_worker_settings,
)
from prometheus_client.parser import text_string_to_metric_families
from security.raw_http import connect, read_until_closed

from loraplex.shared.contract import Limits
from loraplex.shared.logs import REDACTED_TRUNCATION, configure_logging

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
SMALL = {"prompt": "a photo of sks", "seed": 3, "width": 64, "height": 64}
DEFAULT_HEIGHT = 1024


@pytest.fixture(scope="module")
def worker(hub_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerServer]:
    cache = tmp_path_factory.mktemp("worker-edge-hf")
    with pytest.MonkeyPatch.context() as patch:
        point_client_at(patch, hub_server.url, cache)
        settings = tiny_worker_settings(cache / "hub", width=None, height=DEFAULT_HEIGHT)
        with WorkerServer.serving(settings) as server:
            yield server


def post(worker: WorkerServer, body: dict[str, object], **headers: str | bytes) -> httpx.Response:
    return httpx.post(
        f"{worker.url}/v1/generate", json=body, headers={**worker.headers, **headers}, timeout=60
    )


def counted(worker: WorkerServer, code: str) -> float:
    text = httpx.get(f"{worker.ops_url}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "loraplex_worker_requests_total" and sample.labels.get("code") == code
    )


async def test_declared_body_over_the_limit_is_413_unread(worker: WorkerServer) -> None:
    reader, writer = await connect(worker.url)
    head = f"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1:{worker.port}\r\n"
    writer.write((head + "Content-Length: 300000000\r\n\r\n").encode())
    answer = await read_until_closed(reader, 3.0)
    writer.close()
    assert answer.status == 413 and answer.closed
    assert "LORAPLEX_WORKER_MAX_BODY_BYTES" in answer.json()["error"]


def test_a_non_ascii_token_is_a_counted_400(worker: WorkerServer) -> None:
    before = counted(worker, "400")
    resp = post(worker, SMALL, authorization="Bearer hf_tøken".encode())
    assert resp.status_code == 400 and "visible ASCII" in resp.json()["error"]
    assert counted(worker, "400") == before + 1


def test_a_foreign_host_name_is_refused(worker: WorkerServer) -> None:
    resp = post(worker, SMALL, host="rebind.attacker.example")
    assert resp.status_code == 400 and "LORAPLEX_WORKER_ALLOWED_HOSTS" in resp.json()["error"]
    cross = post(worker, SMALL, origin="http://evil.example")
    assert cross.status_code == 403


def test_the_pixel_budget_counts_the_default_side(worker: WorkerServer) -> None:
    wide = 2 * Limits.MAX_PIXELS // DEFAULT_HEIGHT  # 2048: alone it looks fine
    resp = post(worker, {"prompt": "a fox", "width": wide})
    assert resp.status_code == 400, resp.status_code
    message = resp.json()["error"]
    assert f"{wide}×{DEFAULT_HEIGHT}" in message and str(Limits.MAX_PIXELS) in message
    assert f"height {DEFAULT_HEIGHT} is this worker's default" in message


def test_framework_errors_have_the_error_shape(worker: WorkerServer) -> None:
    missing = httpx.get(f"{worker.url}/no/such/endpoint", headers=worker.headers)
    assert missing.status_code == 404 and set(missing.json()) == {"error"}
    method = httpx.get(f"{worker.url}/v1/generate", headers=worker.headers)
    assert method.status_code == 405 and set(method.json()) == {"error"}
    broken = httpx.post(
        f"{worker.url}/v1/generate",
        content=b"{",
        headers={**worker.headers, "content-type": "application/json"},
    )
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def logged() -> Iterator[_Keep]:
    """configure_logging as the worker CLI runs it, plus a handler on the root and on the
    libraries' own loggers (which do not propagate); everything is put back afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogRecordFactory())
    keep = _Keep()
    configure_logging("INFO")
    watched = [root, logging.getLogger("diffusers"), logging.getLogger("transformers")]
    for logger in watched:
        logger.addHandler(keep)
    try:
        yield keep
    finally:
        for logger in watched:
            logger.removeHandler(keep)
        root.handlers[:], level, factory = saved
        root.setLevel(level)
        logging.setLogRecordFactory(factory)


def test_a_long_prompt_never_reaches_the_log(worker: WorkerServer, logged: _Keep) -> None:
    prompt = " ".join(f"secretword{i}" for i in range(400))[: Limits.MAX_PROMPT_CHARS]
    resp = post(worker, {**SMALL, "prompt": prompt})
    assert resp.status_code == 200, resp.text
    text = "\n".join(logged.lines)
    assert REDACTED_TRUNCATION in text  # the truncation warning fired, without its text
    assert "secretword3" not in text and prompt[-40:] not in text
