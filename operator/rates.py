"""Request rate and pending count per base model, from the routers (the operator's scaling input).

The contract with the router (DESIGN.md): ``loraplex_router_requests_total{base_model, route,
code}`` (a counter) and ``loraplex_router_pending{base_model}`` (a gauge). Two sources:

* :class:`ScrapeSource` — GET every router's ``/metrics`` (routers found through the router
  Service's EndpointSlices, or fixed URLs), and turn counters into rates with
  :class:`CounterRates`: per router, the increase over a sliding window, where a counter that
  went down means the router restarted (the new value is the increase since the restart, as
  Prometheus' ``rate()`` assumes); a router missing from a scrape drops out of the sum and its
  history is forgotten; a new router counts from its second scrape. Summed over routers.
* :class:`PrometheusSource` — the same two numbers from a Prometheus HTTP API query, for
  clusters that already scrape the routers.

:class:`CounterRates` and :func:`parse_router_metrics` are pure (injected clock); the sources do
the I/O and are the only parts that know HTTP.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loraplex.shared.k8s import slice_urls

log = logging.getLogger(__name__)

REQUESTS_METRIC = "loraplex_router_requests_total"
PENDING_METRIC = "loraplex_router_pending"


@dataclass(frozen=True)
class RouterSample:
    """One router's counters at one time: total requests and pending, per base model."""

    requests: Mapping[str, float] = field(default_factory=dict)
    pending: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RateSnapshot:
    """What the scaling policy needs for every base model, plus how many routers answered."""

    rates: Mapping[str, float] = field(default_factory=dict)  # requests/s
    pending: Mapping[str, int] = field(default_factory=dict)
    routers: int = 0

    def rate(self, base_model: str) -> float:
        return self.rates.get(base_model, 0.0)

    def pending_for(self, base_model: str) -> int:
        return self.pending.get(base_model, 0)


def parse_router_metrics(text: str) -> RouterSample:
    """Sum ``requests_total`` over route and code, and read ``pending``, per base model."""
    requests: dict[str, float] = {}
    pending: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            base = sample.labels.get("base_model")
            if base is None:
                continue
            if sample.name == REQUESTS_METRIC:
                requests[base] = requests.get(base, 0.0) + sample.value
            elif sample.name == PENDING_METRIC:
                pending[base] = pending.get(base, 0.0) + sample.value
    return RouterSample(requests, pending)


class CounterRates:
    """Counter samples per router → request rate per base model (pure, injected clock).

    For each (router, base model) a running *adjusted* total is kept: each new sample adds
    its increase over the previous one, or its whole value when the counter went down (a
    reset). The rate is the adjusted increase over the last ``window_s`` seconds divided by
    the time it spans; one sample alone gives no rate yet.
    """

    def __init__(self, window_s: float = 30.0) -> None:
        self.window_s = window_s
        # (router, base) -> (last raw value, deque of (time, adjusted total))
        self._series: dict[tuple[str, str], tuple[float, deque[tuple[float, float]]]] = {}
        self._pending: dict[str, float] = {}
        self._routers = 0

    def observe(self, now: float, samples: Mapping[str, RouterSample]) -> None:
        """Record one scrape of every router that answered (routers absent are forgotten)."""
        seen = set()
        for router, sample in samples.items():
            for base, value in sample.requests.items():
                key = (router, base)
                seen.add(key)
                last, points = self._series.get(key, (value, deque()))
                adjusted = points[-1][1] if points else 0.0
                if points:
                    adjusted += value - last if value >= last else value  # reset: restarted at 0
                points.append((now, adjusted))
                while len(points) > 2 and points[1][0] <= now - self.window_s:
                    points.popleft()
                self._series[key] = (value, points)
        for key in set(self._series) - seen:
            del self._series[key]  # the router (or its series) disappeared
        self._pending = {}
        for sample in samples.values():
            for base, value in sample.pending.items():
                self._pending[base] = self._pending.get(base, 0.0) + value
        self._routers = len(samples)

    def snapshot(self) -> RateSnapshot:
        rates: dict[str, float] = {}
        for (_, base), (_, points) in self._series.items():
            if len(points) >= 2 and points[-1][0] > points[0][0]:
                increase = points[-1][1] - points[0][1]
                rates[base] = rates.get(base, 0.0) + increase / (points[-1][0] - points[0][0])
        pending = {base: round(value) for base, value in self._pending.items()}
        return RateSnapshot(rates, pending, self._routers)


class RateSource(Protocol):
    async def read(self, now: float) -> RateSnapshot: ...


MetricsUrls = Callable[[], Awaitable[Sequence[str]]]


class ScrapeSource:
    """Scrape every router's ``/metrics`` and compute rates with :class:`CounterRates`."""

    def __init__(self, urls: MetricsUrls, http: httpx.AsyncClient, window_s: float = 30.0) -> None:
        self._urls = urls
        self._http = http
        self._rates = CounterRates(window_s)

    async def read(self, now: float) -> RateSnapshot:
        samples: dict[str, RouterSample] = {}
        for url in await self._urls():
            try:
                response = await self._http.get(url)
                response.raise_for_status()
                samples[url] = parse_router_metrics(response.text)
            except (httpx.HTTPError, ValueError) as exc:
                # One router down must not stop scaling for the others; it drops out of the sum.
                log.warning("router metrics %s unavailable: %s", url, exc)
        self._rates.observe(now, samples)
        return self._rates.snapshot()


class PrometheusSource:
    """Read the rate and pending per base model from a Prometheus HTTP API (``/api/v1/query``)."""

    def __init__(self, base_url: str, http: httpx.AsyncClient, window: str = "1m") -> None:
        self._url = base_url.rstrip("/") + "/api/v1/query"
        self._http = http
        self.rate_query = f"sum by (base_model) (rate({REQUESTS_METRIC}[{window}]))"
        self.pending_query = f"sum by (base_model) ({PENDING_METRIC})"

    async def _query(self, query: str) -> dict[str, float]:
        response = await self._http.get(self._url, params={"query": query})
        response.raise_for_status()
        body = response.json()
        if body.get("status") != "success":
            raise ValueError(f"Prometheus query failed: {body.get('error', body)}")
        result = {}
        for item in body["data"]["result"]:
            base = item["metric"].get("base_model")
            if base is not None:
                result[base] = float(item["value"][1])
        return result

    async def read(self, now: float) -> RateSnapshot:
        rates = await self._query(self.rate_query)
        pending = await self._query(self.pending_query)
        return RateSnapshot(rates, {k: round(v) for k, v in pending.items()}, routers=-1)


def urls_from_endpoint_slices(slices: Sequence[Mapping], port_name: str, path: str) -> list[str]:
    """``http://addr:port/metrics`` for every ready endpoint in the Service's EndpointSlices."""
    return sorted({url + path for slice_ in slices for url in slice_urls(slice_, port_name)})
