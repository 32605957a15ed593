"""The worker's disk faults around the HF cache: a full disk, and a cached file cut short.

* :class:`DiskFull` — a download hit ``ENOSPC``/``EDQUOT``. 503 with ``Retry-After`` (a
  :class:`~loraplex.shared.errors.Unavailable`: this replica cannot take the request now, another
  may, and this one may after space is freed), with a message that says the disk is full and
  what to do. :func:`disk_full` builds it; :func:`is_disk_full` recognises the error;
  :func:`remove_partials` deletes the ``*.incomplete`` files a failed download may leave (this
  huggingface_hub removes its own; older ones left them for a resume), so no partial file stays
  in the cache and the next request downloads from scratch.
* :func:`incomplete_reason` — why a cached file cannot be whole: smaller or larger than the
  Hub listed, or a safetensors file whose header promises more bytes than the file has (a
  copy cut short by a crash, a full disk or a hand edit). :func:`drop_cached` removes it
  (snapshot link and blob), so the next load downloads it again instead of refusing it (422)
  for ever.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from huggingface_hub import constants
from huggingface_hub.file_download import repo_folder_name

from loraplex.shared.errors import Unavailable

log = logging.getLogger(__name__)
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
DISK_FULL_RETRY_AFTER_S = 30.0  # time for an operator (or trim_disk) to free space
SAFETENSORS_HEADER_MAX = 100 * 2**20  # safetensors' own limit on the JSON header


class DiskFull(Unavailable):
    """The worker's cache disk is full (503 with Retry-After); see the module docstring."""


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def disk_full(what: str, cache_dir: str | None) -> DiskFull:
    """The answer for a download of ``what`` that found no space in ``cache_dir``."""
    where = cache_dir or "the HF cache (HF_HUB_CACHE)"
    free = ""
    with suppress(OSError):
        free = f" ({shutil.disk_usage(cache_dir or '.').free / 2**20:.0f} MiB free)"
    return DiskFull(
        f"{what}: the worker's disk is full at {where}{free}; nothing partial was kept. Free "
        "space on that volume, or lower LORAPLEX_WORKER_DISK_CACHE_BYTES so fewer adapters "
        "are kept, or give the pool a larger cache volume; then retry",
        retry_after_s=DISK_FULL_RETRY_AFTER_S,
    )


def remove_partials(repo_cache: Path) -> list[Path]:
    """Delete ``blobs/*.incomplete`` of one repo's cache folder; returns what was deleted."""
    removed = []
    for partial in sorted((repo_cache / "blobs").glob("*.incomplete")):
        try:
            partial.unlink()
        except FileNotFoundError:
            continue  # another thread's download cleaned it meanwhile
        removed.append(partial)
    if removed:
        log.info("removed %d partial download(s) from %s", len(removed), repo_cache)
    return removed


def incomplete_reason(path: Path, expected_size: int | None) -> str | None:
    """Why ``path`` cannot be the whole file, or None when nothing says so."""
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        return f"{size} bytes where the Hub lists {expected_size}"
    if path.suffix != ".safetensors":
        return None
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"{size} bytes: shorter than a safetensors header"
        (header_len,) = struct.unpack("<Q", head)
        if header_len > SAFETENSORS_HEADER_MAX:
            return None  # not a header at all (garbage, not short): the loader's 422 says so
        if 8 + header_len > size:
            return f"{size} bytes: the safetensors header says {header_len} header bytes"
        try:
            header = json.loads(handle.read(header_len))
        except ValueError:
            return None  # malformed, not short: the loader's 422 names it
    ends = [
        int(v["data_offsets"][1])
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v
    ]
    wanted = 8 + header_len + max(ends, default=0)
    return f"{size} bytes where its header needs {wanted}" if size < wanted else None


def drop_cached(path: Path) -> None:
    """Remove a cached file: its snapshot link and the blob it points at."""
    blob = path.resolve()
    for item in (path, blob):
        with suppress(FileNotFoundError):
            os.unlink(item)


@contextmanager
def disk_errors(what: str, cache_dir: str | None, repo_id: str) -> Iterator[None]:
    """Turn a full disk during a download of ``repo_id`` into :class:`DiskFull`, after
    removing the partial files it left in that repo's cache folder."""
    try:
        yield
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        remove_partials(
            Path(cache_dir or constants.HF_HUB_CACHE)
            / repo_folder_name(repo_id=repo_id, repo_type="model")
        )
        raise disk_full(what, cache_dir) from None
