"""Issue 17 row 8: the local Hub puts no request data in headers and serves nothing outside DIR.

Before the fix, ``GET /api/models/o/r/revision/%E2%98%83`` answered 500 (the revision went into
``X-Error-Message``, which cannot carry non-latin-1), NUL/CR/LF dropped the connection with a
traceback, and a symlink in the models folder published whatever it pointed at. The server here
is the real one (``loraplex.localhub.server`` under uvicorn, as ``loraplex up`` and the test
Hub run it) over a folder built per test; requests go over real sockets so a dropped
connection shows as one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fixtures.hub import HubServer, point_client_at
from huggingface_hub import hf_hub_download, model_info
from huggingface_hub.errors import (
    GatedRepoError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from loraplex.localhub.store import RepoStore

TOKEN = "hf_security_test_token"
SECRET = "TOP SECRET: outside the models folder"
# Each path segment below is sent percent-encoded, exactly as a client would.
HOSTILE = ["%E2%98%83", "%00", "a%0D%0AX-Injected:%201", "%0A", "%FF%FE", "caf%C3%A9", "%7F"]


def _card(folder: Path, front: str = "tags: [lora]") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(f"---\n{front}\n---\n# card\n")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to the models folder, holding what must never be served."""
    secret = tmp_path / "outside"
    _card(secret / "repo", "base_model: evil/base\ntags: [lora]")
    (secret / "secret.txt").write_text(SECRET)
    (secret / "repo" / "secret.safetensors").write_text(SECRET)
    (secret / "model_index.json").write_text('{"_class_name": "LeakedPipeline"}')
    return secret


@pytest.fixture
def models(tmp_path: Path, outside: Path) -> Path:
    root = tmp_path / "models"
    _card(root / "o" / "r")
    (root / "o" / "r" / "weights.safetensors").write_bytes(b"\0" * 16)
    _card(root / "o" / "links")
    os.symlink(outside / "secret.txt", root / "o" / "links" / "leak.txt")
    os.symlink(outside / "model_index.json", root / "o" / "links" / "model_index.json")
    os.symlink(root / "o" / "r" / "weights.safetensors", root / "o" / "links" / "inside.bin")
    (root / "o" / "readme-out").mkdir()
    os.symlink(outside / "repo" / "README.md", root / "o" / "readme-out" / "README.md")
    os.symlink(outside / "repo", root / "o" / "repo-out")  # repo-folder level
    os.symlink(outside, root / "org-out")  # org level: org-out/repo is outside
    os.mkfifo(root / "o" / "r" / "fifo.bin")  # not a regular file: never listed or opened
    _card(root / "o" / "☃")  # a repo whose own id is not latin-1
    _card(root / "o" / "gated")
    (root / ".hub-access.json").write_text(json.dumps({"gated": ["o/☃", "o/gated"]}))
    return root


@pytest.fixture
def hub(models: Path) -> Iterator[HubServer]:
    server = HubServer(models, token=TOKEN).start()
    yield server
    server.stop()


def _get(hub: HubServer, path: str, **kw: object) -> httpx.Response:
    # A raw request path, not normalised by the client: what an attacker would send.
    with httpx.Client(base_url=hub.url, timeout=10) as client:
        return client.get(path, **kw)  # type: ignore[arg-type]


def _assert_clean_error(resp: httpx.Response, status: int) -> None:
    assert resp.status_code == status, (resp.status_code, resp.text)
    for name, value in resp.headers.items():
        assert value.isascii() and value.isprintable(), (name, value)
    assert "x-injected" not in resp.headers
    body = resp.json()
    assert isinstance(body["error"], str) and body["error"].isascii()
    assert body["error"].isprintable()


@pytest.mark.parametrize("segment", HOSTILE)
def test_hostile_revisions_and_paths_are_clean_404s(hub: HubServer, segment: str) -> None:
    """The issue's reproduction and its NUL/CR/LF cousins, in every place a path lands."""
    for path in (
        f"/api/models/o/r/revision/{segment}",
        f"/api/models/o/r/tree/{segment}",
        f"/api/models/o/r/tree/main/{segment}",
        f"/o/r/resolve/{segment}/README.md",
        f"/o/r/resolve/main/{segment}",
        f"/api/models/{segment}",
    ):
        resp = _get(hub, path)
        _assert_clean_error(resp, 404)
        assert resp.headers["x-error-code"] in ("RevisionNotFound", "EntryNotFound", "RepoNotFound")


def test_the_error_body_names_what_was_asked_escaped(hub: HubServer) -> None:
    resp = _get(hub, "/api/models/o/r/revision/%E2%98%83")
    _assert_clean_error(resp, 404)
    assert resp.headers["x-error-message"] == "Invalid rev id"
    assert "\\u2603" in resp.json()["error"]  # the snowman, escaped: the caller sees what failed
    long = _get(hub, "/api/models/o/r/revision/" + "x" * 5000)
    _assert_clean_error(long, 404)
    assert len(long.json()["error"]) < 300


def test_a_repo_whose_id_is_not_latin1_errors_cleanly(hub: HubServer) -> None:
    """The repo id itself went into the gated message header before."""
    _assert_clean_error(_get(hub, "/api/models/o/%E2%98%83"), 401)
    wrong = {"authorization": "Bearer hf_wrong"}
    _assert_clean_error(_get(hub, "/api/models/o/%E2%98%83", headers=wrong), 403)
    ok = _get(hub, "/api/models/o/%E2%98%83", headers={"authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["gated"] == "manual"


def test_the_real_client_still_raises_its_own_errors(hub, tmp_path, monkeypatch) -> None:
    point_client_at(monkeypatch, hub.url, tmp_path / "cache")
    with pytest.raises(RevisionNotFoundError):
        model_info("o/r", revision="☃")
    with pytest.raises(RevisionNotFoundError):
        model_info("o/r", revision="a\r\nX-Injected: 1")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("o/r", "caf\u00e9.txt")
    with pytest.raises(GatedRepoError):
        model_info("o/gated")
    with pytest.raises(RepositoryNotFoundError):
        model_info("o/repo-out")


def test_symlinked_files_out_of_the_folder_are_missing(hub: HubServer) -> None:
    info = _get(hub, "/api/models/o/links").json()
    names = {s["rfilename"] for s in info["siblings"]}
    assert names == {"README.md", "inside.bin"}  # a link that stays inside DIR is a file
    assert "config" not in info  # the linked-out model_index.json is not read either
    for path in ("leak.txt", "model_index.json"):
        resp = _get(hub, f"/o/links/resolve/main/{path}")
        _assert_clean_error(resp, 404)
        assert resp.headers["x-error-code"] == "EntryNotFound"
        assert SECRET not in resp.text
    tree = _get(hub, "/api/models/o/links/tree/main", params={"recursive": "true"}).json()
    assert {e["path"] for e in tree} == {"README.md", "inside.bin"}
    assert _get(hub, "/o/links/resolve/main/inside.bin").content == b"\0" * 16


def test_symlinked_repos_and_orgs_out_of_the_folder_do_not_exist(hub: HubServer) -> None:
    for repo in ("o/repo-out", "org-out/repo"):
        resp = _get(hub, f"/api/models/{repo}")
        _assert_clean_error(resp, 404)
        assert resp.headers["x-error-code"] == "RepoNotFound"
        resp = _get(hub, f"/{repo}/resolve/main/secret.safetensors")
        assert resp.status_code == 404 and SECRET not in resp.text


def test_a_card_linked_from_outside_is_not_read(hub: HubServer) -> None:
    info = _get(hub, "/api/models/o/readme-out").json()
    assert info["cardData"] == {} and info["siblings"] == []
    assert not any(tag.startswith("base_model:") for tag in info["tags"])


def test_fifos_are_not_files(hub: HubServer) -> None:
    info = _get(hub, "/api/models/o/r").json()
    assert "fifo.bin" not in {s["rfilename"] for s in info["siblings"]}
    _assert_clean_error(_get(hub, "/o/r/resolve/main/fifo.bin"), 404)


def test_a_file_swapped_for_a_symlink_after_the_scan_is_not_sent(
    models: Path, outside: Path
) -> None:
    """The file is checked again when it is opened, not only when the repo is listed."""
    store = RepoStore(models)
    snap = store.get("o/r")
    assert snap is not None
    entry = snap.files["weights.safetensors"]
    assert store.open_path(snap, entry) == (models / "o/r/weights.safetensors").resolve()
    (models / "o/r/weights.safetensors").unlink()
    os.symlink(outside / "secret.txt", models / "o/r/weights.safetensors")
    assert store.open_path(snap, entry) is None


def test_the_access_file_and_dot_folders_are_never_served(hub: HubServer) -> None:
    for path in ("/api/models/.hub-access.json", "/.hub-access.json", "/o/.git/resolve/main/x"):
        assert _get(hub, path).status_code == 404


@pytest.mark.parametrize("value", ["Bearer t\u00f6ken", "Bearer hf_\u2603", "Bearer hf_\u00a0x"])
def test_a_token_that_is_not_visible_ascii_is_refused_cleanly(hub: HubServer, value: str) -> None:
    """The Hub's own answer for bad credentials; never a 500 from the token check."""
    resp = _get(hub, "/api/models/o/gated", headers={"authorization": value.encode()})
    _assert_clean_error(resp, 401)
    assert resp.headers["x-error-message"] == "Invalid credentials in Authorization header"
