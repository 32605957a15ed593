"""Resolution: model id → :class:`Route` (served base model + pinned adapter, or none).

Three layers, innermost pure:

* :func:`classify` — a :class:`ModelCard` and the served bases → Route or a domain error.
  No I/O. A repo is a LoRA when its card or Hub tags contain ``lora``, or its card says
  ``base_model_relation: adapter``, or it carries a ``base_model:adapter:<id>`` tag; its
  ``base_model`` may be a string or a list (the first *served* one wins).
* :class:`Resolver` — the cache in front of a :class:`CardSource`: TTL, negative caching, an
  LRU size bound, single flight (concurrent lookups of one key share one fetch) and
  stale-on-error (a cached answer keeps serving while the source is down; counted; an id with
  no cached answer gets 503 with Retry-After, :class:`HubUnavailable`: the Hub being down is
  not the caller's fault, and retrying later works). Gated and
  private repos are cached per token hash and never under the anonymous key, so a private
  route is never served to another user. Tokens are hashed, never stored or logged.
* Sources (:mod:`loraplex.router.cards`): ``HubCardSource`` (the real ``huggingface_hub``
  client) and ``LocalCardSource`` (README.md cards in a models directory, embedded mode).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

from loraplex.shared.contract import AdapterRef
from loraplex.shared.errors import (
    Forbidden,
    LoraplexError,
    NotFound,
    NotServable,
    Unauthorized,
    Unavailable,
)
from loraplex.shared.ids import validate_model_id

TEXT_TO_IMAGE = "text-to-image"


_ADAPTER_TAG = "base_model:adapter:"


LOOKUP_RETRY_AFTER_S = 5.0  # Retry-After of a lookup the Hub could not answer


class SourceUnavailable(Exception):
    """The card source could not answer (Hub down, timeout, 5xx): a cached answer may serve."""


class HubUnavailable(Unavailable):
    """No cached answer and the Hub cannot be asked now: 503 with Retry-After (an
    :class:`~loraplex.shared.errors.Unavailable`, so the one mapping gives it that status)."""


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
            # A fresh copy each time: re-raising the cached object would grow its traceback
            # on every hit, and the frames it pins hold callers' requests and tokens.
            raise copy.copy(entry.error)
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
            raise HubUnavailable(
                f"cannot look up {model_id} on the Hub right now ({exc}); retry in about "
                f"{LOOKUP_RETRY_AFTER_S:.0f} s",
                retry_after_s=LOOKUP_RETRY_AFTER_S,
            ) from None
        except (NotFound, Unauthorized, Forbidden, NotServable) as exc:
            cached = exc.with_traceback(None)  # keep the answer, not the frames (and tokens)
            entry = _Entry(None, cached, now + self.negative_ttl_s, now + self.stale_s)
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
