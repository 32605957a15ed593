"""Validation of Hub model ids and revisions, done before any I/O.

The grammar is huggingface_hub's own (``validate_repo_id``): ``name`` or ``org/name`` of
``[A-Za-z0-9_.-]``, at most 96 characters, no ``--`` or ``..``. On top of it we refuse what
reaches the filesystem or the network in other ways: URLs, absolute paths, backslashes.
"""

from __future__ import annotations

import re

from huggingface_hub.utils import HFValidationError, validate_repo_id

from loraplex.shared.errors import BadRequest

# Branch names, tags and 40-hex commits; refs/pr/N for pull requests. Whole string only (no
# trailing newline), no "..", no empty or dot-led path segments, no leading or trailing "/".
_REVISION = re.compile(r"(?!.*\.\.)(?!.*//)(?!.*/\.)(?!.*/$)[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")


def validate_model_id(model_id: str) -> str:
    """Return ``model_id`` if it is a Hub repo id, else raise :class:`BadRequest` saying why."""
    if not isinstance(model_id, str) or not model_id:
        raise BadRequest("model id is empty; give a Hub repo id such as 'org/name'")
    if "://" in model_id or model_id.startswith(("/", "~", ".")) or "\\" in model_id:
        raise BadRequest(
            f"model id {model_id!r} looks like a URL or a path; give a Hub repo id such as "
            "'org/name'"
        )
    try:
        validate_repo_id(model_id)
    except HFValidationError as exc:
        raise BadRequest(
            f"model id {model_id!r} is not a valid Hub repo id ('org/name' of letters, digits, "
            f"'-', '_' and '.', at most 96 characters per part): {exc}"
        ) from None
    return model_id


def validate_revision(revision: str) -> str:
    """Return ``revision`` if it is a branch, tag or commit name, else raise BadRequest."""
    if not _REVISION.fullmatch(revision or ""):
        raise BadRequest(
            f"revision {revision!r} is not a valid branch, tag or commit "
            "(letters, digits, '.', '_', '-', '/'; no '..')"
        )
    return revision
