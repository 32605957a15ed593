"""Card sources for :class:`loraplex.router.resolve.Resolver`: where model cards come from.

* :class:`HubCardSource` — the real ``huggingface_hub`` client: ``model_info``, plus
  ``auth_check`` for gated repos; Hub outages, a lookup over ``timeout_s`` and more than
  ``max_concurrent`` lookups still running become ``SourceUnavailable`` so the resolver can
  serve stale answers (or 503 with Retry-After).
* :class:`LocalCardSource` — README.md cards in ``<models_dir>/<org>/<name>/``, for the
  embedded mode (``loraplex up``).
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
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
from loraplex.shared.repo_access import AccessRules, Refusal, inside, servable_file


def _transport_error_types() -> tuple[type[Exception], ...]:
    """Network failures of whichever HTTP library this huggingface_hub uses (httpx2 in 2.x)."""
    found: list[type[Exception]] = [OSError, httpx.TransportError]
    try:
        import httpx2  # huggingface_hub >= 2 talks to the Hub through httpx2
    except ImportError:
        return tuple(found)
    return (*found, httpx2.TransportError)


_TRANSPORT_ERRORS = _transport_error_types()


MAX_CONCURRENT_LOOKUPS = 8  # Hub lookup threads; a slow Hub holds at most this many


class HubCardSource:
    """Cards from the Hub (or a Hub-compatible endpoint) through ``huggingface_hub.HfApi``.

    ``HfApi`` is synchronous, so calls run in threads of this source's own pool (at most
    ``max_concurrent``); the resolver's cache and single flight keep that off the hot path.
    A slow Hub cannot pile threads up: a lookup is answered ``SourceUnavailable`` after
    ``timeout_s`` (its thread may still be waiting on the Hub, and still counts), and while
    ``max_concurrent`` lookups are running a new one is refused at once rather than queued.
    Gated repos expose metadata to anyone, so access is checked with the caller's token
    through ``auth_check``; the answer is cached per token hash.
    """

    def __init__(
        self,
        api: HfApi | None = None,
        *,
        timeout_s: float = 10.0,
        max_concurrent: int = MAX_CONCURRENT_LOOKUPS,
    ) -> None:
        self.api = api or HfApi()
        self.timeout_s = timeout_s
        self.max_concurrent = max_concurrent
        self.running = 0  # lookups whose thread has not returned yet (timed out ones too)
        self.thread_prefix = f"hub-lookup-{id(self):x}"
        self._threads = ThreadPoolExecutor(max_concurrent, thread_name_prefix=self.thread_prefix)

    async def fetch(self, model_id: str, token: str | None) -> ModelCard:
        if self.running >= self.max_concurrent:
            raise SourceUnavailable(f"{self.running} Hub lookups still running (Hub slow)")
        self.running += 1
        work = self._threads.submit(self._fetch_sync, model_id, token)
        loop = asyncio.get_running_loop()
        work.add_done_callback(lambda done: _call_in(loop, self._finished, done))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(work), self.timeout_s)
        except TimeoutError:
            raise SourceUnavailable(f"no Hub answer within {self.timeout_s:g} s") from None

    def _finished(self, work: Future[ModelCard]) -> None:
        self.running -= 1
        if not work.cancelled():
            work.exception()  # retrieved: an abandoned lookup's error is not "never retrieved"

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


def _call_in(loop: asyncio.AbstractEventLoop, callback: Any, *args: Any) -> None:
    """Run ``callback`` on ``loop`` from a lookup thread (nothing to do once it is closed)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


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

    Access is the local Hub's, read by the same code (:class:`AccessRules`: the folder's
    ``.hub-access.json`` and ``gated: true`` cards): ``open_token`` (the local Hub's token;
    None: nothing opens them) reads gated and private repos; otherwise gated → 401 without a
    token / 403 with another, private → 401 without / 404, word for word a missing repo's
    answer, with another. A repo folder that is a symlink out of ``models_dir`` is missing, as
    on the local Hub. Closed cards come back gated/private, so the route carries the caller's
    token to the worker and is cached for that token only.
    """

    def __init__(
        self, models_dir: Path | str, *, revision: str = "main", open_token: str | None = None
    ) -> None:
        self.models_dir = Path(models_dir)
        self.revision = revision
        self._open_token = open_token
        self.rules = AccessRules.read(self.models_dir)  # malformed: fail at start, not open

    async def fetch(self, model_id: str, token: str | None) -> ModelCard:
        validate_model_id(model_id)
        repo_dir = self.models_dir / model_id
        found = repo_dir.is_dir() and inside(self.models_dir, repo_dir)
        card = read_local_card(repo_dir, model_id, self.revision, root=self.models_dir)
        refusal = self.rules.check(model_id, token, self._open_token, card_gated=card.gated)
        # A stranger's token gets exactly the missing repo's answer: existence is not revealed.
        if not found or refusal is Refusal.PRIVATE_REFUSED:
            # The folder is not named: answers never reveal server paths.
            raise NotFound(f"no model {model_id!r} in this router's models folder")
        if refusal is Refusal.PRIVATE_NO_TOKEN:
            raise Unauthorized(
                f"{model_id} was not found without a token; if it is private, send a Hub "
                "token that can read it as 'Authorization: Bearer <token>'"
            )
        if refusal is not None:
            raise _refused(model_id, token, "is gated")
        gated = card.gated or model_id in self.rules.gated
        return replace(card, gated=gated, private=model_id in self.rules.private)

    def open_cards(self) -> list[ModelCard]:
        """The cards of the folder's open repos (neither gated nor private), by id: what may be
        named to every caller (the embedded router lists their LoRAs in GET /v1/models)."""
        cards = []
        for repo_dir in sorted(self.models_dir.glob("*/*")):
            repo_id = f"{repo_dir.parent.name}/{repo_dir.name}"
            if not _open_repo(self.models_dir, repo_dir, repo_id, self.rules):
                continue
            card = read_local_card(repo_dir, repo_id, self.revision, root=self.models_dir)
            if not card.gated:
                cards.append(card)
        return cards


def _open_repo(root: Path, repo_dir: Path, repo_id: str, rules: AccessRules) -> bool:
    """A valid repo id, a folder inside ``root``, and not closed by ``.hub-access.json``."""
    try:
        validate_model_id(repo_id)
    except LoraplexError:
        return False  # .hidden folders and names the Hub would refuse
    return repo_dir.is_dir() and inside(root, repo_dir) and repo_id not in rules.closed()


def read_local_card(
    repo_dir: Path, repo_id: str, revision: str = "main", *, root: Path | None = None
) -> ModelCard:
    """The card of a local repo folder from its README.md front matter (none: no metadata).

    One reading for the router's :class:`LocalCardSource` and the embedded mode's model scan,
    so both see the same card. With ``root`` (the models folder), a README.md whose real path
    is outside it is not read, as the local Hub does not serve it; a card that is not UTF-8
    YAML has no metadata, as on the local Hub."""
    readme = repo_dir / "README.md"
    metadata: dict[str, Any] = {}
    if readme.is_file() and (root is None or servable_file(root, readme)):
        try:
            metadata = parse_front_matter(readme.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, yaml.YAMLError):
            metadata = {}
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
