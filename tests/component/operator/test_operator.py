"""The operator under kopf's KopfRunner against the Kubernetes API emulator.

Real parts: kopf (logging in through the test kubeconfig), kubernetes_asyncio, the CRD file from
deploy/crds/, HTTP /metrics of stub routers on loopback rendered by prometheus_client (the
router's metric contract). Emulated: the API server (tests/fixtures/k8s_emulator.py), which also
plays kube-controller-manager's garbage collector; no controller runs pods, so the tests write a
Deployment's readyReplicas themselves where readiness matters.
"""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
from aiohttp import web
from fixtures.k8s import TEST_NAMESPACE, eventually, kopf_running
from fixtures.k8s_emulator import K8sEmulator
from loraplex.operator.handlers import register
from loraplex.operator.settings import OperatorSettings
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

pytestmark = pytest.mark.slow

NS = TEST_NAMESPACE
POOLS = f"/apis/loraplex.dev/v1alpha1/namespaces/{NS}/basemodelpools"
BASE = "loraplex-test/tiny-sd"
INTERVAL = 0.5
MERGE = {"Content-Type": "application/merge-patch+json"}

POOL: dict[str, Any] = {
    "apiVersion": "loraplex.dev/v1alpha1",
    "kind": "BaseModelPool",
    "metadata": {"name": "tiny"},
    "spec": {
        "baseModel": BASE,
        "worker": {
            "image": "example.org/worker:1",
            "dtype": "float16",
            "adapterSlots": 3,
            "hostCacheSize": "1Gi",
            "hfTokenSecret": {"name": "hf", "key": "token"},
            "resources": {"limits": {"nvidia.com/gpu": "1"}},
            "env": [{"name": "EXTRA", "value": "1"}],
        },
        "scaling": {
            "minReplicas": 0,
            "maxReplicas": 5,
            "targetRequestsPerReplica": 1.0,
            "scaleDownStabilizationSeconds": 1.0,
            "idleToZeroSeconds": 2.0,
        },
    },
}


class StubRouter:
    """A router's /metrics: a request counter that grows at ``rate`` per second, and pending."""

    def __init__(self) -> None:
        self.rate = 0.0
        self.pending = 0
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "loraplex_router_requests",
            "requests",
            ["base_model", "route", "code"],
            registry=self.registry,
        )
        self.pending_gauge = Gauge(
            "loraplex_router_pending", "pending", ["base_model"], registry=self.registry
        )
        self._last = time.monotonic()

    async def metrics(self, _: web.Request) -> web.Response:
        now = time.monotonic()
        self.requests.labels(BASE, "adapter", "200").inc(self.rate * (now - self._last))
        self._last = now
        self.pending_gauge.labels(BASE).set(self.pending)
        return web.Response(body=generate_latest(self.registry), content_type="text/plain")


@pytest.fixture()
async def router() -> AsyncIterator[tuple[StubRouter, str]]:
    stub = StubRouter()
    app = web.Application()
    app.router.add_get("/metrics", stub.metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield stub, f"http://127.0.0.1:{port}/metrics"
    await runner.cleanup()


def settings_for(url: str) -> OperatorSettings:
    return OperatorSettings(
        interval_s=INTERVAL,
        rate_window_s=2 * INTERVAL,
        metrics_port=0,
        router_urls=[url],
        peering="",
        default_worker_image="example.org/default:1",
    )


async def create_pool(k8s: K8sEmulator, pool: dict[str, Any]) -> dict[str, Any]:
    async with k8s.post(POOLS, json=pool) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def deployment(k8s: K8sEmulator, name: str = "tiny") -> dict[str, Any] | None:
    return k8s.get_object("apps/v1/deployments", NS, f"{name}-worker")


def env_of(dep: dict[str, Any]) -> dict[str, Any]:
    container = dep["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


async def test_pool_lifecycle_owns_deployment_and_service(
    k8s: K8sEmulator, k8s_kubeconfig: Any, kopf_registry: Any, router: tuple[StubRouter, str]
) -> None:
    register(kopf_registry, settings_for(router[1]))
    async with kopf_running(kopf_registry) as runner:
        pool = await create_pool(k8s, copy.deepcopy(POOL))
        dep = await eventually(lambda: deployment(k8s), message="worker Deployment")
        svc = await eventually(
            lambda: k8s.get_object("v1/services", NS, "tiny-worker"), message="Service"
        )
        for obj in (dep, svc):
            (owner,) = obj["metadata"]["ownerReferences"]
            assert owner["uid"] == pool["metadata"]["uid"] and owner["controller"] is True
        env = env_of(dep)
        assert env["LORAPLEX_WORKER_BASE_MODEL"] == BASE
        assert env["LORAPLEX_WORKER_PORT"] == "8000" and env["LORAPLEX_WORKER_DTYPE"] == "float16"
        assert env["LORAPLEX_WORKER_MAX_ADAPTER_SLOTS"] == "3"
        assert env["LORAPLEX_WORKER_HOST_CACHE_BYTES"] == str(2**30)
        assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token", "optional": True}}
        assert env["LORAPLEX_WORKER_SECRET"] == {  # the operator's default Secret name and key
            "secretKeyRef": {"name": "loraplex-worker-secret", "key": "worker-secret"}
        }
        assert env["HF_HOME"].startswith("/models") and env["EXTRA"] == "1"
        container = dep["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["loraplex", "worker"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert [p["name"] for p in svc["spec"]["ports"]] == ["http", "metrics"]
        assert container["image"] == "example.org/worker:1"
        assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
        assert dep["spec"]["replicas"] == 0  # minReplicas, no traffic yet
        assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]

        # A spec change reaches the Deployment.
        async with k8s.patch(
            f"{POOLS}/tiny", json={"spec": {"worker": {"dtype": "bfloat16"}}}, headers=MERGE
        ) as resp:
            assert resp.status == 200
        await eventually(
            lambda: env_of(deployment(k8s) or dep)["LORAPLEX_WORKER_DTYPE"] == "bfloat16",
            message="dtype change in the Deployment",
        )
        # Drift is repaired: a hand edit of the image is undone within a tick or two.
        k8s.put_object(
            {
                **deployment(k8s),
                "spec": {
                    **deployment(k8s)["spec"],
                    "template": {
                        **dep["spec"]["template"],
                        "spec": {
                            **dep["spec"]["template"]["spec"],
                            "containers": [{**container, "image": "hand/edited:0"}],
                        },
                    },
                },
            }
        )
        await eventually(
            lambda: (
                deployment(k8s)["spec"]["template"]["spec"]["containers"][0]["image"]
                == "example.org/worker:1"
            ),
            message="drift repaired",
        )
        # A Service deleted by hand comes back.
        async with k8s.delete(f"/api/v1/namespaces/{NS}/services/tiny-worker") as resp:
            assert resp.status == 200
        await eventually(
            lambda: k8s.get_object("v1/services", NS, "tiny-worker"), message="Service recreated"
        )
        status = k8s.get_object("loraplex.dev/v1alpha1/basemodelpools", NS, "tiny")["status"]
        assert status["deployment"] == "tiny-worker"

        # Deleting the pool deletes what it owns.
        async with k8s.delete(f"{POOLS}/tiny") as resp:
            assert resp.status == 200
        await eventually(lambda: deployment(k8s) is None, message="Deployment collected")
        assert k8s.get_object("v1/services", NS, "tiny-worker") is None
    assert runner.exit_code == 0, runner.output


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"scaling": {"minReplicas": 3, "maxReplicas": 1}}, "minReplicas (3) exceeds"),
        ({"baseModel": "../../etc/passwd"}, "baseModel"),
    ],
    ids=["min-over-max", "bad-base-model"],
)
async def test_invalid_pool_gets_a_condition_and_nothing_else(
    k8s: K8sEmulator, k8s_kubeconfig: Any, kopf_registry: Any, router: Any, patch: Any, reason: str
) -> None:
    register(kopf_registry, settings_for(router[1]))
    pool = copy.deepcopy(POOL)
    pool["spec"].update(patch)
    async with kopf_running(kopf_registry):
        await create_pool(k8s, pool)

        def degraded() -> dict[str, Any] | None:
            obj = k8s.get_object("loraplex.dev/v1alpha1/basemodelpools", NS, "tiny") or {}
            conds = (obj.get("status") or {}).get("conditions") or []
            return next((c for c in conds if c["type"] == "Degraded"), None)

        cond = await eventually(degraded, message="Degraded condition")
        assert cond["status"] == "True" and cond["reason"] == "InvalidSpec"
        assert reason in cond["message"]
        # Two more ticks: still nothing created.
        await eventually(lambda: True)
        k8s_ticks_later = time.monotonic() + 2 * INTERVAL
        await eventually(lambda: time.monotonic() > k8s_ticks_later)
        assert deployment(k8s) is None
        assert k8s.get_object("v1/services", NS, "tiny-worker") is None


async def test_replicas_follow_router_rate_and_return_to_zero(
    k8s: K8sEmulator, k8s_kubeconfig: Any, kopf_registry: Any, router: tuple[StubRouter, str]
) -> None:
    stub, url = router
    register(kopf_registry, settings_for(url))

    def replicas() -> int | None:
        dep = deployment(k8s)
        return None if dep is None else dep["spec"]["replicas"]

    def pool_status() -> dict[str, Any]:
        obj = k8s.get_object("loraplex.dev/v1alpha1/basemodelpools", NS, "tiny") or {}
        return obj.get("status") or {}

    async with kopf_running(kopf_registry):
        await create_pool(k8s, copy.deepcopy(POOL))
        await eventually(lambda: replicas() == 0, message="pool at zero")
        await eventually(lambda: "observedRate" in pool_status(), message="first tick")

        # Pending at a router with no ready replica: one replica at once.
        stub.pending = 2
        await eventually(lambda: replicas() == 1, timeout=2 * INTERVAL + 1.5, message="from zero")
        stub.pending = 0

        # 3 requests/s at 1 per replica: 3 replicas within two ticks of the rate showing.
        stub.rate = 3.0
        await eventually(lambda: replicas() == 3, timeout=4 * INTERVAL + 1.5, message="3 replicas")
        status = await eventually(
            lambda: pool_status() if pool_status().get("desiredReplicas") == 3 else None
        )
        assert 2.0 <= status["observedRate"] <= 4.0

        # Traffic stops: down after the 1 s window, zero after 2 s idle.
        stub.rate = 0.0
        started = time.monotonic()
        await eventually(lambda: replicas() == 0, timeout=6.0, message="back to zero")
        assert time.monotonic() - started >= 2.0 - INTERVAL  # not before idle-to-zero
        await eventually(
            lambda: "to 0" in pool_status().get("lastScaleReason", ""), message="status reason"
        )


async def test_transient_api_failure_is_retried(
    k8s: K8sEmulator, k8s_kubeconfig: Any, kopf_registry: Any, router: tuple[StubRouter, str]
) -> None:
    """The API server refuses the first two Deployment creations (503): the operator retries
    (kopf TemporaryError, and the timer's repair) until the Deployment exists."""
    failures: list[Any] = []
    k8s["post", kmock.resource("apps", "v1", "deployments")][:2] << 503 >> failures
    register(kopf_registry, settings_for(router[1]))
    async with kopf_running(kopf_registry):
        await create_pool(k8s, copy.deepcopy(POOL))
        await eventually(lambda: deployment(k8s), timeout=15, message="Deployment after retries")
    assert len(failures) == 2
