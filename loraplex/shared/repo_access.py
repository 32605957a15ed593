"""Who may read which repo of a models folder, and which of its files may be read at all.

One reading of a models folder's rules for both of its readers, so they cannot disagree: the
local Hub (:mod:`loraplex.localhub.server`, a tool) and the router's ``LocalCardSource``
(embedded mode, a component; it may not import the tool, so the rules live here).

Access: ``DIR/.hub-access.json`` (``{"gated": [ids], "private": [ids]}``) plus a card whose
front matter says ``gated: true``. One token (``open_token``; none: nothing opens them) reads
them all. The refusals are the Hub's: gated → 401 without a token, 403 with another one;
private → 401 without a token, 404 with another one (the answer for a repo that does not
exist, so a stranger's token learns nothing). Private wins when a repo is listed as both.

Containment: a path is served only when its real path (symlinks followed) lies inside the
real models folder, so a symlink in DIR cannot publish a file from elsewhere on the machine.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

ACCESS_FILE = ".hub-access.json"


class Refusal(StrEnum):
    """Why a caller may not read a repo; the HTTP status each becomes is in the comment."""

    GATED_NO_TOKEN = "gated-no-token"  # 401
    GATED_REFUSED = "gated-refused"  # 403
    PRIVATE_NO_TOKEN = "private-no-token"  # 401
    PRIVATE_REFUSED = "private-refused"  # 404, as for a missing repo


@dataclass(frozen=True)
class AccessRules:
    """The gated and private repo ids of a models folder (see the module docstring)."""

    gated: frozenset[str] = frozenset()
    private: frozenset[str] = frozenset()

    @classmethod
    def read(cls, root: Path) -> AccessRules:
        """The rules of ``root/.hub-access.json``; none when absent. A malformed file raises
        ValueError: failing at start-up beats serving repos that were meant to be closed."""
        path = Path(root) / ACCESS_FILE
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError(f'{path} must be an object {{"gated": [...], "private": [...]}}')
        return cls(gated=_ids(raw, "gated", path), private=_ids(raw, "private", path))

    def closed(self) -> frozenset[str]:
        """Every repo id the file closes (gated or private)."""
        return self.gated | self.private

    def check(
        self, repo_id: str, token: str | None, open_token: str | None, *, card_gated: bool = False
    ) -> Refusal | None:
        """None when ``token`` may read ``repo_id``, else why not."""
        private = repo_id in self.private
        gated = card_gated or repo_id in self.gated
        if not (private or gated) or tokens_match(token, open_token):
            return None
        if private:
            return Refusal.PRIVATE_NO_TOKEN if token is None else Refusal.PRIVATE_REFUSED
        return Refusal.GATED_NO_TOKEN if token is None else Refusal.GATED_REFUSED


def _ids(raw: dict[str, object], key: str, path: Path) -> frozenset[str]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{path}: {key!r} must be a list of repo ids")
    return frozenset(value)


def tokens_match(token: str | None, open_token: str | None) -> bool:
    """Whether ``token`` is the one that opens closed repos (constant time: no timing oracle)."""
    if token is None or not open_token:
        return False
    return hmac.compare_digest(token.encode(), open_token.encode())


def inside(root: Path, path: Path) -> bool:
    """Whether ``path``'s real location (every symlink followed) is ``root``'s or below it."""
    return _real_inside(root, path) is not None


def servable_file(root: Path, path: Path) -> bool:
    """A regular file (not a fifo or device) whose real path is inside ``root``."""
    real = _real_inside(root, path)
    return real is not None and real.is_file()


def _real_inside(root: Path, path: Path) -> Path | None:
    try:
        real = Path(path).resolve()
        return real if real.is_relative_to(Path(root).resolve()) else None
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte: not servable
        return None
