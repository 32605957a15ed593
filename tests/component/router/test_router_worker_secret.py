"""The router presents the worker secret on every worker call, and says so when it is wrong.

Workers are :class:`fixtures.router_stubs.StubWorker` with ``secret`` set, checking the header
as the real worker does (``loraplex.worker.auth``; the real pair runs in
``test_router_workers.py`` and the e2e tests).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest
from fixtures.router_stubs import serve_app, stub_workers
from loraplex.router.app import create_app
from loraplex.router.settings import RouterSettings
from pydantic import ValidationError

BASE = "org/base"
SECRET = "router-test-worker-secret-0123456789"
BODY = {"inputs": "a fox", "parameters": {"num_inference_steps": 2}}


def cards(root: Path) -> Path:
    (root / "u" / "style").mkdir(parents=True)
    (root / "u" / "style" / "README.md").write_text(
        "---\nbase_model: org/base\ntags: [lora]\n---\n"
    )
    return root


def settings_for(urls: list[str], root: Path, secret: str) -> RouterSettings:
    return RouterSettings(
        static_pools={BASE: urls},
        models_dir=cards(root),
        worker_secret=secret,
        state_poll_interval_s=0.05,
        hold_timeout_s=0.3,
    )


async def test_generate_and_state_carry_the_worker_secret(tmp_path: Path) -> None:
    async with stub_workers(BASE, 1, secret=SECRET) as (worker,):
        app = create_app(settings_for([worker.url], tmp_path, SECRET))
        async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
            for model in ("u/style", BASE):
                response = await client.post(f"/models/{model}", json=BODY)
                assert response.status_code == 200, response.text
    paths = {path for path, _ in worker.secrets_seen}
    assert paths == {"/v1/state", "/v1/generate"}
    assert {given for _, given in worker.secrets_seen} == {SECRET}


async def test_a_wrong_secret_keeps_replicas_out_and_is_logged_once_without_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "not-the-workers-secret-0123456789"
    caplog.set_level(logging.WARNING, logger="loraplex.router")
    async with stub_workers(BASE, 1, secret=SECRET) as (worker,):
        app = create_app(settings_for([worker.url], tmp_path, wrong))
        async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
            await asyncio.sleep(0.3)  # several polls, all refused
            response = await client.post("/models/u/style", json=BODY)
    assert response.status_code == 503, response.text  # never ready: held, then warming up
    assert not [p for p, _ in worker.secrets_seen if p == "/v1/generate"]
    refusals = [r for r in caplog.records if "refused the router's worker secret" in r.message]
    assert len(refusals) == 1 and "LORAPLEX_ROUTER_WORKER_SECRET" in refusals[0].message
    assert wrong not in caplog.text and SECRET not in caplog.text


def test_the_secret_is_never_shown() -> None:
    settings = RouterSettings(worker_secret=SECRET)
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())
    assert RouterSettings(worker_secret="").worker_secret is None
    with pytest.raises(ValidationError) as info:
        RouterSettings(worker_secret="short-secret")
    assert "short-secret" not in str(info.value)
