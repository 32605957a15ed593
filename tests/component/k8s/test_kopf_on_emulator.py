"""kopf runs against the emulator: a throwaway operator turns a custom resource into a Deployment.

kopf runs under ``kopf.testing.KopfRunner`` in a thread (fixtures.k8s.kopf_running) with a fresh
registry; it logs in with its default login handlers through the test's kubeconfig, exactly as
it would against a cluster. The handler writes through kubernetes_asyncio.
"""

from __future__ import annotations

from typing import Any

import kopf
import pytest
from fixtures.k8s import TEST_NAMESPACE, eventually, kopf_running
from fixtures.k8s_emulator import K8sEmulator
from kubernetes_asyncio import client, config

from .test_k8s_emulator import KEX_CRD

pytestmark = pytest.mark.slow


def register_kex_operator(registry: kopf.OperatorRegistry) -> None:
    @kopf.on.create("example.test", "v1", "kexes", registry=registry)
    @kopf.on.update("example.test", "v1", "kexes", registry=registry)
    async def reconcile(
        spec: kopf.Spec, name: str, namespace: str, body: kopf.Body, **_: Any
    ) -> None:
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": f"{name}-worker", "labels": {"kex": name}},
            "spec": {
                "replicas": spec.get("replicas", 1),
                "selector": {"matchLabels": {"kex": name}},
                "template": {
                    "metadata": {"labels": {"kex": name}},
                    "spec": {"containers": [{"name": "worker", "image": spec["image"]}]},
                },
            },
        }
        kopf.adopt(deployment, owner=body)
        await config.load_kube_config()
        async with client.ApiClient() as api:
            apps = client.AppsV1Api(api)
            try:
                await apps.read_namespaced_deployment(f"{name}-worker", namespace)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
                await apps.create_namespaced_deployment(namespace, deployment)
            else:
                await apps.patch_namespaced_deployment(
                    f"{name}-worker",
                    namespace,
                    deployment,
                    _content_type="application/merge-patch+json",
                )


async def test_kopf_creates_and_updates_a_deployment(
    k8s: K8sEmulator, k8s_kubeconfig: Any, kopf_registry: kopf.OperatorRegistry
) -> None:
    k8s.load_crd(KEX_CRD)
    register_kex_operator(kopf_registry)
    kexes = f"/apis/example.test/v1/namespaces/{TEST_NAMESPACE}/kexes"

    def worker() -> dict[str, Any] | None:
        return k8s.get_object("apps/v1/deployments", TEST_NAMESPACE, "k1-worker")

    async with kopf_running(kopf_registry) as runner:
        kex = {
            "apiVersion": "example.test/v1",
            "kind": "Kex",
            "metadata": {"name": "k1"},
            "spec": {"replicas": 2, "image": "img:1"},
        }
        async with k8s.post(kexes, json=kex) as resp:
            assert resp.status == 200
        created = await eventually(worker, message="Deployment created")
        assert created["spec"]["replicas"] == 2
        owner = created["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "Kex" and owner["name"] == "k1"
        assert (
            owner["uid"]
            == k8s.get_object("example.test/v1/kexes", TEST_NAMESPACE, "k1")["metadata"]["uid"]
        )

        async with k8s.patch(
            f"{kexes}/k1",
            json={"spec": {"image": "img:2"}},
            headers={"Content-Type": "application/merge-patch+json"},
        ) as resp:
            assert resp.status == 200
        await eventually(
            lambda: (
                (worker() or {})
                .get("spec", {})
                .get("template", {})
                .get("spec", {})
                .get("containers", [{}])[0]
                .get("image")
                == "img:2"
            ),
            message="Deployment follows the spec change",
        )
        async with k8s.delete(f"{kexes}/k1") as resp:
            assert resp.status == 200
        await eventually(lambda: worker() is None, message="owned Deployment collected")
    assert runner.exit_code == 0, runner.output
