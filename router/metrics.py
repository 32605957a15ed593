"""Router metrics, one CollectorRegistry per app (no global state; tests build many apps).

Contract with the operator, which scales on them — do not rename or relabel:

* ``loraplex_router_requests_total{base_model, route, code}`` — route is ``adapter`` or
  ``base``; code the HTTP status answered. ``base_model`` is ``none`` for requests that failed
  before resolution (bad id, unknown model).
* ``loraplex_router_pending{base_model}`` — requests held because the pool has no ready replica.

No label carries an adapter id: thousands of adapters would explode the series count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

NO_BASE = "none"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


@dataclass
class RouterMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "loraplex_router_requests",
            "Requests answered, by base model, route kind (adapter|base) and status code.",
            ["base_model", "route", "code"],
            registry=r,
        )
        self.inflight = Gauge(
            "loraplex_router_inflight",
            "Requests being forwarded to a worker now.",
            ["base_model"],
            registry=r,
        )
        self.pending = Gauge(
            "loraplex_router_pending",
            "Requests held because the pool has no ready replica (scale-up signal).",
            ["base_model"],
            registry=r,
        )
        self.latency = Histogram(
            "loraplex_router_request_seconds",
            "Request latency as the client sees it (hold included).",
            ["base_model", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "loraplex_router_upstream_seconds",
            "Time from sending to a worker to its answer's headers (per attempt).",
            ["base_model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "loraplex_router_retries",
            "Attempts retried on another replica after a worker failed before answering.",
            ["base_model"],
            registry=r,
        )
        self.resolve_cache = Counter(
            "loraplex_router_resolve_cache",
            "Model-id lookups by outcome: hit, miss, negative_hit, stale (served while the Hub "
            "was unreachable).",
            ["outcome"],
            registry=r,
        )
        self.replicas_ready = Gauge(
            "loraplex_router_replicas_ready",
            "Ready worker replicas the router sees, per pool.",
            ["base_model"],
            registry=r,
        )

    def record_resolve(self, outcome: str) -> None:
        self.resolve_cache.labels(outcome).inc()
