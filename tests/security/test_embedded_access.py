"""Issue 17 row 9: embedded mode honours gated and private repos exactly as the Hub does.

Before the fix the router's ``LocalCardSource`` ignored ``DIR/.hub-access.json``: gated and
private repos resolved as public, so the router never forwarded the caller's token and the worker
then told a caller who had sent one to "send a token"; a private repo answered differently from
a missing one (its existence showed), and no token could open either (``loraplex up`` ran its
local Hub with ``token=None``). Now one reader (:class:`loraplex.shared.repo_access.AccessRules`)
serves the local Hub and the router, ``LORAPLEX_LOCAL_HUB_TOKEN`` opens them, and the rules are:
gated → 401 without a token / 403 with another; private → 401 without / 404 (a missing repo's
answer, word for word) with another.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import pytest
from fixtures.hub import HubServer, point_client_at
from fixtures.router_stubs import StubWorker, serve_app, stub_workers
from loraplex.router.app import create_app
from loraplex.router.cards import LocalCardSource
from loraplex.router.resolve import classify
from loraplex.router.settings import RouterSettings
from loraplex.worker.fetch import HubFetcher

from loraplex.embedded.models_dir import scan_models_dir
from loraplex.embedded.up import (
    LOCAL_HUB_TOKEN_ENV,
    free_port,
    local_hub_token,
)
from loraplex.shared.contract import AdapterRef
from loraplex.shared.errors import Forbidden, LoraplexError, NotFound, Unauthorized
from loraplex.shared.http_errors import status_of
from loraplex.shared.repo_access import AccessRules, Refusal, tokens_match

TOKEN = "hf_embedded_open_token"
BODY = {"inputs": "a fox", "parameters": {"num_inference_steps": 2}}
TOKENS = {"none": None, "wrong": "hf_wrong", "right": TOKEN}
# (repo, token) -> the Hub's status: the one table both readers must follow.
EXPECTED = {
    "public": {"none": 200, "wrong": 200, "right": 200},
    "gated": {"none": 401, "wrong": 403, "right": 200},
    "card-gated": {"none": 401, "wrong": 403, "right": 200},
    "private": {"none": 401, "wrong": 404, "right": 200},
    "both": {"none": 401, "wrong": 404, "right": 200},  # private wins: nothing is revealed
}


def _lora(root: Path, repo_id: str, extra: str = "") -> None:
    folder = root / repo_id
    folder.mkdir(parents=True)
    (folder / "README.md").write_text(f"---\nbase_model: org/base\ntags: [lora]\n{extra}---\n")
    (folder / "pytorch_lora_weights.safetensors").write_bytes(b"\0" * 8)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    for name in ("public", "gated", "private", "both"):
        _lora(root, f"org/{name}")
    _lora(root, "org/card-gated", "gated: true\n")
    access = {"gated": ["org/gated", "org/both"], "private": ["org/private", "org/both"]}
    (root / ".hub-access.json").write_text(json.dumps(access))
    return root


# --- the shared rules --------------------------------------------------------------------


def test_the_rules_follow_the_hub(models: Path) -> None:
    rules = AccessRules.read(models)
    assert rules.check("org/public", None, TOKEN) is None
    assert rules.check("org/gated", None, TOKEN) is Refusal.GATED_NO_TOKEN
    assert rules.check("org/gated", "hf_wrong", TOKEN) is Refusal.GATED_REFUSED
    assert rules.check("org/private", None, TOKEN) is Refusal.PRIVATE_NO_TOKEN
    assert rules.check("org/both", "hf_wrong", TOKEN) is Refusal.PRIVATE_REFUSED
    assert rules.check("org/public", None, TOKEN, card_gated=True) is Refusal.GATED_NO_TOKEN
    for repo in ("org/gated", "org/private", "org/both"):
        assert rules.check(repo, TOKEN, TOKEN) is None
        assert rules.check(repo, TOKEN, None) is not None  # no open token: nothing opens them
        assert rules.check(repo, "", "") is not None
    assert not tokens_match(None, None) and not tokens_match("", "")


@pytest.mark.parametrize("content", ["not json", "[1]", '{"gated": "org/x"}', '{"private": [1]}'])
def test_a_malformed_access_file_fails_closed(tmp_path: Path, content: str) -> None:
    (tmp_path / ".hub-access.json").write_text(content)
    with pytest.raises(ValueError, match="hub-access"):
        AccessRules.read(tmp_path)
    with pytest.raises(ValueError):
        LocalCardSource(tmp_path)  # the router refuses to start rather than serve them open


# --- router and local Hub agree --------------------------------------------------------------


async def _router_status(source: LocalCardSource, repo_id: str, token: str | None) -> int:
    try:
        card = await source.fetch(repo_id, token)
    except LoraplexError as exc:
        return status_of(exc)
    classify(card, {"org/base"})
    return 200


async def test_the_router_and_the_local_hub_give_the_same_answers(models: Path) -> None:
    hub = HubServer(models, token=TOKEN).start()
    source = LocalCardSource(models, open_token=TOKEN)
    try:
        with httpx.Client(base_url=hub.url, timeout=10) as client:
            for name, by_token in EXPECTED.items():
                for label, token in TOKENS.items():
                    headers = {"authorization": f"Bearer {token}"} if token else {}
                    api = client.get(f"/api/models/org/{name}", headers=headers).status_code
                    file = client.get(
                        f"/org/{name}/resolve/main/README.md", headers=headers
                    ).status_code
                    router = await _router_status(source, f"org/{name}", token)
                    want = by_token[label]
                    assert (api, file, router) == (want, want, want), (name, label)
    finally:
        hub.stop()


async def test_a_strangers_token_cannot_tell_private_from_missing(models: Path) -> None:
    source = LocalCardSource(models, open_token=TOKEN)
    answers = []
    for repo_id in ("org/private", "org/missing"):
        with pytest.raises(NotFound) as refused:
            await source.fetch(repo_id, "hf_wrong")
        answers.append(refused.value.message.replace(repo_id, "<id>"))
    assert answers[0] == answers[1]


async def test_closed_cards_come_back_closed_so_the_token_travels(models: Path) -> None:
    source = LocalCardSource(models, open_token=TOKEN)
    for name in ("gated", "card-gated", "private"):
        route = classify(await source.fetch(f"org/{name}", TOKEN), {"org/base"})
        assert route.needs_token, name  # forwarded to the worker, cached for this token only
    public = classify(await source.fetch("org/public", TOKEN), {"org/base"})
    assert not public.needs_token


# --- through the router's HTTP API -------------------------------------------------------


@asynccontextmanager
async def router(
    models: Path, **settings: object
) -> AsyncIterator[tuple[httpx.AsyncClient, StubWorker]]:
    async with stub_workers("org/base", 1) as (worker,):
        config = RouterSettings(
            static_pools={"org/base": [worker.url]}, models_dir=models, **settings
        )
        async with serve_app(create_app(config)) as url, httpx.AsyncClient(base_url=url) as client:
            yield client, worker


def _auth(label: str) -> dict[str, str]:
    token = TOKENS[label]
    return {"authorization": f"Bearer {token}"} if token else {}


async def test_the_router_refuses_as_the_hub_and_forwards_the_callers_token(models: Path) -> None:
    async with router(models, models_dir_token=TOKEN) as (client, worker):
        for name, by_token in EXPECTED.items():
            for label in TOKENS:
                before = len(worker.seen)
                resp = await client.post(f"/models/org/{name}", json=BODY, headers=_auth(label))
                assert resp.status_code == by_token[label], (name, label, resp.text)
                if resp.status_code != 200:
                    assert len(worker.seen) == before  # refused before any worker is asked
                    assert "error" in resp.json()
                    continue
                sent = worker.authorizations[-1]
                closed = name != "public"
                assert sent == (f"Bearer {TOKEN}" if closed else None), (name, label)


async def test_refusals_say_what_to_do_and_never_ask_a_token_holder_for_a_token(
    models: Path,
) -> None:
    async with router(models, models_dir_token=TOKEN) as (client, _):
        for name in ("gated", "private"):
            none = await client.post(f"/models/org/{name}", json=BODY)
            assert "Bearer" in none.json()["error"]  # no token: say how to send one
            wrong = await client.post(f"/models/org/{name}", json=BODY, headers=_auth("wrong"))
            assert "send" not in wrong.json()["error"].lower(), wrong.text
        missing = await client.post("/models/org/missing", json=BODY, headers=_auth("wrong"))
        private = await client.post("/models/org/private", json=BODY, headers=_auth("wrong"))
        assert (missing.status_code, missing.json()["error"].replace("org/missing", "<id>")) == (
            private.status_code,
            private.json()["error"].replace("org/private", "<id>"),
        )


async def test_without_an_open_token_closed_repos_are_closed_to_everyone(models: Path) -> None:
    async with router(models) as (client, worker):
        for name in ("gated", "card-gated", "private"):
            for label in ("none", "wrong", "right"):
                resp = await client.post(f"/models/org/{name}", json=BODY, headers=_auth(label))
                assert resp.status_code in (401, 403, 404), (name, label)
        assert worker.seen == []
        assert (await client.post("/models/org/public", json=BODY)).status_code == 200


# --- the worker, when the Hub refuses a token it was given --------------------------------


def test_the_worker_never_tells_a_token_holder_to_send_a_token(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = HubServer(models, token=None).start()  # loraplex up without an open token
    try:
        point_client_at(monkeypatch, hub.url, tmp_path / "cache")
        fetcher = HubFetcher(
            cache_dir=tmp_path / "cache" / "hub", max_adapter_bytes=1 << 20, branch_ttl_s=60
        )
        with pytest.raises(Forbidden) as gated:
            fetcher.resolve(AdapterRef(repo_id="org/gated"), "hf_wrong")
        with pytest.raises(NotFound) as private:
            fetcher.resolve(AdapterRef(repo_id="org/private"), "hf_wrong")
        with pytest.raises(Unauthorized) as anonymous:
            fetcher.resolve(AdapterRef(repo_id="org/gated"), None)
    finally:
        hub.stop()
    for refused in (gated.value, private.value):
        assert "send" not in refused.message.lower(), refused.message
    assert "token" in anonymous.value.message


# --- loraplex up ---------------------------------------------------------------------------


def test_the_scan_lists_closed_repos_and_skips_links_out_of_the_folder(
    models: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outside = tmp_path / "outside"
    _lora(outside, "evil/lora")
    (models / "org" / "linked").symlink_to(outside / "evil" / "lora")
    with caplog.at_level(logging.WARNING, logger="loraplex.up"):
        found = scan_models_dir(models)
    assert set(found.closed) == {"org/gated", "org/card-gated", "org/private", "org/both"}
    assert set(found.loras) == {"org/public"}  # closed ones are not offered in the banner
    assert "org/linked: it links out of" in caplog.text and "copy the repo" in caplog.text


def test_the_open_token_reaches_router_and_workers_and_no_log(
    models: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    repos = scan_models_dir(models)
    monkeypatch.delenv(LOCAL_HUB_TOKEN_ENV, raising=False)
    env: dict[str, str] = {}
    with caplog.at_level(logging.INFO, logger="loraplex.up"):
        assert local_hub_token(models, repos, env) is None
    assert env == {} and "closed to every caller" in caplog.text
    monkeypatch.setenv(LOCAL_HUB_TOKEN_ENV, TOKEN)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="loraplex.up"):
        assert local_hub_token(models, repos, env) == TOKEN
    assert env == {"LORAPLEX_ROUTER_MODELS_DIR_TOKEN": TOKEN, "HF_TOKEN": TOKEN}
    assert "org/private" in caplog.text and TOKEN not in caplog.text
    assert RouterSettings(models_dir=models, models_dir_token=TOKEN).models_dir_token is not None
    assert TOKEN not in repr(RouterSettings(models_dir=models, models_dir_token=TOKEN))


@pytest.mark.slow
@pytest.mark.e2e
def test_loraplex_up_over_the_test_repos(demo_models, tmp_path: Path) -> None:
    """The issue's reproduction: ``loraplex up`` over the test repos, real worker and local Hub.

    Before: gated with a wrong token → 401 "send a Hub token", private → the worker's 404 (unlike
    a missing repo's), and no token opened either."""
    repos = demo_models.test_repos
    env = {LOCAL_HUB_TOKEN_ENV: TOKEN, "OMP_NUM_THREADS": "1"}
    args = ["--models", str(demo_models.root), "--base-model", demo_models.base]
    args += ["--cache-dir", str(tmp_path / "cache")]
    with running_up(args, env) as url, httpx.Client(base_url=url, timeout=120) as client:

        def post(repo_id: str, label: str) -> httpx.Response:
            return client.post(f"/models/{repo_id}", json=BODY, headers=_auth(label))

        gated = {label: post(repos.gated, label) for label in TOKENS}
        private = {label: post(repos.private, label) for label in TOKENS}
        missing = post("nobody/nothing", "wrong")
    assert {k: r.status_code for k, r in gated.items()} == EXPECTED["gated"]
    assert {k: r.status_code for k, r in private.items()} == EXPECTED["private"]
    assert "send" not in gated["wrong"].json()["error"].lower()
    assert gated["right"].content.startswith(b"\x89PNG")
    assert private["right"].content.startswith(b"\x89PNG")
    hidden = private["wrong"].json()["error"].replace(repos.private, "<id>")
    assert hidden == missing.json()["error"].replace("nobody/nothing", "<id>")


@contextmanager
def running_up(args: list[str], env: dict[str, str]) -> Iterator[str]:
    """``loraplex up ARGS`` until its banner; yields the router URL; Ctrl-C on exit."""
    port = free_port("127.0.0.1")
    cmd = [sys.executable, "-m", "loraplex", "up", *args, "--port", str(port)]
    process = subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output: list[str] = []
    assert process.stdout is not None
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while not any("is serving on" in line for line in output):
            assert process.poll() is None and time.monotonic() < deadline, "".join(output[-40:])
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()  # our own child, by its handle
            process.wait(timeout=10)
    assert TOKEN not in "".join(output)  # the open token is never logged
