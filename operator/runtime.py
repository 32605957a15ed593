"""What a running operator holds: API client, rate source, per-pool policies, metrics.

Built in kopf's startup handler (:meth:`Runtime.start`) and closed in its cleanup handler;
handlers get it from kopf's ``memo``. Nothing here is module-level state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from aiohttp import web
from loraplex.operator.kube import Kube
from loraplex.operator.metrics import OperatorMetrics, start_server
from loraplex.operator.rates import RateSnapshot, RateSource
from loraplex.operator.resources import Pool
from loraplex.operator.scaling import ScalingPolicy
from loraplex.operator.scrape import PrometheusSource, ScrapeSource, urls_from_endpoint_slices
from loraplex.operator.settings import OperatorSettings

log = logging.getLogger(__name__)


class CachedRates:
    """One read of the routers per tick for all pools, however many pool timers ask."""

    def __init__(self, source: RateSource, max_age_s: float, clock: Callable[[], float]) -> None:
        self._source, self._max_age, self._clock = source, max_age_s, clock
        self._lock = asyncio.Lock()
        self._at: float | None = None
        self._snapshot = RateSnapshot()

    async def read(self) -> RateSnapshot:
        async with self._lock:
            now = self._clock()
            if self._at is None or now - self._at >= self._max_age:
                self._snapshot = await self._source.read(now)
                self._at = now
            return self._snapshot


@dataclass
class PoolMemory:
    policy: ScalingPolicy
    last_written: int | None = None  # replicas the operator last wrote to the Deployment
    blind: bool = False  # the last tick had no rate data (no router answered)


@dataclass
class Runtime:
    settings: OperatorSettings
    kube: Kube
    http: httpx.AsyncClient
    rates: CachedRates
    metrics: OperatorMetrics
    clock: Callable[[], float] = time.monotonic
    pools: dict[str, PoolMemory] = field(default_factory=dict)  # by pool uid
    server: web.AppRunner | None = None

    @classmethod
    async def start(
        cls, settings: OperatorSettings, clock: Callable[[], float] = time.monotonic
    ) -> Runtime:
        kube = await Kube.connect()
        http = httpx.AsyncClient(timeout=settings.scrape_timeout_s)
        source: RateSource
        if settings.rate_source == "prometheus":
            source = PrometheusSource(settings.prometheus_url, http)
        else:
            source = ScrapeSource(_router_urls(settings, kube), http, settings.rate_window_s)
        # Half an interval: every pool's timer in one tick shares a read, the next tick reads anew.
        rates = CachedRates(source, settings.interval_s / 2, clock)
        runtime = cls(settings, kube, http, rates, OperatorMetrics(), clock)
        if settings.metrics_port:
            runtime.server = await start_server(runtime.metrics, "0.0.0.0", settings.metrics_port)
        return runtime

    async def close(self) -> None:
        if self.server is not None:
            await self.server.cleanup()
        await self.http.aclose()
        await self.kube.close()

    def memory(self, pool: Pool, last_desired: int | None = None) -> PoolMemory:
        """The pool's policy; a new one starts from ``last_desired`` (status.desiredReplicas)."""
        memory = self.pools.get(pool.uid)
        if memory is None:
            policy = ScalingPolicy(pool.scaling, initial_replicas=last_desired)
            memory = self.pools[pool.uid] = PoolMemory(policy)
        else:
            memory.policy.update_spec(pool.scaling)
        return memory


def _router_urls(settings: OperatorSettings, kube: Kube) -> Callable:
    async def urls() -> list[str]:
        if settings.router_urls:
            return list(settings.router_urls)
        namespace = settings.router_namespace or "default"
        slices = await kube.endpoint_slices(namespace, settings.router_service)
        return urls_from_endpoint_slices(
            slices, settings.router_port_name, settings.router_metrics_path
        )

    return urls
