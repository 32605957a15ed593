"""The rate sources that do the I/O: the routers' ``/metrics`` over HTTP, or a Prometheus API.

* :class:`ScrapeSource` — GET every router's ``/metrics`` (routers found through the router
  Service's EndpointSlices with :func:`urls_from_endpoint_slices`, or fixed URLs), parse each
  with :func:`~loraplex.operator.rates.parse_router_metrics` and turn counters into rates with
  :class:`~loraplex.operator.rates.CounterRates`.
* :class:`PrometheusSource` — the same two numbers from a Prometheus HTTP API query, for
  clusters that already scrape the routers.

Both implement :class:`~loraplex.operator.rates.RateSource`; the pure parts they use (parsing,
counter arithmetic) stay in :mod:`loraplex.operator.rates`, which knows no HTTP.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

import httpx
from loraplex.operator.rates import CounterRates, RateSnapshot, RouterSample, parse_router_metrics

from loraplex.shared.k8s import slice_urls
from loraplex.shared.metric_names import BASE_MODEL_LABEL, ROUTER_PENDING, ROUTER_REQUESTS_TOTAL

log = logging.getLogger(__name__)

MetricsUrls = Callable[[], Awaitable[Sequence[str]]]


class ScrapeSource:
    """Scrape every router's ``/metrics`` and compute rates with :class:`CounterRates`."""

    def __init__(self, urls: MetricsUrls, http: httpx.AsyncClient, window_s: float = 30.0) -> None:
        self._urls = urls
        self._http = http
        self._rates = CounterRates(window_s)

    async def read(self, now: float) -> RateSnapshot:
        samples: dict[str, RouterSample] = {}
        urls = await self._urls()
        for url in urls:
            try:
                response = await self._http.get(url)
                response.raise_for_status()
                samples[url] = parse_router_metrics(response.text)
            except (httpx.HTTPError, ValueError) as exc:
                # One router down must not stop scaling for the others; it drops out of the sum.
                log.warning("router metrics %s unavailable: %s", url, exc)
        if urls and not samples:
            # No router answered: no data, not "no traffic". The counters' history is kept,
            # so when the routers answer again the rate spans the gap (the handlers keep the
            # replicas meanwhile: RateSnapshot.blind).
            return RateSnapshot(routers=0, expected=len(urls))
        self._rates.observe(now, samples)
        return dataclasses.replace(self._rates.snapshot(), expected=len(urls))


class PrometheusSource:
    """Read the rate and pending per base model from a Prometheus HTTP API (``/api/v1/query``)."""

    def __init__(self, base_url: str, http: httpx.AsyncClient, window: str = "1m") -> None:
        self._url = base_url.rstrip("/") + "/api/v1/query"
        self._http = http
        by = f"sum by ({BASE_MODEL_LABEL})"
        self.rate_query = f"{by} (rate({ROUTER_REQUESTS_TOTAL}[{window}]))"
        self.pending_query = f"{by} ({ROUTER_PENDING})"

    async def _query(self, query: str) -> dict[str, float]:
        response = await self._http.get(self._url, params={"query": query})
        response.raise_for_status()
        body = response.json()
        if body.get("status") != "success":
            raise ValueError(f"Prometheus query failed: {body.get('error', body)}")
        result = {}
        for item in body["data"]["result"]:
            base = item["metric"].get(BASE_MODEL_LABEL)
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
