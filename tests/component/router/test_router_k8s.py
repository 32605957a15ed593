"""The Kubernetes pool source against the KMock-based API emulator (``k8s`` fixture).

BaseModelPool objects and EndpointSlices are written into the emulator as the operator and
the EndpointSlice controller would (the emulator runs no controllers); the router watches them
with kubernetes_asyncio and routes to a stub worker whose address the slice names.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fixtures.k8s import TEST_NAMESPACE, eventually
from fixtures.router_stubs import StubWorker, serve_app, stub_workers
from loraplex.router.app import create_app
from loraplex.router.pools_k8s import (
    KubernetesPoolSource,
    pool_endpoints,
    pool_failure,
    slice_urls,
)
from loraplex.router.settings import RouterSettings

BASE = "org/base"


def pool(name: str, base: str) -> dict[str, Any]:
    return {
        "apiVersion": "loraplex.dev/v1alpha1",
        "kind": "BaseModelPool",
        "metadata": {"name": name, "namespace": TEST_NAMESPACE},
        "spec": {"baseModel": base},
    }


def endpoint_slice(name: str, service: str, port: int, ready: dict[str, bool]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": TEST_NAMESPACE,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [address], "conditions": {"ready": is_ready}}
            for address, is_ready in ready.items()
        ],
    }


def test_pool_endpoints_pure() -> None:
    slices = {
        "a": endpoint_slice("a", "tiny-worker", 8000, {"10.0.0.1": True, "10.0.0.2": False}),
        "b": endpoint_slice("b", "tiny-worker", 8000, {"10.0.0.3": True}),
        "c": endpoint_slice("c", "unrelated", 80, {"10.0.0.9": True}),
    }
    slices["b"]["endpoints"][0]["conditions"] = {}  # absent "ready" means ready
    pools = {f"{TEST_NAMESPACE}/tiny": BASE, f"{TEST_NAMESPACE}/empty": "org/other"}
    got = pool_endpoints(pools, slices)
    assert got == {BASE: ["http://10.0.0.1:8000", "http://10.0.0.3:8000"], "org/other": []}
    # A pool of the same name in another namespace does not take these endpoints.
    assert pool_endpoints({"elsewhere/tiny": BASE}, slices) == {BASE: []}
    v6 = {**endpoint_slice("d", "s", 80, {"fd00::1": True}), "addressType": "IPv6"}
    assert slice_urls(v6) == ["http://[fd00::1]:80"]


@pytest.fixture(params=[TEST_NAMESPACE, ""], ids=["namespaced", "all-namespaces"])
async def routed(
    request: pytest.FixtureRequest, k8s, k8s_kubeconfig: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, StubWorker]]:
    async with stub_workers(BASE, 1) as (worker,):
        settings = RouterSettings(state_poll_interval_s=0.05, hold_timeout_s=0.2)
        app = create_app(settings, pool_source=KubernetesPoolSource(request.param))
        async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
            yield client, worker


async def ready_replicas(client: httpx.AsyncClient) -> dict[str, int]:
    models = (await client.get("/v1/models")).json()["data"]
    return {m["id"]: m["ready_replicas"] for m in models}


async def test_router_follows_pools_and_ready_endpoints(routed, k8s) -> None:
    client, worker = routed
    port = int(worker.url.rsplit(":", 1)[1])
    k8s.put_object(pool("tiny", BASE))
    k8s.put_object(endpoint_slice("tiny-worker-abc", "tiny-worker", port, {"127.0.0.1": True}))
    await eventually(lambda: _has(client, {BASE: 1}), message="pool with one ready replica")
    assert (await client.get("/readyz")).status_code == 200
    resp = await client.post(f"/models/{BASE}", json={"inputs": "a fox"})
    assert resp.status_code == 200 and len(worker.seen) == 1  # served by that endpoint

    # The endpoint turns not ready: the pool stays served but holds, then 503.
    k8s.put_object(endpoint_slice("tiny-worker-abc", "tiny-worker", port, {"127.0.0.1": False}))
    await eventually(lambda: _has(client, {BASE: 0}), message="replica gone")
    resp = await client.post(f"/models/{BASE}", json={"inputs": "a fox"})
    assert resp.status_code == 503 and "estimated_time" in resp.json()

    # The pool is deleted: its base is no longer served (422 lists nothing).
    path = f"/apis/loraplex.dev/v1alpha1/namespaces/{TEST_NAMESPACE}/basemodelpools/tiny"
    async with httpx.AsyncClient(base_url=str(k8s.url).rstrip("/")) as api:
        assert (await api.delete(path)).status_code == 200
    await eventually(lambda: _has(client, {}), message="pool removed")


async def _has(client: httpx.AsyncClient, expected: dict[str, int]) -> bool:
    return await ready_replicas(client) == expected


def test_pool_failure_reads_the_operators_degraded_condition() -> None:
    degraded = {
        "type": "Degraded",
        "status": "True",
        "reason": "CrashLoopBackOff",
        "message": "worker exited 3: base org/base cannot be served",
    }
    assert pool_failure({"status": {"conditions": [degraded]}}) == (
        "CrashLoopBackOff: worker exited 3: base org/base cannot be served"
    )
    healthy = {**degraded, "status": "False", "reason": "Reconciled"}
    assert pool_failure({"status": {"conditions": [healthy]}}) is None
    assert pool_failure({}) is None


async def test_a_degraded_pool_answers_503_that_says_it_is_failing(routed, k8s) -> None:
    """The operator marks the pool Degraded (its workers crash-loop): with no ready replica
    the router says why at once instead of "scaling up"; once the condition clears it holds
    as for any pool without replicas."""
    client, _ = routed
    failing = {
        **pool("tiny", BASE),
        "status": {
            "conditions": [
                {
                    "type": "Degraded",
                    "status": "True",
                    "reason": "CrashLoopBackOff",
                    "message": "base org/base cannot be served: no model_index.json",
                }
            ]
        },
    }
    k8s.put_object(failing)
    await eventually(lambda: _has(client, {BASE: 0}), message="pool listed")

    async def says_failing() -> bool:
        resp = await client.post(f"/models/{BASE}", json={"inputs": "a fox"})
        return (
            resp.status_code == 503 and "failing" in resp.text and "CrashLoopBackOff" in resp.text
        )

    await eventually(says_failing, message="503 naming the failure")
    k8s.put_object(pool("tiny", BASE))  # the condition is gone

    async def holds_again() -> bool:
        resp = await client.post(f"/models/{BASE}", json={"inputs": "a fox"})
        return resp.status_code == 503 and "failing" not in resp.text

    await eventually(holds_again, message="503 without the failure")
