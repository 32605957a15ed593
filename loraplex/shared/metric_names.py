"""The router ↔ operator metric contract: the names both sides spell, defined once.

The router exports these series (:mod:`loraplex.router.metrics`) and the operator scales on
them (:mod:`loraplex.operator.rates` parses a router's ``/metrics``;
:mod:`loraplex.operator.scrape` queries Prometheus for them). Renaming or relabelling one breaks
autoscaling, dashboards and alerts that already scrape the routers, so change them here only,
deliberately, and on both sides at once.

* ``loraplex_router_requests_total{base_model, route, code}`` — a counter of requests answered.
* ``loraplex_router_pending{base_model}`` — a gauge of requests held because the pool has no
  ready replica (the scale-from-zero signal).

prometheus_client appends ``_total`` to a Counter's name in what it exposes, so a Counter is
declared with :data:`ROUTER_REQUESTS` and read back (scrape, PromQL) as
:data:`ROUTER_REQUESTS_TOTAL`.
"""

from __future__ import annotations

BASE_MODEL_LABEL = "base_model"  # the Hub id of the pool's base model; "none" before resolution
ROUTE_LABEL = "route"  # "adapter" or "base"
CODE_LABEL = "code"  # the HTTP status answered

ROUTER_REQUESTS = "loraplex_router_requests"  # the Counter's declared name
ROUTER_REQUESTS_TOTAL = f"{ROUTER_REQUESTS}_total"  # the exposed sample name
ROUTER_REQUESTS_LABELS = (BASE_MODEL_LABEL, ROUTE_LABEL, CODE_LABEL)

ROUTER_PENDING = "loraplex_router_pending"  # a Gauge: declared and exposed under one name
ROUTER_PENDING_LABELS = (BASE_MODEL_LABEL,)
