"""Hub access for the worker: resolve revisions, pick the weight file, download into the HF cache.

Everything goes through huggingface_hub, so ``HF_ENDPOINT``, ``HF_TOKEN`` and the cache folder
behave as for any Hub user. A request's own token (``Authorization: Bearer``, forwarded by the
router) is used instead of the worker's when given, so gated adapters a user may read work
without the worker holding a token for them; otherwise the worker's own token (``HF_TOKEN`` or
the token file, read with ``huggingface_hub.get_token``) is passed explicitly, so it also works
where implicit tokens are disabled. Tokens are never logged or put in messages.

Revision handling: a 40-hex commit is used as is (no network on a cache hit); a branch or tag is
resolved to its commit once per ``branch_ttl_seconds`` *per caller token* (a resolution made
with a token is never reused for a caller without it, or with another), and the last known
commit is kept when the Hub is unreachable. The weight file chosen for a commit never changes,
so it is remembered for the process's life.

Access: the router resolves every model id with the user's token, and the worker checks again,
so a cached adapter is never a way around the Hub's access rules. Every listing of a repo
(``model_info``, at the first load of a commit and at each branch resolution) records whether
it is gated or private; for such a repo :meth:`HubFetcher.authorize` asks the Hub
(``HfApi.auth_check``) whether the token may read it before every use, cached or not — the
same token a cold load would download with (the caller's, else the worker's own). No token at
all: 401 without a Hub call; a refused one: the Hub's own answer (403 gated, 404 private).
Yeses are cached per (repo, SHA-256 of the token) for ``access_ttl_s`` (bounded LRU), so a
revoked token works at most that long; noes are not cached. Public repos cost nothing. If the
Hub is down, restricted adapters without a fresh yes fail closed (502); public ones still serve.
A repo made private after its commit was loaded as public keeps serving that (public) commit
until it is listed again (a restart, or a branch resolution).

Progress: the base download reports its bytes to a :class:`~loraplex.worker.progress.LoadProgress`
(``/readyz``) through huggingface_hub's ``tqdm_class`` (:mod:`loraplex.worker.hub_bars`; nothing
is printed), its total from the Hub's listing (file sizes; files already in the cache count as
downloaded). Downloads over 50 MiB log their progress and rate
(:class:`~loraplex.worker.progress.DownloadLog`: about ten lines per file): adapters at INFO;
the base at INFO too unless stderr is a terminal (DEBUG then: whoever watches it has
``/readyz``, and ``loraplex up`` draws its own progress lines there).

Disk tier (:mod:`loraplex.worker.hf_cache`): the HF cache's use record and LRU trim.
Disk faults (:mod:`loraplex.worker.cache_files`): a full disk during a download answers 503
with Retry-After, saying so, and leaves no partial file; a cached file cut short is removed and
downloaded again, not refused. Hub errors map to domain errors in :mod:`loraplex.worker.hub_errors`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import (
    HfApi,
    get_token,
    hf_hub_download,
    snapshot_download,
    try_to_load_from_cache,
)
from huggingface_hub.hf_api import RepoSibling
from huggingface_hub.utils import filter_repo_objects
from loraplex.worker.adapters import AdapterKey, choose_weight_file
from loraplex.worker.base_files import MODEL_INDEX, BaseFiles, base_files
from loraplex.worker.cache_files import disk_errors, drop_cached, incomplete_reason
from loraplex.worker.hf_cache import HfCacheDisk
from loraplex.worker.hub_bars import BarSink, counting_bars
from loraplex.worker.hub_errors import hub_errors
from loraplex.worker.keyed_locks import KeyedLocks
from loraplex.worker.progress import LOGGED_DOWNLOAD_BYTES, DownloadLog, LoadProgress

from loraplex.shared.contract import AdapterRef
from loraplex.shared.errors import PayloadTooLarge, Unauthorized, UpstreamFailed

log = logging.getLogger(__name__)
COMMIT = re.compile(r"[0-9a-f]{40}")  # used with fullmatch: no trailing newline
BASE_MODEL_PATTERNS = ["*.json", "*.txt", "*.safetensors", "*.model"]
# Bounds of the per-token memories (entries, LRU): one entry is ~200 bytes, so ~2 MB each.
MAX_BRANCH_MEMOS = 10_000
MAX_ACCESS_GRANTS = 10_000
# Older huggingface_hub releases count a single file's bytes only through their own bars.
FILE_DOWNLOAD_TAKES_BARS = "tqdm_class" in inspect.signature(hf_hub_download).parameters


def token_digest(token: str | None) -> str | None:
    """What the memories key on instead of a token: its SHA-256 (the token is never kept)."""
    return hashlib.sha256(token.encode()).hexdigest() if token else None


class _Lru(OrderedDict[Hashable, tuple[str, float]]):
    """A bounded map of (value, time stamp); the caller holds the lock."""

    def __init__(self, max_entries: int) -> None:
        super().__init__()
        self.max_entries = max_entries

    def put(self, key: Hashable, value: str, stamp: float) -> None:
        self[key] = (value, stamp)
        self.move_to_end(key)
        while len(self) > self.max_entries:
            self.popitem(last=False)


@dataclass(frozen=True)
class WeightFile:
    """The one file of an adapter commit the worker will load."""

    key: AdapterKey
    filename: str
    size: int | None


class HubFetcher:
    """Resolves and downloads adapters; maps Hub failures to domain errors."""

    def __init__(
        self,
        *,
        cache_dir: Path | None,
        max_adapter_bytes: int,
        branch_ttl_s: float,
        access_ttl_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache_dir = str(cache_dir) if cache_dir else None
        self.max_adapter_bytes = max_adapter_bytes
        self.branch_ttl_s = branch_ttl_s
        self.access_ttl_s = access_ttl_s
        self._clock = clock
        # (repo, revision, token digest) -> commit; (repo, token digest) -> "" (a Hub yes).
        self._branches = _Lru(MAX_BRANCH_MEMOS)
        self._grants = _Lru(MAX_ACCESS_GRANTS)
        self._restricted: dict[str, bool] = {}  # repo -> gated or private, as last listed
        self._files: dict[AdapterKey, WeightFile] = {}
        # Several threads call in (the device thread, prefetch's I/O threads: worker/prefetch.py):
        # _lock guards the memories above; the disk tier has its own.
        self._lock = threading.Lock()
        self._disk = HfCacheDisk(self.cache_dir)
        self._gates = KeyedLocks()  # one Hub question at a time per (repo, revision|grant)

    def resolve(self, ref: AdapterRef, token: str | None) -> AdapterKey:
        """The (repo, commit) key of ``ref`` once ``token`` may use it (:meth:`authorize`);
        a branch or tag costs one Hub call per TTL and caller token."""
        key = self._commit_of(ref, token)
        self.authorize(key.repo_id, token)
        return key

    def _commit_of(self, ref: AdapterRef, token: str | None) -> AdapterKey:
        if COMMIT.fullmatch(ref.revision):
            return AdapterKey(ref.repo_id, ref.revision)
        memo_key = (ref.repo_id, ref.revision, token_digest(token))
        memo = self._branch_memo(memo_key)
        if memo is not None and memo[1]:
            return AdapterKey(ref.repo_id, memo[0])
        with self._gates.hold(memo_key):  # another thread may have just resolved it
            memo = self._branch_memo(memo_key)
            if memo is not None and memo[1]:
                return AdapterKey(ref.repo_id, memo[0])
            now = self._clock()
            try:
                weight = self._list(ref.repo_id, ref.revision, token)
            except UpstreamFailed:
                if memo is None:
                    raise
                # Stale beats failing: the commit was right a moment ago and its weights are
                # cached.
                log.warning(
                    "Hub unreachable; %s@%s stays at %s", ref.repo_id, ref.revision, memo[0]
                )
                return AdapterKey(ref.repo_id, memo[0])
            with self._lock:
                self._branches.put(memo_key, weight.key.commit, now)
        return weight.key

    def _branch_memo(self, memo_key: Hashable) -> tuple[str, bool] | None:
        """The remembered commit of a (repo, revision, token digest) and whether it is fresh."""
        with self._lock:
            memo = self._branches.get(memo_key)
        if memo is None:
            return None
        return memo[0], self._clock() - memo[1] < self.branch_ttl_s

    def authorize(self, repo_id: str, token: str | None) -> None:
        """Return when ``token`` (else the worker's own) may read ``repo_id``, or raise 401
        (no token), 403/404 (the Hub refused it), 502 (Hub unreachable). Free for public
        repos and for repos not listed yet (their first listing authorizes)."""
        with self._lock:
            restricted = self._restricted.get(repo_id, False)
        if not restricted:
            return
        effective = token or get_token()
        if effective is None:
            raise Unauthorized(
                f"adapter {repo_id} is gated or private: send a Hub token that can read it "
                "(Authorization: Bearer)"
            )
        grant = (repo_id, token_digest(effective))
        if self._granted(grant):
            return
        with self._gates.hold(grant):  # a second thread asking the same waits for the first
            if self._granted(grant):
                return
            now = self._clock()
            with hub_errors(f"adapter {repo_id}", effective):
                HfApi(token=effective).auth_check(repo_id, token=effective)
            with self._lock:
                self._grants.put(grant, "", now)

    def _granted(self, grant: Hashable) -> bool:
        with self._lock:
            known = self._grants.get(grant)
            if known is not None and self._clock() - known[1] < self.access_ttl_s:
                self._grants.move_to_end(grant)
                return True
        return False

    def weight_file(self, key: AdapterKey, token: str | None) -> WeightFile:
        """The file to load for ``key`` (422 for pickle-only/ambiguous repos, 413 too big)."""
        with self._lock:
            known = self._files.get(key)
        if known is None:
            return self._list(key.repo_id, key.commit, token)
        self._check_size(known, known.size)  # the limit may have changed since it was listed
        return known

    def _list(self, repo_id: str, revision: str, token: str | None) -> WeightFile:
        caller, token = token, token or get_token()
        with hub_errors(f"adapter {repo_id}@{revision}", token):
            info = HfApi(token=token).model_info(repo_id, revision=revision, files_metadata=True)
        with self._lock:
            self._restricted[repo_id] = bool(info.gated) or bool(info.private)
        self.authorize(repo_id, caller)  # gated metadata is public on the Hub: check the files'
        siblings = {s.rfilename: s.size for s in info.siblings or []}
        filename = choose_weight_file(repo_id, siblings)
        weight = WeightFile(AdapterKey(repo_id, info.sha or revision), filename, siblings[filename])
        self._check_size(weight, weight.size)
        with self._lock:
            self._files[weight.key] = weight
        return weight

    def _check_size(self, weight: WeightFile, size: int | None) -> None:
        if size is not None and size > self.max_adapter_bytes:
            raise PayloadTooLarge(
                f"adapter {weight.key} is {size / 2**20:.1f} MiB, over this worker's maximum of "
                f"{self.max_adapter_bytes / 2**20:.1f} MiB (LORAPLEX_WORKER_MAX_ADAPTER_BYTES)"
            )

    def cached_path(self, weight: WeightFile) -> Path | None:
        """The file in the HF cache (the disk tier), without any network call. A copy cut
        short is removed and None returned, so it is downloaded again (not refused for ever)."""
        found = try_to_load_from_cache(
            weight.key.repo_id,
            weight.filename,
            cache_dir=self.cache_dir,
            revision=weight.key.commit,
        )
        return Path(found) if isinstance(found, str) and self._whole(weight, Path(found)) else None

    def _whole(self, weight: WeightFile, path: Path) -> bool:
        reason = incomplete_reason(path, weight.size)
        if reason is not None:
            log.warning("cached %s is cut short (%s): removed, to download again", weight, reason)
            drop_cached(path)
        return reason is None

    def download(self, weight: WeightFile, token: str | None) -> Path:
        token = token or get_token()
        progress_log = _download_log(f"adapter {weight.key}", weight.size or 0)
        progress_log = progress_log if FILE_DOWNLOAD_TAKES_BARS else None
        bars: dict[str, Any] = {}
        if progress_log is not None:
            bars["tqdm_class"] = counting_bars(_sink(progress_log))
        what = f"adapter {weight.key}"
        with (
            self._disk.downloading(weight.key.repo_id),
            hub_errors(what, token),
            disk_errors(what, self.cache_dir, weight.key.repo_id),
        ):
            for attempt in range(2):  # hf_hub_download trusts a cached blob: drop a short one
                path = Path(
                    hf_hub_download(
                        weight.key.repo_id,
                        weight.filename,
                        revision=weight.key.commit,
                        cache_dir=self.cache_dir,
                        token=token,
                        **bars,
                    )
                )
                if attempt or self._whole(weight, path):
                    break  # what the Hub itself serves is the loader's to judge
        if progress_log is not None:
            log.info("%s", progress_log.finished())
        self._check_size(weight, path.stat().st_size)
        self._disk.used(weight.key)
        return path

    def trim_disk(self, capacity_bytes: int, protected: frozenset[str]) -> list[AdapterKey]:
        """Delete least recently used adapter commits from the HF cache beyond the budget
        (never those of ``protected`` repos, nor of repos another thread is downloading)."""
        return self._disk.trim(capacity_bytes, protected)

    def snapshot(
        self,
        repo_id: str,
        revision: str,
        token: str | None,
        progress: LoadProgress | None = None,
        *,
        prefer_variant: str | None = None,
    ) -> tuple[Path, str, str | None]:
        """Download a base pipeline; returns (folder, commit, weights variant to load).

        Only what ``from_pretrained`` reads (:mod:`loraplex.worker.base_files`: the components
        ``model_index.json`` names, one set of weights each, ``prefer_variant`` where there is
        one), else every safetensors and config file. ``progress`` turns ``downloading`` and
        follows the bytes (see the module docstring)."""
        token = token or get_token()
        progress = progress or LoadProgress()
        what = f"base model {repo_id}@{revision}"
        with hub_errors(what, token), disk_errors(what, self.cache_dir, repo_id):
            info = HfApi(token=token).model_info(repo_id, revision=revision, files_metadata=True)
            commit = info.sha or revision
            siblings = info.siblings or []
            plan = self._base_plan(repo_id, commit, siblings, token, prefer_variant)
            patterns = list(plan.files) if plan else BASE_MODEL_PATTERNS
            total, cached = self._base_sizes(repo_id, commit, siblings, patterns)
            progress.downloading(total, cached)
            base_log = _download_log(f"base {repo_id}", total - cached)
            folder = snapshot_download(
                repo_id,
                revision=commit,
                cache_dir=self.cache_dir,
                token=token,
                allow_patterns=patterns,
                tqdm_class=counting_bars(_sink(base_log, progress.report, _base_level())),
            )
        if base_log is not None:
            log.log(_base_level(), "%s", base_log.finished())
        return Path(folder), commit, plan.variant if plan else None

    def _base_plan(
        self,
        repo_id: str,
        commit: str,
        siblings: list[RepoSibling],
        token: str | None,
        prefer_variant: str | None,
    ) -> BaseFiles | None:
        """The files ``from_pretrained`` reads, from the repo's ``model_index.json``; None when
        it has none (or one that is not a JSON object): then the broad patterns."""
        names = [s.rfilename for s in siblings]
        if MODEL_INDEX not in names:
            return None
        index_path = hf_hub_download(
            repo_id, MODEL_INDEX, revision=commit, cache_dir=self.cache_dir, token=token
        )
        try:
            index = json.loads(Path(index_path).read_text())
        except (ValueError, UnicodeDecodeError):
            return None  # from_pretrained will say what is wrong with it
        return base_files(names, index, prefer_variant) if isinstance(index, dict) else None

    def _base_sizes(
        self, repo_id: str, commit: str, siblings: list[RepoSibling], patterns: list[str]
    ) -> tuple[int, int]:
        """(bytes of the base files :meth:`snapshot` fetches, bytes of those already cached);
        files the listing gives no size count 0."""
        total = cached = 0
        picked = filter_repo_objects(siblings, allow_patterns=patterns, key=lambda s: s.rfilename)
        for sibling in picked:
            size = sibling.size or 0
            total += size
            found = try_to_load_from_cache(
                repo_id, sibling.rfilename, cache_dir=self.cache_dir, revision=commit
            )
            cached += size if isinstance(found, str) else 0
        return total, cached


def _download_log(what: str, size: int) -> DownloadLog | None:
    """A progress log for a download of ``size`` bytes, if it is big enough to need one."""
    return DownloadLog(what, size) if size > LOGGED_DOWNLOAD_BYTES else None


def _sink(
    progress_log: DownloadLog | None, also: BarSink | None = None, level: int = logging.INFO
) -> BarSink:
    """Where the bars of one download report: ``also`` (a :class:`LoadProgress`), and the log
    lines ``progress_log`` asks for (at ``level``)."""

    def report(bar: Hashable, done: int, total: int | None) -> None:
        if also is not None:
            also(bar, done, total)
        if progress_log is not None and (line := progress_log.report(bar, done, total)):
            log.log(level, "%s", line)

    return report


def _base_level() -> int:
    """The base download's progress lines: DEBUG on a terminal (see the module docstring)."""
    return logging.DEBUG if sys.stderr.isatty() else logging.INFO
