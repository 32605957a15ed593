"""The HF cache folder as the worker's disk tier: its use record, its trim, its listing.

:class:`HfCacheDisk` is the part of :class:`~loraplex.worker.fetch.HubFetcher` that keeps the
cache within its budget: it records when each adapter commit was last used (our own record:
atime is often off, ``noatime``), marks the repos being downloaded, and deletes the least
recently used commits beyond the budget (:func:`~loraplex.worker.adapters.disk_evictions`).
:func:`scan_hf_cache` is the listing ``/v1/state`` reports (:mod:`loraplex.worker.load_costs`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import scan_cache_dir
from huggingface_hub.errors import CacheNotFound
from loraplex.worker.adapters import AdapterKey, DiskEntry, disk_evictions
from loraplex.worker.load_costs import Scan


class HfCacheDisk:
    """Use record, downloads in progress and LRU trim of one HF cache folder (None: the
    default one). Thread-safe: the device thread and prefetch's I/O threads call in."""

    def __init__(self, cache_dir: str | None) -> None:
        self.cache_dir = cache_dir
        self._used: dict[AdapterKey, float] = {}  # our own record: atime is often off (noatime)
        # _lock guards the two maps, _trim_lock makes trims one at a time, and a repo with a
        # download in progress is never trimmed (another thread is writing its blob).
        self._lock = threading.Lock()
        self._trim_lock = threading.Lock()
        self._downloading: dict[str, int] = {}  # repo -> downloads in progress

    def used(self, key: AdapterKey) -> None:
        """Record that ``key``'s files were just fetched or used."""
        with self._lock:
            self._used[key] = time.time()

    @contextmanager
    def downloading(self, repo_id: str) -> Iterator[None]:
        """Mark ``repo_id`` as downloading (protected from :meth:`trim`) while it runs."""
        with self._lock:
            self._downloading[repo_id] = self._downloading.get(repo_id, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._downloading[repo_id] -= 1
                if not self._downloading[repo_id]:
                    del self._downloading[repo_id]

    def trim(self, capacity_bytes: int, protected: frozenset[str]) -> list[AdapterKey]:
        """Delete least recently used adapter commits from the HF cache beyond the budget
        (never those of ``protected`` repos, nor of repos another thread is downloading)."""
        with self._trim_lock:
            info = scan_cache_dir(self.cache_dir)
            # Read after the scan: a download that started during it is protected too.
            with self._lock:
                used = dict(self._used)
                protected = protected | frozenset(self._downloading)
            entries = []
            for repo in info.repos:
                for rev in repo.revisions:
                    key = AdapterKey(repo.repo_id, rev.commit_hash)
                    last = max(used.get(key, 0.0), repo.last_accessed)
                    entries.append(DiskEntry(key, rev.size_on_disk, last))
            evict = disk_evictions(entries, capacity_bytes, protected)
            if evict:
                info.delete_revisions(*(e.key.commit for e in evict)).execute()
                with self._lock:
                    for entry in evict:
                        self._used.pop(entry.key, None)
        return [e.key for e in evict]


def scan_hf_cache(cache_dir: Path | None, exclude: frozenset[str]) -> Scan:
    """A :data:`~loraplex.worker.load_costs.Scan` of the HF cache's model repos (revisions as
    ``repo@commit``), leaving out the repos in ``exclude`` (the base model). A missing cache
    folder is an empty disk."""

    def scan() -> list[tuple[str, float]]:
        try:
            info = scan_cache_dir(cache_dir)
        except CacheNotFound:  # nothing downloaded yet
            return []
        return [
            (f"{repo.repo_id}@{rev.commit_hash}", repo.last_accessed)
            for repo in info.repos
            if repo.repo_type == "model" and repo.repo_id not in exclude
            for rev in repo.revisions
        ]

    return scan
