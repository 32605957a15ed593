"""Card sources for :class:`loraplex.router.resolve.Resolver`: where model cards come from.

* :class:`HubCardSource` — the real ``huggingface_hub`` client: ``model_info``, plus
  ``auth_check`` for gated repos; Hub outages become ``SourceUnavailable`` so the resolver can
  serve stale answers.
* :class:`LocalCardSource` — README.md cards in ``<models_dir>/<org>/<name>/``, for the
  embedded mode (``loraplex up``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import yaml
from huggingface_hub import HfApi
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from loraplex.router.resolve import ModelCard, SourceUnavailable, card_from_metadata

from loraplex.shared.errors import (
    Forbidden,
    LoraplexError,
    NotFound,
    Unauthorized,
)
from loraplex.shared.ids import validate_model_id


def _transport_error_types() -> tuple[type[Exception], ...]:
    """Network failures of whichever HTTP library this huggingface_hub uses (httpx2 in 2.x)."""
    found: list[type[Exception]] = [OSError, httpx.TransportError]
    try:
        import httpx2  # huggingface_hub >= 2 talks to the Hub through httpx2
    except ImportError:
        return tuple(found)
    return (*found, httpx2.TransportError)


_TRANSPORT_ERRORS = _transport_error_types()


class HubCardSource:
    """Cards from the Hub (or a Hub-compatible endpoint) through ``huggingface_hub.HfApi``.

    ``HfApi`` is synchronous, so calls run in a thread; the resolver's cache and single flight
    keep that off the hot path. Gated repos expose metadata to anyone, so access is checked
    with the caller's token through ``auth_check``; the answer is cached per token hash.
    """

    def __init__(self, api: HfApi | None = None, *, timeout_s: float = 10.0) -> None:
        self.api = api or HfApi()
        self.timeout_s = timeout_s

    async def fetch(self, model_id: str, token: str | None) -> ModelCard:
        return await asyncio.to_thread(self._fetch_sync, model_id, token)

    def _fetch_sync(self, model_id: str, token: str | None) -> ModelCard:
        # token=False: never fall back to a token saved on this machine for a user's request.
        auth: str | bool = token or False
        try:
            info = self.api.model_info(model_id, token=auth, timeout=self.timeout_s)
            card = card_from_metadata(
                model_id,
                card=info.card_data.to_dict() if info.card_data else {},
                hub_tags=info.tags or (),
                sha=info.sha,
                pipeline_tag=info.pipeline_tag,
                gated=info.gated,
                private=bool(info.private),
            )
            if card.gated:
                self.api.auth_check(model_id, token=auth)
            return card
        except GatedRepoError:
            raise _refused(model_id, token, "is gated") from None
        except RevisionNotFoundError:
            raise NotFound(f"{model_id} has no main revision on the Hub") from None
        except RepositoryNotFoundError as exc:
            # The Hub answers 401 (not 404) for private repos without a token: say so.
            if token is None and exc.response is not None and exc.response.status_code == 401:
                raise Unauthorized(
                    f"{model_id} was not found without a token; if it is private, send a Hub "
                    "token that can read it as 'Authorization: Bearer <token>'"
                ) from None
            raise NotFound(
                f"no model {model_id!r} on the Hub (if it is private, send your Hub token as "
                "'Authorization: Bearer <token>')"
            ) from None
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403):
                raise _refused(model_id, token, "refused access") from None
            raise SourceUnavailable(f"Hub answered {status}") from None
        except _TRANSPORT_ERRORS as exc:  # connection refused/reset, timeouts
            raise SourceUnavailable(type(exc).__name__) from None


def _refused(model_id: str, token: str | None, why: str) -> LoraplexError:
    if token is None:
        return Unauthorized(
            f"{model_id} {why}: send a Hub token that has access as 'Authorization: Bearer <token>'"
        )
    return Forbidden(
        f"{model_id} {why} and your token has no access; request access on its Hub page"
    )


class LocalCardSource:
    """Cards from README.md files in a models directory: ``<models_dir>/<org>/<name>/README.md``.

    The embedded mode's source: the same card format as the Hub (YAML front matter with
    ``base_model``, ``tags``, ``base_model_relation``, ``pipeline_tag``, ``gated``). Every
    adapter resolves to ``revision`` (default ``main``); a repo with no README.md but a
    directory is treated as a card with no metadata.
    """

    def __init__(self, models_dir: Path | str, *, revision: str = "main") -> None:
        self.models_dir = Path(models_dir)
        self.revision = revision

    async def fetch(self, model_id: str, token: str | None) -> ModelCard:
        validate_model_id(model_id)
        repo_dir = self.models_dir / model_id
        if not repo_dir.is_dir():
            raise NotFound(f"no model {model_id!r} in {self.models_dir}")
        card = read_local_card(repo_dir, model_id, self.revision)
        if card.gated and token is None:
            raise _refused(model_id, None, "is gated")
        return card


def read_local_card(repo_dir: Path, repo_id: str, revision: str = "main") -> ModelCard:
    """The card of a local repo folder from its README.md front matter (none: no metadata).

    One reading for the router's :class:`LocalCardSource` and the embedded mode's model scan,
    so both see the same card."""
    readme = repo_dir / "README.md"
    metadata = parse_front_matter(readme.read_text()) if readme.is_file() else {}
    return card_from_metadata(
        repo_id, card=metadata, sha=revision, gated=metadata.get("gated", False)
    )


def parse_front_matter(text: str) -> dict[str, Any]:
    """The YAML metadata block of a model card (``---`` … ``---`` at the top), or {}."""
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    loaded = yaml.safe_load(text[3:end])
    return loaded if isinstance(loaded, dict) else {}
