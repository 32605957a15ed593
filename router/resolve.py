"""Resolution: model id → :class:`Route` (served base model + pinned adapter, or none).

Three layers, innermost pure:

* :func:`classify` — a :class:`ModelCard` and the served bases → Route or a domain error.
  No I/O. A repo is a LoRA when its card or Hub tags contain ``lora``, or its card says
  ``base_model_relation: adapter``, or it carries a ``base_model:adapter:<id>`` tag; its
  ``base_model`` may be a string or a list (the first *served* one wins).
* :class:`Resolver` — the cache in front of a :class:`CardSource`: TTL, negative caching, an
  LRU size bound, single flight (concurrent lookups of one key share one fetch) and
  stale-on-error (a cached answer keeps serving while the source is down; counted). Gated and
  private repos are cached per token hash and never under the anonymous key, so a private
  route is never served to another user. Tokens are hashed, never stored or logged.
* Sources: :class:`HubCardSource` (the real ``huggingface_hub`` client; ``model_info`` plus
  ``auth_check`` for gated repos) and :class:`LocalCardSource` (README.md cards in a models
  directory, for the embedded mode).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import yaml
from huggingface_hub import HfApi
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from loraplex.contract import AdapterRef
from loraplex.errors import (
    Forbidden,
    LoraplexError,
    NotFound,
    NotServable,
    Unauthorized,
    UpstreamFailed,
)
from loraplex.ids import validate_model_id

TEXT_TO_IMAGE = "text-to-image"


def _transport_error_types() -> tuple[type[Exception], ...]:
    """Network failures of whichever HTTP library this huggingface_hub uses (httpx2 in 2.x)."""
    found: list[type[Exception]] = [OSError, httpx.TransportError]
    try:
        import httpx2  # huggingface_hub >= 2 talks to the Hub through httpx2
    except ImportError:
        return tuple(found)
    return (*found, httpx2.TransportError)


_TRANSPORT_ERRORS = _transport_error_types()
_ADAPTER_TAG = "base_model:adapter:"


class SourceUnavailable(Exception):
    """The card source could not answer (Hub down, timeout, 5xx): a cached answer may serve."""


@dataclass(frozen=True)
class ModelCard:
    """The metadata resolution needs, whichever source it came from."""

    repo_id: str
    sha: str | None = None
    tags: frozenset[str] = frozenset()  # Hub tags and card tags, lower-cased
    base_models: tuple[str, ...] = ()  # card base_model (str or list), then adapter tags
    base_model_relation: str | None = None
    pipeline_tag: str | None = None
    gated: bool = False
    private: bool = False

    @property
    def is_lora(self) -> bool:
        return (
            "lora" in self.tags
            or self.base_model_relation == "adapter"
            or any(t.startswith(_ADAPTER_TAG) for t in self.tags)
        )

    @property
    def shareable(self) -> bool:
        """Public metadata: may be cached for every caller, not only the token that fetched it."""
        return not (self.gated or self.private)


@dataclass(frozen=True)
class Route:
    """Where a request goes: the pool of ``base_model``, with ``adapter`` active (or none)."""

    model_id: str
    base_model: str
    adapter: AdapterRef | None = None
    needs_token: bool = (
        False  # gated/private adapter: the worker downloads it with the caller's token
    )

    @property
    def kind(self) -> str:
        """The ``route`` metric label: ``adapter`` or ``base``."""
        return "adapter" if self.adapter else "base"

    @property
    def adapter_key(self) -> str | None:
        """``"<repo>@<revision>"`` as in WorkerState, or None for the bare base."""
        return str(self.adapter) if self.adapter else None


def card_from_metadata(
    repo_id: str,
    *,
    card: dict[str, Any] | None,
    hub_tags: Collection[str] = (),
    sha: str | None = None,
    pipeline_tag: str | None = None,
    gated: object = False,
    private: bool = False,
) -> ModelCard:
    """Build a ModelCard from card YAML metadata plus Hub fields (pure; shared by sources)."""
    card = card or {}
    card_tags = card.get("tags") or []
    if isinstance(card_tags, str):
        card_tags = [card_tags]
    tags = frozenset(str(t).lower() for t in [*hub_tags, *card_tags])
    raw_base = card.get("base_model") or []
    bases = [raw_base] if isinstance(raw_base, str) else [str(b) for b in raw_base]
    for tag in sorted(t for t in [*hub_tags, *card_tags] if str(t).startswith(_ADAPTER_TAG)):
        bases.append(str(tag)[len(_ADAPTER_TAG) :])
    relation = card.get("base_model_relation")
    return ModelCard(
        repo_id=repo_id,
        sha=sha,
        tags=tags,
        base_models=tuple(dict.fromkeys(bases)),
        base_model_relation=str(relation).lower() if relation else None,
        pipeline_tag=pipeline_tag or card.get("pipeline_tag"),
        gated=bool(gated),
        private=private,
    )


def classify(card: ModelCard, served: Collection[str]) -> Route:
    """Route a card to a served pool, or raise NotServable saying why and what is served."""
    served_list = ", ".join(sorted(served)) or "(none)"
    if card.repo_id in served:
        return Route(card.repo_id, card.repo_id)
    if card.pipeline_tag and card.pipeline_tag != TEXT_TO_IMAGE:
        raise NotServable(
            f"{card.repo_id} is a {card.pipeline_tag} model; loraplex serves text-to-image "
            f"LoRAs of: {served_list}"
        )
    if not card.is_lora:
        what = f"a finetune of {card.base_models[0]}" if card.base_models else "a base model"
        raise NotServable(
            f"{card.repo_id} is {what}, not a LoRA adapter, and is not served here; "
            f"use a served base or a LoRA of one: {served_list}"
        )
    if not card.base_models:
        raise NotServable(
            f"{card.repo_id} is a LoRA but its card names no base_model; add base_model to "
            f"its README.md metadata. Served bases: {served_list}"
        )
    for base in card.base_models:
        if base in served:
            adapter = AdapterRef(repo_id=card.repo_id, revision=_rev(card))
            return Route(card.repo_id, base, adapter, needs_token=not card.shareable)
    raise NotServable(
        f"{card.repo_id} is a LoRA of {', '.join(card.base_models)}, which is not served here; "
        f"served bases: {served_list}"
    )


def _rev(card: ModelCard) -> str:
    return card.sha or "main"


class CardSource(Protocol):
    async def fetch(self, model_id: str, token: str | None) -> ModelCard:
        """The card of ``model_id``; domain errors for 401/403/404, SourceUnavailable if down."""
        ...


def token_key(token: str | None) -> str | None:
    """A cache key for a token: a hash, so the token itself is never kept in memory maps."""
    return hashlib.sha256(token.encode()).hexdigest()[:24] if token else None


@dataclass
class _Entry:
    card: ModelCard | None
    error: LoraplexError | None
    fresh_until: float
    stale_until: float


@dataclass
class Resolver:
    """A caching front for a :class:`CardSource`; see the module docstring for the rules.

    ``record(outcome)`` is called once per lookup with ``hit``, ``miss``, ``negative_hit`` or
    ``stale`` (the app wires it to the resolve-cache counter).
    """

    source: CardSource
    ttl_s: float = 300.0
    negative_ttl_s: float = 30.0
    stale_s: float = 24 * 3600.0
    max_entries: int = 10_000
    clock: Callable[[], float] = time.monotonic
    record: Callable[[str], None] = lambda outcome: None
    _entries: OrderedDict[tuple[str, str | None], _Entry] = field(default_factory=OrderedDict)
    _inflight: dict[tuple[str, str | None], asyncio.Task[tuple[_Entry, str]]] = field(
        default_factory=dict
    )

    async def resolve(self, model_id: str, token: str | None, served: Collection[str]) -> Route:
        """Route ``model_id``: validated first, a served base without any lookup."""
        validate_model_id(model_id)
        if model_id in served:
            return Route(model_id, model_id)
        return classify(await self.card(model_id, token), served)

    async def resolve_with_lora(
        self, model_id: str, lora: str | None, token: str | None, served: Collection[str]
    ) -> Route:
        """Resolve ``model_id``; when it is a base and ``lora`` (the seed's header) is given,
        route that adapter on this base."""
        route = await self.resolve(model_id, token, served)
        if not lora or route.adapter is not None:
            return route
        adapter_route = await self.resolve(lora, token, served)
        if adapter_route.adapter is None or adapter_route.base_model != route.base_model:
            raise NotServable(
                f"lora header {lora!r} is not a LoRA of {route.base_model} "
                f"(it routes to {adapter_route.base_model}); send it to that model instead"
            )
        return Route(model_id, route.base_model, adapter_route.adapter, adapter_route.needs_token)

    async def card(self, model_id: str, token: str | None) -> ModelCard:
        anonymous = (model_id, None)
        entry = self._fresh(anonymous)
        if entry is not None and (entry.error is None or token is None):
            return self._answer(entry, "hit" if entry.error is None else "negative_hit")
        key = (model_id, token_key(token))
        entry = self._fresh(key)
        if entry is not None:
            return self._answer(entry, "hit" if entry.error is None else "negative_hit")
        return self._answer(*await self._fetch_once(key, model_id, token))

    def _fresh(self, key: tuple[str, str | None]) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None or entry.fresh_until <= self.clock():
            return None
        self._entries.move_to_end(key)
        return entry

    def _answer(self, entry: _Entry, outcome: str) -> ModelCard:
        self.record(outcome)
        if entry.error is not None:
            raise entry.error
        assert entry.card is not None
        return entry.card

    async def _fetch_once(
        self, key: tuple[str, str | None], model_id: str, token: str | None
    ) -> tuple[_Entry, str]:
        # Single flight: the fetch runs in its own task, so a caller that goes away (client
        # disconnect) cancels only its wait, not the lookup the other callers share.
        task = self._inflight.get(key)
        leader = task is None
        if task is None:
            task = asyncio.create_task(self._fetch(key, model_id, token))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        entry, outcome = await asyncio.shield(task)
        return entry, outcome if leader else "hit"

    async def _fetch(
        self, key: tuple[str, str | None], model_id: str, token: str | None
    ) -> tuple[_Entry, str]:
        now = self.clock()
        try:
            card = await self.source.fetch(model_id, token)
        except SourceUnavailable as exc:
            old = self._entries.get(key) or self._entries.get((model_id, None))
            if old is not None and old.stale_until > now:
                return old, "stale"
            raise UpstreamFailed(
                f"cannot look up {model_id} on the Hub right now ({exc}); retry shortly"
            ) from None
        except (NotFound, Unauthorized, Forbidden, NotServable) as exc:
            entry = _Entry(None, exc, now + self.negative_ttl_s, now + self.stale_s)
            self._store(key, entry)
            return entry, "miss"
        entry = _Entry(card, None, now + self.ttl_s, now + self.stale_s)
        self._store((model_id, None) if card.shareable else key, entry)
        if key != (model_id, None) and card.shareable:
            self._store(key, entry)
        return entry, "miss"

    def _store(self, key: tuple[str, str | None], entry: _Entry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


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
        readme = repo_dir / "README.md"
        metadata = parse_front_matter(readme.read_text()) if readme.is_file() else {}
        card = card_from_metadata(
            model_id, card=metadata, sha=self.revision, gated=metadata.get("gated", False)
        )
        if card.gated and token is None:
            raise _refused(model_id, None, "is gated")
        return card


def parse_front_matter(text: str) -> dict[str, Any]:
    """The YAML metadata block of a model card (``---`` … ``---`` at the top), or {}."""
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    loaded = yaml.safe_load(text[3:end])
    return loaded if isinstance(loaded, dict) else {}
