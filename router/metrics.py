"""Router metrics, one CollectorRegistry per app (no global state; tests build many apps).

Contract with the operator, which scales on them — do not rename or relabel (the names are
spelled once, in :mod:`loraplex.shared.metric_names`):

* ``loraplex_router_requests_total{base_model, route, code}`` — route is ``adapter`` or
  ``base``; code the HTTP status answered. ``base_model`` is ``none`` for requests that failed
  before resolution (bad id, unknown model).
* ``loraplex_router_pending{base_model}`` — requests held because the pool has no ready replica.

No label carries an adapter id: thousands of adapters would explode the series count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from loraplex.shared import metric_names as names

NO_BASE = "none"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


@dataclass
class RouterMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            names.ROUTER_REQUESTS,  # exposed as ROUTER_REQUESTS_TOTAL (prometheus_client adds it)
            "Requests answered, by base model, route kind (adapter|base) and status code.",
            names.ROUTER_REQUESTS_LABELS,
            registry=r,
        )
        self.inflight = Gauge(
            "loraplex_router_inflight",
            "Requests being forwarded to a worker now.",
            [names.BASE_MODEL_LABEL],
            registry=r,
        )
        self.pending = Gauge(
            names.ROUTER_PENDING,
            "Requests held because the pool has no ready replica (scale-up signal).",
            names.ROUTER_PENDING_LABELS,
            registry=r,
        )
        self.latency = Histogram(
            "loraplex_router_request_seconds",
            "Request latency as the client sees it (hold included).",
            [names.BASE_MODEL_LABEL, names.ROUTE_LABEL],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "loraplex_router_upstream_seconds",
            "Time from sending to a worker to its answer's headers (per attempt).",
            [names.BASE_MODEL_LABEL],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "loraplex_router_retries",
            "Attempts retried on another replica after a worker failed before answering.",
            [names.BASE_MODEL_LABEL],
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
            [names.BASE_MODEL_LABEL],
            registry=r,
        )

    def record_resolve(self, outcome: str) -> None:
        self.resolve_cache.labels(outcome).inc()
