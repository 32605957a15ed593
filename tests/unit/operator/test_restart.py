"""An operator restart must not cut a busy pool: resume-reconcile then the first timer tick.

The Kubernetes API is a fake implementing the four :class:`loraplex.operator.kube.Kube` calls
these handlers make (reads, create-or-patch, scale), because the point here is the order of two
handler calls on one in-memory runtime, not the API; the KopfRunner tests cover the wiring.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import kopf
from loraplex.operator import handlers
from loraplex.operator import resources as res
from loraplex.operator.metrics import OperatorMetrics
from loraplex.operator.rates import RateSnapshot
from loraplex.operator.runtime import CachedRates, Runtime
from loraplex.operator.settings import OperatorSettings

IMAGE = OperatorSettings().default_worker_image
BODY = {
    "apiVersion": "loraplex.dev/v1alpha1",
    "kind": "BaseModelPool",
    "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "generation": 1},
    "spec": {"baseModel": "org/base", "scaling": {"minReplicas": 0, "maxReplicas": 10}},
    "status": {"desiredReplicas": 5},
}


class FakeKube:
    def __init__(self, deployment: dict[str, Any], service: dict[str, Any]) -> None:
        self.deployment, self.service, self.scaled = deployment, service, []

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.deployment)

    async def read_service(self, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.service)

    async def ensure(self, desired: dict[str, Any], actual: dict[str, Any] | None) -> str:
        return "patched" if res.drifted(desired, actual) else "unchanged"

    async def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        self.scaled.append(replicas)
        self.deployment["spec"]["replicas"] = replicas


class NoTrafficYet:
    """The first scrape after a restart: no rate can be computed from one sample."""

    async def read(self, now: float) -> RateSnapshot:
        return RateSnapshot()


async def test_resume_then_first_tick_keeps_a_busy_pool() -> None:
    pool = res.parse_pool(BODY, IMAGE)
    deployment = res.build_deployment(pool, 5)
    deployment["status"] = {"replicas": 5, "readyReplicas": 5}
    kube = FakeKube(deployment, res.build_service(pool))
    clock = lambda: 1000.0  # noqa: E731
    rates = CachedRates(NoTrafficYet(), 1.0, clock)
    runtime = Runtime(OperatorSettings(), kube, None, rates, OperatorMetrics(), clock)  # type: ignore[arg-type]
    body = kopf.Body(copy.deepcopy(BODY))
    await handlers.reconcile(body=body, patch=kopf.Patch(), operator=runtime)
    await handlers.tick(
        body=body, patch=kopf.Patch(), operator=runtime, logger=logging.getLogger("test")
    )
    assert kube.scaled == [], "the first tick after a restart scaled a busy pool down"
