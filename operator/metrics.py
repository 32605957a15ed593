"""The operator's Prometheus metrics and its small HTTP server (/metrics, /healthz).

Metrics live in a registry owned by the running operator (no module-level state), so tests and
several operators in one process do not share series.
"""

from __future__ import annotations

import contextlib

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("namespace", "pool", "base_model")
        self.desired_replicas = Gauge(
            "loraplex_operator_desired_replicas",
            "Replicas the scaling policy asked for, per pool.",
            labels,
            registry=self.registry,
        )
        self.observed_rate = Gauge(
            "loraplex_operator_observed_rate",
            "Request rate (requests/s) the routers report for the pool's base model.",
            labels,
            registry=self.registry,
        )
        self.observed_pending = Gauge(
            "loraplex_operator_observed_pending",
            "Requests the routers hold for the pool because no replica is ready.",
            labels,
            registry=self.registry,
        )

    def record(
        self, namespace: str, pool: str, base_model: str, desired: int, rate: float, pending: int
    ) -> None:
        self.desired_replicas.labels(namespace, pool, base_model).set(desired)
        self.observed_rate.labels(namespace, pool, base_model).set(rate)
        self.observed_pending.labels(namespace, pool, base_model).set(pending)

    def forget(self, namespace: str, pool: str, base_model: str) -> None:
        for gauge in (self.desired_replicas, self.observed_rate, self.observed_pending):
            with contextlib.suppress(KeyError):  # never recorded (e.g. an invalid pool)
                gauge.remove(namespace, pool, base_model)

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def start_server(metrics: OperatorMetrics, host: str, port: int) -> web.AppRunner:
    """Serve /metrics and /healthz on the operator's own event loop (so a stuck loop fails
    the liveness probe)."""

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
