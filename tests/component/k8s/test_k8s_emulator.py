"""The Kubernetes API emulator (tests/fixtures/k8s_emulator.py) behaves as kopf and kubectl need.

Every request goes over real HTTP on loopback to the KMock-based emulator.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import kmock
from fixtures.k8s import TEST_NAMESPACE
from fixtures.k8s_emulator import K8sEmulator

NS = TEST_NAMESPACE
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NS}/deployments"

KEX_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "kexes.example.test"},
    "spec": {
        "group": "example.test",
        "scope": "Namespaced",
        "names": {"plural": "kexes", "singular": "kex", "kind": "Kex", "shortNames": ["kx"]},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object"}},
                "subresources": {
                    "status": {},
                    "scale": {
                        "specReplicasPath": ".spec.replicas",
                        "statusReplicasPath": ".status.replicas",
                    },
                },
            }
        ],
    },
}


def deployment(name: str, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, **meta},
        "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c"}]}}},
    }


async def call(k8s: K8sEmulator, method: str, url: str, body: Any = None, **kw: Any) -> Any:
    headers = kw.pop("headers", {})
    data = None if body is None else json.dumps(body)
    if data is not None:
        headers.setdefault("Content-Type", "application/json")
    async with k8s.request(method, url, data=data, headers=headers, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_create_stamps_metadata_and_lists_have_kind(k8s: K8sEmulator) -> None:
    status, created = await call(k8s, "POST", DEPLOYMENTS, deployment("a"))
    assert status == 200
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    assert int(meta["resourceVersion"]) > 0 and meta["namespace"] == NS
    status, listing = await call(k8s, "GET", DEPLOYMENTS)
    assert listing["kind"] == "DeploymentList" and listing["apiVersion"] == "apps/v1"
    assert listing["metadata"]["resourceVersion"] == meta["resourceVersion"]
    assert [item["metadata"]["name"] for item in listing["items"]] == ["a"]
    status, _ = await call(k8s, "POST", DEPLOYMENTS, deployment("a"))
    assert status == 409


async def test_generation_and_resource_version_follow_changes(k8s: K8sEmulator) -> None:
    _, created = await call(k8s, "POST", DEPLOYMENTS, deployment("a"))
    merge = {"Content-Type": "application/merge-patch+json"}
    _, patched = await call(
        k8s, "PATCH", f"{DEPLOYMENTS}/a", {"spec": {"replicas": 3}}, headers=merge
    )
    assert patched["metadata"]["generation"] == 2
    assert int(patched["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    _, labelled = await call(
        k8s, "PATCH", f"{DEPLOYMENTS}/a", {"metadata": {"labels": {"x": "y"}}}, headers=merge
    )
    assert labelled["metadata"]["generation"] == 2  # metadata changes keep the generation
    _, same = await call(k8s, "PATCH", f"{DEPLOYMENTS}/a", {"spec": {"replicas": 3}}, headers=merge)
    assert same["metadata"]["resourceVersion"] == labelled["metadata"]["resourceVersion"]
    # Main-resource writes cannot change status; /status writes change only status.
    _, ignored = await call(
        k8s, "PATCH", f"{DEPLOYMENTS}/a", {"status": {"replicas": 9}}, headers=merge
    )
    assert "status" not in ignored
    _, with_status = await call(
        k8s,
        "PATCH",
        f"{DEPLOYMENTS}/a/status",
        {"status": {"replicas": 2}, "spec": {"replicas": 7}},
        headers=merge,
    )
    assert with_status["status"] == {"replicas": 2} and with_status["spec"]["replicas"] == 3


async def test_json_patch_test_op_mismatch_is_422(k8s: K8sEmulator) -> None:
    _, created = await call(k8s, "POST", DEPLOYMENTS, deployment("a"))
    rv = created["metadata"]["resourceVersion"]
    jp = {"Content-Type": "application/json-patch+json"}
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "not-" + rv},
        {"op": "replace", "path": "/spec/replicas", "value": 5},
    ]
    status, error = await call(k8s, "PATCH", f"{DEPLOYMENTS}/a", ops, headers=jp)
    assert status == 422 and error["kind"] == "Status"
    assert k8s.get_object("apps/v1/deployments", NS, "a")["spec"]["replicas"] == 1
    ops[0]["value"] = rv
    status, patched = await call(k8s, "PATCH", f"{DEPLOYMENTS}/a", ops, headers=jp)
    assert status == 200 and patched["spec"]["replicas"] == 5


async def test_watch_resumes_from_resource_version(k8s: K8sEmulator) -> None:
    _, first = await call(k8s, "POST", DEPLOYMENTS, deployment("a"))
    await call(k8s, "POST", DEPLOYMENTS, deployment("b"))
    await call(k8s, "DELETE", f"{DEPLOYMENTS}/a")
    params = {
        "watch": "true",
        "resourceVersion": first["metadata"]["resourceVersion"],
        "timeoutSeconds": "1",
    }
    async with k8s.get(DEPLOYMENTS, params=params) as resp:
        lines = [json.loads(line) for line in (await resp.read()).splitlines() if line.strip()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in lines] == [
        ("ADDED", "b"),
        ("DELETED", "a"),
    ]


async def test_watch_streams_changes_made_after_it_started(k8s: K8sEmulator) -> None:
    params = {"watch": "true", "timeoutSeconds": "5"}
    async with k8s.get(DEPLOYMENTS, params=params) as resp:
        await call(k8s, "POST", DEPLOYMENTS, deployment("late"))
        line = await asyncio.wait_for(resp.content.readline(), timeout=5)
    event = json.loads(line)
    assert event["type"] == "ADDED" and event["object"]["metadata"]["name"] == "late"


async def test_namespaces_are_served(k8s: K8sEmulator) -> None:
    status, listing = await call(k8s, "GET", "/api/v1/namespaces")
    assert status == 200 and listing["kind"] == "NamespaceList"
    assert {"default", NS} <= {ns["metadata"]["name"] for ns in listing["items"]}
    status, ns = await call(k8s, "GET", f"/api/v1/namespaces/{NS}")
    assert status == 200 and ns["kind"] == "Namespace" and ns["metadata"]["name"] == NS


async def test_crd_drives_discovery_and_scale(k8s: K8sEmulator) -> None:
    status, _ = await call(
        k8s, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", KEX_CRD
    )
    assert status == 200
    _, groups = await call(k8s, "GET", "/apis")
    assert "example.test" in {g["name"] for g in groups["groups"]}
    _, resources = await call(k8s, "GET", "/apis/example.test/v1")
    by_name = {r["name"]: r for r in resources["resources"]}
    assert by_name["kexes"]["kind"] == "Kex" and by_name["kexes"]["shortNames"] == ["kx"]
    assert by_name["kexes"]["namespaced"] is True
    assert {"kexes/status", "kexes/scale"} <= set(by_name)
    kexes = f"/apis/example.test/v1/namespaces/{NS}/kexes"
    await call(
        k8s,
        "POST",
        kexes,
        {
            "apiVersion": "example.test/v1",
            "kind": "Kex",
            "metadata": {"name": "k"},
            "spec": {"replicas": 1},
        },
    )
    merge = {"Content-Type": "application/merge-patch+json"}
    status, scale = await call(
        k8s, "PATCH", f"{kexes}/k/scale", {"spec": {"replicas": 4}}, headers=merge
    )
    assert status == 200 and scale["kind"] == "Scale" and scale["spec"]["replicas"] == 4
    assert k8s.get_object("example.test/v1/kexes", NS, "k")["spec"]["replicas"] == 4


async def test_delete_collects_owned_objects_and_honours_finalizers(k8s: K8sEmulator) -> None:
    _, owner = await call(k8s, "POST", DEPLOYMENTS, deployment("owner", finalizers=["x/y"]))
    ref = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
        "controller": True,
    }
    await call(k8s, "POST", DEPLOYMENTS, deployment("child", ownerReferences=[ref]))
    await call(k8s, "POST", DEPLOYMENTS, deployment("bystander"))
    status, marked = await call(k8s, "DELETE", f"{DEPLOYMENTS}/owner")
    assert status == 200 and marked["metadata"]["deletionTimestamp"]
    assert k8s.get_object("apps/v1/deployments", NS, "child") is not None  # finalizer holds it
    await call(
        k8s,
        "PATCH",
        f"{DEPLOYMENTS}/owner",
        {"metadata": {"finalizers": None}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert k8s.get_object("apps/v1/deployments", NS, "owner") is None
    assert k8s.get_object("apps/v1/deployments", NS, "child") is None
    assert k8s.get_object("apps/v1/deployments", NS, "bystander") is not None
    status, _ = await call(k8s, "GET", f"{DEPLOYMENTS}/child")
    assert status == 404


async def test_namespaces_can_be_watched(k8s: K8sEmulator) -> None:
    params = {"watch": "true", "timeoutSeconds": "1"}
    async with k8s.get("/api/v1/namespaces", params=params) as resp:
        lines = [json.loads(line) for line in (await resp.read()).splitlines() if line.strip()]
    assert {e["type"] for e in lines} == {"ADDED"}
    assert NS in {e["object"]["metadata"]["name"] for e in lines}


async def test_core_discovery_names_group_version_v1(k8s: K8sEmulator) -> None:
    status, core = await call(k8s, "GET", "/api/v1")
    assert status == 200 and core["groupVersion"] == "v1"
    by_name = {r["name"]: r for r in core["resources"]}
    assert by_name["namespaces"]["namespaced"] is False
    assert by_name["services"]["kind"] == "Service"


async def test_kmock_reactions_inject_faults_before_the_store(k8s: K8sEmulator) -> None:
    k8s["post", kmock.resource("apps", "v1", "deployments")][:1] << 503
    status, _ = await call(k8s, "POST", DEPLOYMENTS, deployment("a"))
    assert status == 503 and k8s.get_object("apps/v1/deployments", NS, "a") is None
    status, _ = await call(k8s, "POST", DEPLOYMENTS, deployment("a"))  # the reaction is used up
    assert status == 200 and k8s.get_object("apps/v1/deployments", NS, "a") is not None
