"""Hub access for the worker: resolve revisions, pick the weight file, download into the HF cache.

Everything goes through huggingface_hub, so ``HF_ENDPOINT``, ``HF_TOKEN`` and the cache folder
behave as for any Hub user. A request's own token (``Authorization: Bearer``, forwarded by the
router) is used instead of the worker's when given, so gated adapters a user may read work
without the worker holding a token for them; otherwise the worker's own token (``HF_TOKEN`` or
the token file, read with ``huggingface_hub.get_token``) is passed explicitly, so it also works
where implicit tokens are disabled. Tokens are never logged or put in messages.

Revision handling: a 40-hex commit is used as is (no network on a cache hit); a branch or tag is
resolved to its commit once per ``branch_ttl_seconds``, and the last known commit is kept when
the Hub is unreachable. Access control is the router's job (it resolves every model id with
the user's token); the worker checks access only when it has to fetch from the Hub. The weight
file chosen for a commit never changes, so it is remembered for the process's life.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import (
    HfApi,
    get_token,
    hf_hub_download,
    scan_cache_dir,
    snapshot_download,
    try_to_load_from_cache,
)
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from loraplex.worker.adapters import AdapterKey, DiskEntry, choose_weight_file, disk_evictions

from loraplex.shared.contract import AdapterRef
from loraplex.shared.errors import (
    Forbidden,
    LoraplexError,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UpstreamFailed,
)

try:  # huggingface_hub 2.x talks through httpx2; 1.x through httpx
    from httpx2 import HTTPError as HubTransportError
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    from httpx import HTTPError as HubTransportError

log = logging.getLogger(__name__)
COMMIT = re.compile(r"[0-9a-f]{40}")  # used with fullmatch: no trailing newline
BASE_MODEL_PATTERNS = ["*.json", "*.txt", "*.safetensors", "*.model"]


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache_dir = str(cache_dir) if cache_dir else None
        self.max_adapter_bytes = max_adapter_bytes
        self.branch_ttl_s = branch_ttl_s
        self._clock = clock
        self._branches: dict[tuple[str, str], tuple[str, float]] = {}
        self._files: dict[AdapterKey, WeightFile] = {}
        self._used: dict[AdapterKey, float] = {}  # our own record: atime is often off (noatime)
        self._lock = threading.Lock()

    def resolve(self, ref: AdapterRef, token: str | None) -> AdapterKey:
        """The (repo, commit) key of ``ref``; a branch or tag costs one Hub call per TTL."""
        if COMMIT.fullmatch(ref.revision):
            return AdapterKey(ref.repo_id, ref.revision)
        now = self._clock()
        with self._lock:
            memo = self._branches.get((ref.repo_id, ref.revision))
        if memo and now - memo[1] < self.branch_ttl_s:
            return AdapterKey(ref.repo_id, memo[0])
        try:
            weight = self._list(ref.repo_id, ref.revision, token)
        except UpstreamFailed:
            if memo is None:
                raise
            # Stale beats failing: the commit was right a moment ago and its weights are cached.
            log.warning("Hub unreachable; %s@%s stays at %s", ref.repo_id, ref.revision, memo[0])
            return AdapterKey(ref.repo_id, memo[0])
        with self._lock:
            self._branches[(ref.repo_id, ref.revision)] = (weight.key.commit, now)
        return weight.key

    def weight_file(self, key: AdapterKey, token: str | None) -> WeightFile:
        """The file to load for ``key`` (422 for pickle-only/ambiguous repos, 413 too big)."""
        with self._lock:
            known = self._files.get(key)
        if known is None:
            return self._list(key.repo_id, key.commit, token)
        self._check_size(known, known.size)  # the limit may have changed since it was listed
        return known

    def _list(self, repo_id: str, revision: str, token: str | None) -> WeightFile:
        token = token or get_token()
        with hub_errors(f"adapter {repo_id}@{revision}", token):
            info = HfApi(token=token).model_info(repo_id, revision=revision, files_metadata=True)
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
        """The file in the HF cache (the disk tier), without any network call."""
        found = try_to_load_from_cache(
            weight.key.repo_id,
            weight.filename,
            cache_dir=self.cache_dir,
            revision=weight.key.commit,
        )
        return Path(found) if isinstance(found, str) else None

    def download(self, weight: WeightFile, token: str | None) -> Path:
        token = token or get_token()
        with hub_errors(f"adapter {weight.key}", token):
            path = Path(
                hf_hub_download(
                    weight.key.repo_id,
                    weight.filename,
                    revision=weight.key.commit,
                    cache_dir=self.cache_dir,
                    token=token,
                )
            )
        self._check_size(weight, path.stat().st_size)
        self._used[weight.key] = time.time()
        return path

    def trim_disk(self, capacity_bytes: int, protected: frozenset[str]) -> list[AdapterKey]:
        """Delete least recently used adapter commits from the HF cache beyond the budget."""
        info = scan_cache_dir(self.cache_dir)
        entries = []
        for repo in info.repos:
            for rev in repo.revisions:
                key = AdapterKey(repo.repo_id, rev.commit_hash)
                last = max(self._used.get(key, 0.0), repo.last_accessed)
                entries.append(DiskEntry(key, rev.size_on_disk, last))
        evict = disk_evictions(entries, capacity_bytes, protected)
        if evict:
            info.delete_revisions(*(e.key.commit for e in evict)).execute()
            for entry in evict:
                self._used.pop(entry.key, None)
        return [e.key for e in evict]

    def snapshot(self, repo_id: str, revision: str, token: str | None) -> tuple[Path, str]:
        """Download a base pipeline (safetensors and configs only); returns (folder, commit)."""
        token = token or get_token()
        with hub_errors(f"base model {repo_id}@{revision}", token):
            commit = HfApi(token=token).model_info(repo_id, revision=revision).sha or revision
            folder = snapshot_download(
                repo_id,
                revision=commit,
                cache_dir=self.cache_dir,
                token=token,
                allow_patterns=BASE_MODEL_PATTERNS,
            )
        return Path(folder), commit


@contextmanager
def hub_errors(what: str, token: str | None) -> Iterator[None]:
    """Turn huggingface_hub failures into domain errors that name ``what`` (never the token)."""
    try:
        yield
    except GatedRepoError as exc:
        raise _gated(what, token, _status(exc)) from None
    except RepositoryNotFoundError as exc:
        if _status(exc) == 403:
            raise Forbidden(f"{what}: the Hub refused access with the given token") from None
        raise NotFound(
            f"{what} not found on the Hub (or private and not readable with the given token)"
        ) from None
    except RevisionNotFoundError:
        raise NotFound(f"{what}: no such revision on the Hub") from None
    except RemoteEntryNotFoundError:
        raise NotFound(f"{what}: the weight file is gone from the Hub") from None
    except HfHubHTTPError as exc:
        status = _status(exc)
        if status in (401, 403):
            raise _gated(what, token, status) from None
        raise UpstreamFailed(f"{what}: the Hub answered {status}; retry later") from None
    except (HubTransportError, LocalEntryNotFoundError) as exc:
        raise UpstreamFailed(f"{what}: the Hub is unreachable ({type(exc).__name__})") from None


def _status(exc: HfHubHTTPError) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _gated(what: str, token: str | None, status: int | None) -> LoraplexError:
    if token is None and status != 403:
        return Unauthorized(
            f"{what} is gated or private: send a Hub token with access "
            "(Authorization: Bearer) or set HF_TOKEN on the worker"
        )
    return Forbidden(f"{what} is gated and the Hub refused the token; request access first")
