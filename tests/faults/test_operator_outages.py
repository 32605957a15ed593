"""Fault matrix, operator rows: the API server unreachable, and every router unreachable.

Real parts: kopf under KopfRunner, kubernetes_asyncio and httpx talking TCP through a
:class:`CuttableProxy` (a cut refuses new connections and resets open ones, watch streams
included), the CRD from deploy/crds/, a router ``/metrics`` rendered by prometheus_client.
Emulated: the API server (tests/fixtures/k8s_emulator.py).

A sampler records every ``spec.replicas`` the Deployment takes (every 20 ms, far below the
0.3 s tick), so a flap (3 → 1 → 3) could not hide between two reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from fixtures.faults import CuttableProxy
from fixtures.k8s import TEST_NAMESPACE, eventually, kopf_running
from fixtures.k8s_emulator import K8sEmulator
from loraplex.operator.handlers import register
from loraplex.operator.settings import OperatorSettings
from prometheus_client import CollectorRegistry, Counter, generate_latest

pytestmark = pytest.mark.slow
NS = TEST_NAMESPACE
BASE = "org/base"
INTERVAL = 0.3
OUTAGE_S = 3.0  # longer than the scale-down window (1 s) and idle-to-zero (2 s) below
POOL = {
    "apiVersion": "loraplex.dev/v1alpha1",
    "kind": "BaseModelPool",
    "metadata": {"name": "p", "namespace": NS},
    "spec": {
        "baseModel": BASE,
        "scaling": {
            "minReplicas": 0,
            "maxReplicas": 5,
            "targetRequestsPerReplica": 1.0,
            "scaleDownStabilizationSeconds": 1.0,
            "idleToZeroSeconds": 2.0,
        },
    },
}


class SteadyRouter:
    """A router's /metrics whose request counter grows at ``rate`` per second, always."""

    def __init__(self, rate: float) -> None:
        self.rate, self.started = rate, time.monotonic()
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "loraplex_router_requests", "r", ["base_model", "route", "code"], registry=self.registry
        )

    async def metrics(self, _: web.Request) -> web.Response:
        total = self.rate * (time.monotonic() - self.started)
        child = self.requests.labels(BASE, "adapter", "200")
        child.inc(max(0.0, total - child._value.get()))
        return web.Response(body=generate_latest(self.registry), content_type="text/plain")


@contextlib.asynccontextmanager
async def router_behind_proxy(rate: float) -> AsyncIterator[CuttableProxy]:
    app = web.Application()
    app.router.add_get("/metrics", SteadyRouter(rate).metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    proxy = await CuttableProxy("127.0.0.1", port).start()
    try:
        yield proxy
    finally:
        await proxy.stop()
        await runner.cleanup()


class ReplicaSampler:
    """Every distinct Deployment spec.replicas, in order, with the time it was first seen."""

    def __init__(self, k8s: K8sEmulator) -> None:
        self.k8s, self.seen = k8s, []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            dep = self.k8s.get_object("apps/v1/deployments", NS, "p-worker")
            value = None if dep is None else dep["spec"]["replicas"]
            if not self.seen or self.seen[-1][1] != value:
                self.seen.append((time.monotonic(), value))
            await asyncio.sleep(0.02)

    def values_since(self, since: float) -> list[Any]:
        last_before = [v for t, v in self.seen if t < since][-1:]
        return last_before + [v for t, v in self.seen if t >= since]

    def stop(self) -> None:
        self._task.cancel()


def pool_status(k8s: K8sEmulator) -> dict[str, Any]:
    return (k8s.get_object("loraplex.dev/v1alpha1/basemodelpools", NS, "p") or {}).get(
        "status"
    ) or {}


def settings_for(router_url: str) -> OperatorSettings:
    return OperatorSettings(
        interval_s=INTERVAL,
        rate_window_s=1.0,
        metrics_port=0,
        router_urls=[f"{router_url}/metrics"],
        peering="",
        default_worker_image="w:1",
    )


async def at_three_replicas(k8s: K8sEmulator) -> None:
    k8s.put_object(dict(POOL))
    await eventually(
        lambda: pool_status(k8s).get("desiredReplicas") == 3, timeout=15, message="3 replicas"
    )


async def test_api_server_unreachable_nothing_applied_no_flap_on_return(
    k8s: K8sEmulator, proxied_kubeconfig: CuttableProxy, kopf_registry: Any
) -> None:
    """API server unreachable for 3 s at a steady 3 req/s (3 replicas). Figures: Deployment
    writes during the outage 0; replica changes after it 0 (sampled every 20 ms); the pool's
    status is fresh again (a new ``observedRate`` written) within ~1-2 s of the return."""
    api = proxied_kubeconfig
    async with router_behind_proxy(3.0) as router:
        register(kopf_registry, settings_for(router.url))
        async with kopf_running(kopf_registry) as runner:
            await at_three_replicas(k8s)
            sampler = ReplicaSampler(k8s)
            await api.cut()
            cut_at = time.monotonic()
            rv_at_cut = k8s.get_object("apps/v1/deployments", NS, "p-worker")["metadata"][
                "resourceVersion"
            ]
            await eventually(lambda: time.monotonic() - cut_at > OUTAGE_S, timeout=OUTAGE_S + 1)
            dep = k8s.get_object("apps/v1/deployments", NS, "p-worker")
            assert dep["metadata"]["resourceVersion"] == rv_at_cut  # nothing written meanwhile
            # Status written before the cut carries a stamp we can wait to see replaced.
            k8s.put_object(
                {**k8s.get_object("loraplex.dev/v1alpha1/basemodelpools", NS, "p"),
                 "status": {**pool_status(k8s), "observedRate": -1.0}}
            )  # fmt: skip
            await api.restore()
            back_at = time.monotonic()
            await eventually(
                lambda: pool_status(k8s).get("observedRate", -1.0) >= 0, timeout=30,
                message="fresh status after the API server returned",
            )  # fmt: skip
            recovered_s = time.monotonic() - back_at
            settle = time.monotonic() + 6 * INTERVAL
            await eventually(lambda: time.monotonic() > settle, timeout=10)
            sampler.stop()
            assert sampler.values_since(cut_at) == [3], sampler.seen
            assert pool_status(k8s)["desiredReplicas"] == 3
            assert recovered_s < 10.0  # ~1 s on a quiet machine (kopf's reconnect + one tick)
        assert runner.exit_code == 0, runner.output


async def test_no_router_answers_keeps_replicas_instead_of_scaling_to_zero(
    k8s: K8sEmulator, proxied_kubeconfig: CuttableProxy, kopf_registry: Any
) -> None:
    """Every router's /metrics unreachable for 3 s (longer than idle-to-zero) while traffic
    goes on. Figures: replicas stay 3 throughout (a blind tick decides nothing; without that
    rule it reads as rate 0 and scales the pool down); the Scaling condition says why; after
    the routers return, 0 replica changes."""
    async with router_behind_proxy(3.0) as router:
        register(kopf_registry, settings_for(router.url))
        async with kopf_running(kopf_registry):
            await at_three_replicas(k8s)
            sampler = ReplicaSampler(k8s)
            await router.cut()
            cut_at = time.monotonic()

            def scaling_message() -> str:
                conds = pool_status(k8s).get("conditions") or []
                return next((c["message"] for c in conds if c["type"] == "Scaling"), "")

            await eventually(
                lambda: "no rate data" in scaling_message(), timeout=5, message="blind condition"
            )
            await eventually(lambda: time.monotonic() - cut_at > OUTAGE_S, timeout=OUTAGE_S + 1)
            await router.restore()
            await eventually(
                lambda: "no rate data" not in scaling_message(), timeout=5, message="rates back"
            )
            settle = time.monotonic() + 6 * INTERVAL
            await eventually(lambda: time.monotonic() > settle, timeout=10)
            sampler.stop()
            assert sampler.values_since(cut_at) == [3], sampler.seen
