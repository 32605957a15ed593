"""Resolution core: classification rules and the cache, with a fake card source and clock.

The fake implements the real CardSource interface (``fetch(model_id, token)``); the real Hub
client is exercised against the Hub-compatible fixture server in the component tests.
"""

from __future__ import annotations

import asyncio
import traceback

import pytest
from loraplex.router.cards import LocalCardSource, parse_front_matter
from loraplex.router.resolve import (
    HubUnavailable,
    ModelCard,
    Resolver,
    SourceUnavailable,
    card_from_metadata,
    classify,
)

from loraplex.shared.errors import BadRequest, NotFound, NotServable, Unauthorized

BASE = "org/base"
SERVED = {BASE, "org/other-base"}
SHA = "a" * 40


def lora(repo: str = "u/style", base: object = BASE, **kw) -> ModelCard:
    return card_from_metadata(repo, card={"base_model": base, "tags": ["lora"]}, sha=SHA, **kw)


class FakeSource:
    def __init__(self, cards: dict[str, ModelCard]) -> None:
        self.cards = cards
        self.calls: list[tuple[str, str | None]] = []
        self.down = False
        self.gate: asyncio.Event | None = None

    async def fetch(self, model_id: str, token: str | None) -> ModelCard:
        self.calls.append((model_id, token))
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise SourceUnavailable("connection refused")
        card = self.cards.get(model_id)
        if card is None:
            raise NotFound(f"no model {model_id}")
        if card.gated and token != "good-token":
            raise Unauthorized(f"{model_id} is gated")
        return card


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lora_with_string_and_list_base_model() -> None:
    route = classify(lora(), SERVED)
    assert (route.base_model, route.kind, route.adapter_key) == (BASE, "adapter", f"u/style@{SHA}")
    listed = classify(lora(base=["org/unserved", "org/other-base"]), SERVED)
    assert listed.base_model == "org/other-base"


def test_lora_signals_card_tag_relation_and_adapter_tag() -> None:
    by_relation = card_from_metadata(
        "u/r", card={"base_model": BASE, "base_model_relation": "adapter"}
    )
    by_tag = card_from_metadata("u/t", card={}, hub_tags=[f"base_model:adapter:{BASE}"])
    for card in (by_relation, by_tag):
        assert classify(card, SERVED).base_model == BASE


def test_not_servable_cases_list_the_served_bases() -> None:
    finetune = card_from_metadata("u/ft", card={"base_model": BASE, "tags": ["diffusers"]})
    with pytest.raises(NotServable, match=r"finetune of org/base, not a LoRA.*org/other-base"):
        classify(finetune, SERVED)
    with pytest.raises(NotServable, match="LoRA of org/nope, which is not served"):
        classify(lora(base="org/nope"), SERVED)
    wrong_task = card_from_metadata(
        "u/llm", card={"tags": ["lora"]}, pipeline_tag="text-generation"
    )
    with pytest.raises(NotServable, match="text-generation"):
        classify(wrong_task, SERVED)
    with pytest.raises(NotServable, match="names no base_model"):
        classify(card_from_metadata("u/x", card={"tags": ["LoRA"]}), SERVED)


async def test_served_base_and_malformed_id_need_no_lookup() -> None:
    source = FakeSource({})
    resolver = Resolver(source)
    assert (await resolver.resolve(BASE, None, SERVED)).kind == "base"
    for bad in ("../etc/passwd", "http://evil/x", "/abs/path", "a/b/c", "bad..id"):
        with pytest.raises(BadRequest):
            await resolver.resolve(bad, None, SERVED)
    assert source.calls == []


async def test_cache_ttl_and_negative_ttl() -> None:
    clock, outcomes = Clock(), []
    source = FakeSource({"u/style": lora()})
    resolver = Resolver(source, ttl_s=60, negative_ttl_s=5, clock=clock, record=outcomes.append)
    for _ in range(3):
        await resolver.resolve("u/style", None, SERVED)
        with pytest.raises(NotFound):
            await resolver.resolve("u/missing", None, SERVED)
    assert len(source.calls) == 2
    clock.now += 6  # negative entry expired, positive still fresh
    with pytest.raises(NotFound):
        await resolver.resolve("u/missing", None, SERVED)
    await resolver.resolve("u/style", None, SERVED)
    assert len(source.calls) == 3
    clock.now += 60
    await resolver.resolve("u/style", None, SERVED)
    assert len(source.calls) == 4
    assert outcomes.count("miss") == 4 and "negative_hit" in outcomes


async def test_cached_errors_do_not_accumulate_frames() -> None:
    """Each negative hit raises a fresh error: the cached one must not grow a traceback that
    pins callers' frames (and tokens) for the negative TTL."""
    resolver = Resolver(FakeSource({}), negative_ttl_s=30, clock=Clock())
    depths = []
    for _ in range(50):
        with pytest.raises(NotFound) as info:
            await resolver.resolve("u/missing", None, SERVED)
        depths.append(len(traceback.extract_tb(info.value.__traceback__)))
        assert str(info.value) == "no model u/missing"
    assert depths[-1] == depths[1], "traceback grows with every cached hit"


async def test_single_flight_shares_one_lookup() -> None:
    source = FakeSource({"u/style": lora()})
    source.gate = asyncio.Event()
    resolver = Resolver(source)
    tasks = [asyncio.create_task(resolver.resolve("u/style", None, SERVED)) for _ in range(20)]
    await asyncio.sleep(0)
    source.gate.set()
    routes = await asyncio.gather(*tasks)
    assert {r.base_model for r in routes} == {BASE}
    assert len(source.calls) == 1


async def test_a_cancelled_caller_does_not_fail_the_shared_lookup() -> None:
    source = FakeSource({"u/style": lora()})
    source.gate = asyncio.Event()
    resolver = Resolver(source)
    first = asyncio.create_task(resolver.resolve("u/style", None, SERVED))
    second = asyncio.create_task(resolver.resolve("u/style", None, SERVED))
    await asyncio.sleep(0)
    first.cancel()
    source.gate.set()
    assert (await second).base_model == BASE
    assert len(source.calls) == 1


async def test_stale_on_error_serves_cached_answers_and_counts_them() -> None:
    clock, outcomes = Clock(), []
    source = FakeSource({"u/style": lora()})
    resolver = Resolver(source, ttl_s=10, stale_s=3600, clock=clock, record=outcomes.append)
    await resolver.resolve("u/style", None, SERVED)
    source.down = True
    clock.now += 100
    assert (await resolver.resolve("u/style", None, SERVED)).base_model == BASE
    assert outcomes[-1] == "stale"
    with pytest.raises(HubUnavailable, match="cannot look up u/never-seen") as unknown:
        await resolver.resolve("u/never-seen", None, SERVED)
    assert unknown.value.retry_after_s  # 503 with Retry-After, not 502 (issue 14)
    clock.now += 3600
    with pytest.raises(HubUnavailable):
        await resolver.resolve("u/style", None, SERVED)


async def test_size_bound_evicts_least_recently_used() -> None:
    cards = {f"u/m{i}": lora(f"u/m{i}") for i in range(10)}
    resolver = Resolver(FakeSource(cards), max_entries=4)
    for i in range(10):
        await resolver.resolve(f"u/m{i}", None, SERVED)
    assert len(resolver) == 4


async def test_gated_routes_are_cached_per_token_never_shared() -> None:
    gated = lora("u/gated", gated="auto")
    source = FakeSource({"u/gated": gated})
    resolver = Resolver(source)
    with pytest.raises(Unauthorized):
        await resolver.resolve("u/gated", None, SERVED)
    assert (await resolver.resolve("u/gated", "good-token", SERVED)).kind == "adapter"
    # Another user without a token, or with another token, does not get the cached route.
    with pytest.raises(Unauthorized):
        await resolver.resolve("u/gated", None, SERVED)
    with pytest.raises(Unauthorized):
        await resolver.resolve("u/gated", "other-token", SERVED)
    await resolver.resolve("u/gated", "good-token", SERVED)
    assert source.calls.count(("u/gated", "good-token")) == 1
    assert all("good-token" not in str(key) for key in resolver._entries)


async def test_public_card_fetched_with_a_token_is_shared() -> None:
    source = FakeSource({"u/style": lora()})
    resolver = Resolver(source)
    await resolver.resolve("u/style", "tok", SERVED)
    await resolver.resolve("u/style", None, SERVED)
    await resolver.resolve("u/style", "tok2", SERVED)
    assert len(source.calls) == 1


async def test_lora_header_on_a_base() -> None:
    source = FakeSource({"u/style": lora(), "u/other": lora("u/other", base="org/other-base")})
    resolver = Resolver(source)
    route = await resolver.resolve_with_lora(BASE, "u/style", None, SERVED)
    assert (route.base_model, route.adapter_key) == (BASE, f"u/style@{SHA}")
    with pytest.raises(NotServable, match="not a LoRA of org/base"):
        await resolver.resolve_with_lora(BASE, "u/other", None, SERVED)


async def test_local_card_source_reads_readme_cards(tmp_path) -> None:
    repo = tmp_path / "u" / "style"
    repo.mkdir(parents=True)
    (repo / "README.md").write_text("---\nbase_model: org/base\ntags: [lora]\n---\n# Style\n")
    (tmp_path / "u" / "plain").mkdir()
    source = LocalCardSource(tmp_path)
    route = classify(await source.fetch("u/style", None), SERVED)
    assert route.adapter_key == "u/style@main"
    with pytest.raises(NotServable):
        classify(await source.fetch("u/plain", None), SERVED)
    with pytest.raises(NotFound):
        await source.fetch("u/absent", None)


def test_front_matter_parsing() -> None:
    assert parse_front_matter("---\na: 1\n---\nbody") == {"a": 1}
    assert parse_front_matter("no card") == {}
    assert parse_front_matter("---\n- a list\n---\n") == {}
