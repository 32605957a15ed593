"""Request rate and pending count per base model, from the routers (the operator's scaling input).

The contract with the router (:mod:`loraplex.shared.metric_names`):
``loraplex_router_requests_total{base_model, route, code}`` (a counter) and
``loraplex_router_pending{base_model}`` (a gauge).

Pure, no I/O (injected clock): :func:`parse_router_metrics` reads one router's ``/metrics``
text; :class:`CounterRates` turns counters into rates — per router, the increase over a sliding
window, where a counter that went down means the router restarted (the new value is the increase
since the restart, as Prometheus' ``rate()`` assumes); a router missing from a scrape drops out
of the sum and its history is forgotten; a new router counts from its second scrape. Summed over
routers. :class:`RateSource` is what the operator reads each tick; the sources that do the HTTP
(scraping the routers, or asking Prometheus) are in :mod:`loraplex.operator.scrape`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client.parser import text_string_to_metric_families

from loraplex.shared.metric_names import BASE_MODEL_LABEL, ROUTER_PENDING, ROUTER_REQUESTS_TOTAL


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
    routers: int = 0  # routers that answered (-1: unknown, e.g. from Prometheus)
    expected: int = 0  # routers asked (0: none known, or a source that cannot tell)

    @property
    def blind(self) -> bool:
        """True when routers were asked and none answered: there is no load data at all, so
        a rate of 0 would be a guess (the operator then keeps the replicas it has)."""
        return self.expected > 0 and self.routers == 0

    def rate(self, base_model: str) -> float:
        return self.rates.get(base_model, 0.0)

    def pending_for(self, base_model: str) -> int:
        return self.pending.get(base_model, 0)


def parse_router_metrics(text: str) -> RouterSample:
    """Sum ``requests_total`` over route and code, and read ``pending``, per base model.

    Matched on each sample's exposed name: prometheus_client also serves a
    ``loraplex_router_requests_created`` series (timestamps, same labels) that must not count
    as requests."""
    requests: dict[str, float] = {}
    pending: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            base = sample.labels.get(BASE_MODEL_LABEL)
            if base is None:
                continue
            if sample.name == ROUTER_REQUESTS_TOTAL:
                requests[base] = requests.get(base, 0.0) + sample.value
            elif sample.name == ROUTER_PENDING:
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
    """Where the operator reads rates and pending from (the implementations do the I/O)."""

    async def read(self, now: float) -> RateSnapshot: ...
