"""The local Hub's view of a models folder: repos as snapshots of hashed files.

Each ``ROOT/<org>/<name>/`` folder is a repo; its one commit is a sha1 over its files' paths and
sha256s. Only regular files whose real path lies inside ROOT are part of a repo
(:mod:`loraplex.shared.repo_access`). Hashes are cached by (path, size, mtime), so repeated
reads of a multi-GB base stay cheap.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub.repocard import metadata_load

from loraplex.shared.repo_access import AccessRules, inside, servable_file

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".msgpack", ".h5", ".gguf")
LFS_POINTER_SIZE = 134


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    git_oid: str
    mtime: float = 0.0  # seconds since the epoch, from the stat the hash cache key needs

    @property
    def is_lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES)

    @property
    def etag(self) -> str:
        return self.sha256 if self.is_lfs else self.git_oid


@dataclass(frozen=True)
class RepoSnapshot:
    repo_id: str
    folder: Path
    files: dict[str, FileEntry]
    sha: str
    card: dict[str, Any]
    last_modified: float


def _hash_file(path: Path) -> tuple[str, str]:
    """sha256 and git blob sha1, read in chunks: an SDXL repo holds files of several GB."""
    sha256 = hashlib.sha256()
    git = hashlib.sha1(b"blob %d\0" % path.stat().st_size, usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            sha256.update(chunk)
            git.update(chunk)
    return sha256.hexdigest(), git.hexdigest()


class RepoStore:
    """Reads repos from ``root``; file hashes are cached by (size, mtime) so reads stay cheap."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._hashes: dict[tuple[Path, int, int], tuple[str, str]] = {}
        self._lock = threading.Lock()

    def access_rules(self) -> AccessRules:
        """The folder's gated/private rules (:class:`AccessRules`, shared with the router)."""
        return AccessRules.read(self.root)

    def _entry(self, folder: Path, path: Path) -> FileEntry:
        stat = path.stat()
        key = (path, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            hashes = self._hashes.get(key)
        if hashes is None:
            hashes = _hash_file(path)
            with self._lock:
                self._hashes[key] = hashes
        rel = path.relative_to(folder).as_posix()
        return FileEntry(rel, stat.st_size, *hashes, mtime=stat.st_mtime)

    def get(self, repo_id: str) -> RepoSnapshot | None:
        folder = self.repo_folder(repo_id)
        if folder is None:
            return None
        files = {e.path: e for e in (self._entry(folder, p) for p in self._servable(folder))}
        digest = hashlib.sha1(usedforsecurity=False)
        for entry in files.values():
            digest.update(f"{entry.path}\0{entry.sha256}\n".encode())
        card = _card(folder / "README.md") if "README.md" in files else {}
        mtime = max((e.mtime for e in files.values()), default=time.time())
        return RepoSnapshot(repo_id, folder, files, digest.hexdigest(), card, mtime)

    def repo_folder(self, repo_id: str) -> Path | None:
        """``root/<org>/<name>`` when it is a repo folder inside ``root`` (no symlink out at
        the org or repo level), else None."""
        parts = repo_id.split("/")
        if len(parts) != 2 or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            return None
        folder = self.root / parts[0] / parts[1]
        if not folder.is_dir() or not inside(self.root, folder):
            return None
        return folder

    def _servable(self, folder: Path) -> list[Path]:
        """The repo's files: no dot-led part, regular files inside the models folder only."""
        return sorted(
            p
            for p in folder.rglob("*")
            if not any(s.startswith(".") for s in p.relative_to(folder).parts)
            and servable_file(self.root, p)
        )

    def open_path(self, snap: RepoSnapshot, entry: FileEntry) -> Path | None:
        """The real path to send for ``entry``, checked again now: the folder may have changed
        (a file swapped for a symlink) since the snapshot was taken."""
        path = snap.folder / entry.path
        return path.resolve() if servable_file(self.root, path) else None


def _card(path: Path) -> dict[str, Any]:
    """A card's front matter; a card whose YAML does not parse has none (as on the Hub)."""
    try:
        return metadata_load(path) or {}
    except (yaml.YAMLError, ValueError):  # ValueError: not UTF-8, or not a mapping
        return {}
