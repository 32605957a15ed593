"""A crash-looping worker shows on its BaseModelPool: ``Degraded`` and ``kubectl get bmp``.

Real parts: kopf under KopfRunner, kubernetes_asyncio, the CRD from deploy/crds/ (its printer
columns are read from the file and handed to the real kubectl as custom columns: the emulator
renders no server-side Tables). Emulated: the API server; no kubelet runs, so the test writes
the Pod (with the kubelet's CrashLoopBackOff status) and the Deployment's status itself.
"""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import pytest
import yaml
from fixtures.k8s import CRD_DIR, TEST_NAMESPACE, eventually, kopf_running
from fixtures.k8s_binaries import kubectl_bin, run_kubectl  # noqa: F401  (fixture)
from fixtures.k8s_emulator import K8sEmulator
from loraplex.operator.handlers import register
from loraplex.operator.settings import OperatorSettings

pytestmark = pytest.mark.slow
NS = TEST_NAMESPACE
POOL: dict[str, Any] = {
    "apiVersion": "loraplex.dev/v1alpha1",
    "kind": "BaseModelPool",
    "metadata": {"name": "flux", "namespace": NS},
    "spec": {"baseModel": "org/flux-base", "replicas": 1},  # pinned: no router needed
}
WORKER_LOG = (
    "ERROR worker: base model org/flux-base cannot be served: no LoRA slot for FluxPipeline"
)


def printer_columns() -> str:
    """The CRD's printer columns as kubectl custom columns (NAME first)."""
    crd = yaml.safe_load((CRD_DIR / "loraplex.dev_basemodelpools.yaml").read_text())
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    wanted = [c for c in columns if c.get("priority", 0) == 0 and c["type"] != "date"]
    named = [f"{c['name'].upper()}:{c['jsonPath']}" for c in wanted]
    return ",".join(["NAME:.metadata.name", *named])


def crash_looping_pod(uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "flux-worker-5d8f-abcde",
            "namespace": NS,
            "labels": {"app.kubernetes.io/name": "loraplex-worker", "loraplex.dev/pool": "flux"},
        },
        "spec": {"containers": [{"name": "worker", "image": "w:1"}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "worker",
                    "image": "w:1",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 4,
                    "state": {
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": "back-off 1m20s restarting failed container=worker",
                        }
                    },
                    "lastState": {
                        "terminated": {"exitCode": 3, "reason": "Error", "message": WORKER_LOG}
                    },
                }
            ],
        },
    }


def pool_status(k8s: K8sEmulator) -> dict[str, Any]:
    obj = k8s.get_object("loraplex.dev/v1alpha1/basemodelpools", NS, "flux") or {}
    return obj.get("status") or {}


def condition(k8s: K8sEmulator, kind: str) -> dict[str, Any]:
    conds = pool_status(k8s).get("conditions") or []
    return next((c for c in conds if c["type"] == kind), {})


async def test_crash_loop_is_a_degraded_condition_and_a_printer_column(
    k8s: K8sEmulator,
    k8s_kubeconfig: pathlib.Path,
    kopf_registry: Any,
    kubectl_bin: pathlib.Path,  # noqa: F811
) -> None:
    settings = OperatorSettings(
        interval_s=0.3, metrics_port=0, router_urls=[], peering="", default_worker_image="w:1"
    )
    register(kopf_registry, settings)
    async with kopf_running(kopf_registry):
        k8s.put_object(copy.deepcopy(POOL))
        dep = await eventually(
            lambda: k8s.get_object("apps/v1/deployments", NS, "flux-worker"), message="Deployment"
        )
        container = dep["spec"]["template"]["spec"]["containers"][0]
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
        await eventually(lambda: pool_status(k8s).get("state") == "WarmingUp", message="warming")

        # The kubelet's view of a worker that exits 3 at start-up, over and over.
        k8s.put_object(crash_looping_pod(dep["metadata"]["uid"]))
        k8s.put_object({**dep, "status": {"replicas": 1, "readyReplicas": 0}})
        degraded = await eventually(
            lambda: (
                condition(k8s, "Degraded").get("status") == "True" and condition(k8s, "Degraded")
            ),
            message="Degraded condition",
        )
        assert degraded["reason"] == "CrashLoopBackOff"
        assert "last exit code 3" in degraded["message"] and "FluxPipeline" in degraded["message"]
        assert condition(k8s, "Ready")["reason"] == "CrashLoopBackOff"
        table = await run_kubectl(
            kubectl_bin, k8s_kubeconfig, "-n", NS, "get", "bmp", "-o",
            f"custom-columns={printer_columns()}",
        )  # fmt: skip
        header, row = table.strip().splitlines()
        assert header.split()[:2] == ["NAME", "BASE"] and "STATE" in header.split()
        assert row.split()[header.split().index("STATE")] == "CrashLoopBackOff", table

        # Fixed (a new image, say): the pod turns ready and the pool says so.
        k8s.put_object({**dep, "status": {"replicas": 1, "readyReplicas": 1}})
        await eventually(lambda: pool_status(k8s).get("state") == "Serving", message="serving")
        assert condition(k8s, "Degraded")["status"] == "False"
        assert condition(k8s, "Ready")["status"] == "True"
