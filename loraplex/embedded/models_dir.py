"""What a models folder (``loraplex up --models DIR``) holds, read with the router's own rules.

Bases are repos with a ``model_index.json`` (any diffusers pipeline: SD, SDXL, Flux, SD3, …;
its ``_class_name`` is kept so callers can name it); LoRAs are the repos the router itself would
route as adapters (its card reading and :func:`~loraplex.router.resolve.classify`), so the
embedded mode and the router cannot disagree about what is a LoRA; gated and private repos
(``.hub-access.json`` or the card) are listed apart, as the local Hub keeps them closed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from loraplex.localhub.store import RepoStore
from loraplex.router.cards import read_local_card
from loraplex.router.resolve import ModelCard, classify
from loraplex.shared.errors import BadRequest, NotServable
from loraplex.shared.ids import validate_model_id
from loraplex.shared.repo_access import inside, servable_file

log = logging.getLogger("loraplex.up")


@dataclass(frozen=True)
class LocalRepos:
    """What ``DIR`` holds: base-model repos and LoRA repos with the base their card names."""

    bases: tuple[str, ...]
    loras: dict[str, tuple[str, ...]]  # lora repo id -> base_model ids from its card
    closed: tuple[str, ...] = ()  # gated or private repos (by .hub-access.json or card)
    # base id -> its model_index.json ``_class_name`` ("" when unreadable), e.g. FluxPipeline
    pipelines: dict[str, str] = field(default_factory=dict)


def scan_models_dir(root: Path) -> LocalRepos:
    """Find Hub-layout repos ``root/<org>/<name>/``: bases have ``model_index.json``; LoRAs
    are the repos the router routes as adapters (:func:`lora_bases`), listed when open (not
    gated or private by card or ``.hub-access.json``)."""
    bases: list[str] = []
    pipelines: dict[str, str] = {}
    loras: dict[str, tuple[str, ...]] = {}
    closed: list[str] = []
    rules = RepoStore(root).access_rules()
    for repo_dir in sorted(p for p in root.glob("*/*") if p.is_dir()):
        repo_id = f"{repo_dir.parent.name}/{repo_dir.name}"
        # A symlink out of DIR is not a repo here, as the local Hub does not serve it.
        if repo_dir.parent.name.startswith("."):
            continue
        if not inside(root, repo_dir):
            log.warning(
                "skipping %s: it links out of %s, and the local Hub serves only files inside "
                "it; copy the repo into the folder instead",
                repo_dir,
                root,
            )
            continue
        try:
            validate_model_id(repo_id)
        except BadRequest as exc:
            log.warning("skipping %s: %s", repo_dir, exc.message)
            continue
        card = read_local_card(repo_dir, repo_id, root=root)
        if card.gated or repo_id in rules.closed():
            closed.append(repo_id)
        if (repo_dir / "model_index.json").is_file():
            bases.append(repo_id)
            pipelines[repo_id] = pipeline_class(root, repo_dir)
            continue
        found = lora_bases(card) if repo_id not in closed else ()
        if found:
            loras[repo_id] = found
    return LocalRepos(bases=tuple(bases), loras=loras, closed=tuple(closed), pipelines=pipelines)


def pipeline_class(root: Path, repo_dir: Path) -> str:
    """``_class_name`` of a base's model_index.json; "" when it is unreadable, not a JSON object,
    or a link out of ``root`` (as the local Hub, which does not serve it)."""
    index = repo_dir / "model_index.json"
    if not servable_file(root, index):
        return ""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return ""
    name = data.get("_class_name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else ""


def lora_bases(card: ModelCard) -> tuple[str, ...]:
    """The bases ``card`` is a LoRA of, as the router decides it; () when it is none.

    The router's own :func:`~loraplex.router.resolve.classify` with every base the card
    names served: it routes the repo as an adapter exactly when it is a LoRA by the router's
    rules (card tag, ``base_model_relation``, adapter tags), names a base and is
    text-to-image. Which of those bases are served is decided later, by the caller.
    """
    try:
        route = classify(card, frozenset(card.base_models))
    except NotServable:
        return ()
    return card.base_models if route.adapter is not None else ()
