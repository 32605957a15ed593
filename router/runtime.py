"""Everything one router app holds, built in its lifespan from settings (no module state)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp
from huggingface_hub import HfApi
from loraplex.router.cards import HubCardSource, LocalCardSource
from loraplex.router.forward import Forwarder
from loraplex.router.metrics import RouterMetrics
from loraplex.router.pick import STRATEGIES, AdapterAffinityPicker, Picker, PlacementPicker
from loraplex.router.poller import StatePoller
from loraplex.router.pools import PoolRegistry, PoolSource, StaticPoolSource
from loraplex.router.resolve import CardSource, Resolver, Route, classify
from loraplex.router.retry import BackoffPolicy
from loraplex.router.service import RouterService
from loraplex.router.settings import RouterSettings

from loraplex.shared.contract import Headers
from loraplex.shared.errors import LoraplexError

log = logging.getLogger(__name__)


@dataclass
class RouterRuntime:
    settings: RouterSettings
    registry: PoolRegistry
    metrics: RouterMetrics
    session: aiohttp.ClientSession
    pool_source: PoolSource
    poller: StatePoller
    service: RouterService

    async def close(self) -> None:
        await self.poller.stop()
        await self.pool_source.stop()
        await self.session.close()


def worker_headers(settings: RouterSettings) -> dict[str, str]:
    """Headers on every request of the worker session: the worker secret, when set.

    The session talks to workers only (the forwarder's /v1/generate, the poller's /v1/state);
    it must never be used for another host, since every request carries the secret."""
    secret = settings.worker_secret
    return {Headers.WORKER_SECRET: secret.get_secret_value()} if secret is not None else {}


def default_card_source(settings: RouterSettings) -> CardSource:
    if settings.models_dir is not None:
        secret = settings.models_dir_token
        token = secret.get_secret_value() if secret is not None else None
        return LocalCardSource(settings.models_dir, open_token=token)
    return HubCardSource(HfApi(endpoint=settings.hub_endpoint), timeout_s=settings.hub_timeout_s)


def default_pool_source(settings: RouterSettings) -> PoolSource:
    if settings.pool_source == "kubernetes":
        from loraplex.router.pools_k8s import KubernetesPoolSource  # kubernetes_asyncio: lazy

        return KubernetesPoolSource(settings.namespace)
    return StaticPoolSource(settings.static_pools)


def make_picker(settings: RouterSettings) -> Picker:
    if settings.pick_strategy == "adapter_affinity":
        return PlacementPicker(
            settings.max_queue_per_replica,
            max_homes=settings.max_homes,
            hot_spread=settings.hot_spread,
            hot_window_requests=settings.hot_window_requests,
        )
    if settings.pick_strategy == "resident_affinity":
        return AdapterAffinityPicker(settings.max_queue_per_replica)
    return STRATEGIES[settings.pick_strategy]()


def open_adapter_routes(source: CardSource, served: frozenset[str]) -> list[Route]:
    """Routes of the open LoRAs a local models folder holds for the served bases (none for the
    Hub: it cannot be listed), so the playground offers them before any request was made."""
    if not isinstance(source, LocalCardSource):
        return []
    routes = []
    for card in source.open_cards():
        try:
            route = classify(card, served)
        except LoraplexError:
            continue  # a base, a LoRA of an unserved base, another task: nothing to list
        if route.adapter is not None:
            routes.append(route)
    return routes


async def build_runtime(
    settings: RouterSettings,
    *,
    card_source: CardSource | None = None,
    pool_source: PoolSource | None = None,
) -> RouterRuntime:
    metrics = RouterMetrics()
    registry = PoolRegistry(
        backoff_policy=BackoffPolicy(
            settings.replica_backoff_s,
            max(settings.replica_backoff_s, settings.replica_backoff_max_s),
        )
    )
    connector = aiohttp.TCPConnector(limit=settings.max_connections, limit_per_host=0)
    session = aiohttp.ClientSession(
        connector=connector, auto_decompress=False, headers=worker_headers(settings)
    )
    source = pool_source or default_pool_source(settings)
    await source.start(registry)
    poller = StatePoller(
        registry,
        session,
        interval_s=settings.state_poll_interval_s,
        timeout_s=settings.state_timeout_s,
    )
    await poller.poll_once()  # static pools are routable from the first request
    poller.start()
    cards = card_source or default_card_source(settings)
    resolver = Resolver(
        cards,
        ttl_s=settings.resolve_ttl_s,
        negative_ttl_s=settings.resolve_negative_ttl_s,
        stale_s=settings.resolve_stale_s,
        max_entries=settings.resolve_cache_size,
        record=metrics.record_resolve,
    )
    forwarder = Forwarder(
        session,
        make_picker(settings),
        metrics,
        attempts=settings.attempts,
        connect_timeout_s=settings.connect_timeout_s,
        buffer_limit_bytes=settings.buffer_limit_bytes,
    )
    service = RouterService(
        registry,
        resolver,
        forwarder,
        metrics,
        hold_timeout_s=settings.hold_timeout_s,
        estimated_warmup_s=settings.estimated_warmup_s,
        request_timeout_s=settings.request_timeout_s,
        recent_adapters=settings.recent_adapters,
        retry_budget=settings.retry_budget,
    )
    # Reversed: the last one noted is listed first, so the list reads in id order.
    for route in reversed(await asyncio.to_thread(open_adapter_routes, cards, registry.served())):
        service.remember_adapter(route)
    log.info("router ready: pools %s", ", ".join(sorted(registry.served())) or "(none yet)")
    return RouterRuntime(settings, registry, metrics, session, source, poller, service)
