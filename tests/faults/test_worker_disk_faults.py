"""Fault matrix, worker disk rows: disk full during an adapter download; a cached file cut short.

Real parts: the worker app (tiny demo base, 64×64, 2 steps) under uvicorn on loopback, the real
huggingface_hub client downloading from the fixture Hub into a real HF cache on disk.

Stand-in, and why: a full disk cannot be made here (no root for a tiny tmpfs or loop device),
so huggingface_hub's ``http_get`` is wrapped to hand the download a file whose ``write`` puts
the first half of a chunk on disk and then raises ``OSError(ENOSPC)`` — what a full volume
does to the writer. Everything around it (the partial file, huggingface_hub's clean-up, the
worker's mapping) is the real code.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fixtures.worker import (
    WorkerServer,
    one_torch_thread,  # noqa: F401 - pytest fixture
    tiny_worker_settings,
)
from huggingface_hub import HfApi, file_download, hf_hub_download

from loraplex.demo.models import LORA_R4, LORA_R8_ALPHA16
from loraplex.shared.contract import Headers

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def worker(hub_cache: Path) -> Iterator[WorkerServer]:
    server = WorkerServer(tiny_worker_settings(hub_cache))
    server.start()
    server.wait_ready()
    yield server
    server.stop()


def generate(worker: WorkerServer, adapter: str) -> httpx.Response:
    body = {"prompt": "a photo of sks", "seed": 3, "adapter": {"repo_id": adapter}}
    return httpx.post(f"{worker.url}/v1/generate", json=body, headers=worker.headers, timeout=60)


def repo_files(cache: Path, repo_id: str) -> list[Path]:
    """Every file (blobs, partials, snapshot links) the HF cache holds for ``repo_id``."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink())


class _FullDisk:
    """A download file whose first write stores half its bytes, then the disk is full."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def write(self, data: bytes) -> int:
        self._real.write(data[: len(data) // 2])
        self._real.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_disk_full_during_download_is_a_clean_503_and_the_next_request_succeeds(
    worker: WorkerServer, hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Figures: the request answers 503 with Retry-After and "disk is full" (not 500);
    partial files left in the cache 0 (no blob, no ``.incomplete``, no snapshot file); the
    next request, once space is back, 200 from the Hub tier."""
    real_http_get = file_download.http_get
    monkeypatch.setattr(
        file_download, "http_get", lambda url, f, **kw: real_http_get(url, _FullDisk(f), **kw)
    )
    response = generate(worker, LORA_R4)
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    error = response.json()["error"]
    assert "disk is full" in error and "LORAPLEX_WORKER_DISK_CACHE_BYTES" in error
    leftovers = [p for p in repo_files(hub_cache, LORA_R4) if "blobs" in p.parts or p.suffix]
    assert leftovers == [], leftovers  # refs/main may stay: it is the listing, not the file

    monkeypatch.setattr(file_download, "http_get", real_http_get)  # space is back
    response = generate(worker, LORA_R4)
    assert response.status_code == 200, response.text
    assert response.headers[Headers.SWITCH_TIER] == "hub"


def test_cached_file_cut_short_is_downloaded_again_not_422(
    worker: WorkerServer, hub_cache: Path, hub_server
) -> None:
    """A crash left the adapter's safetensors file in the HF cache cut to half its size.
    Figures: the first request 200 (not 422); the file is downloaded again (1 more GET of it
    from the Hub) and the cached copy is whole afterwards."""
    info = HfApi().model_info(LORA_R8_ALPHA16, files_metadata=True)
    weight = next(s for s in info.siblings if s.rfilename.endswith(".safetensors"))
    cached = Path(hf_hub_download(LORA_R8_ALPHA16, weight.rfilename, cache_dir=hub_cache))
    blob = cached.resolve()
    blob.write_bytes(blob.read_bytes()[: weight.size // 2])
    gets_before = hub_server.count(f"/{LORA_R8_ALPHA16}/resolve/", method="GET")

    response = generate(worker, LORA_R8_ALPHA16)
    assert response.status_code == 200, response.text
    assert response.headers[Headers.SWITCH_TIER] == "hub"  # downloaded again, not disk
    assert hub_server.count(f"/{LORA_R8_ALPHA16}/resolve/", method="GET") == gets_before + 1
    assert cached.resolve().stat().st_size == weight.size
