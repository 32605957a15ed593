"""Pure builders: BaseModelPool → worker Deployment and Service, validation, drift."""

from __future__ import annotations

import datetime
import pathlib
from typing import Any

import kubernetes_validate
import pytest
import yaml
from loraplex.operator import resources as res

REPO = pathlib.Path(__file__).resolve().parents[3]
CRD = REPO / "deploy" / "crds" / "loraplex.dev_basemodelpools.yaml"


def body(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "sdxl", "namespace": "ml", "uid": "u-1"},
        "spec": {"baseModel": "stabilityai/stable-diffusion-xl-base-1.0", **spec},
    }


def test_deployment_carries_worker_settings_owner_and_probes() -> None:
    pool = res.parse_pool(
        body(
            revision="v1.0",
            worker={
                "dtype": "float16",
                "adapterSlots": 8,
                "residentCacheSize": "2Gi",
                "hostCacheSize": 1000,
                "nodeSelector": {"gpu": "a10"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                "resources": {"limits": {"nvidia.com/gpu": 1}},
                "cacheVolume": {"persistentVolumeClaim": {"claimName": "models"}},
                "terminationGracePeriodSeconds": 300,
            },
        ),
        default_image="img:default",
    )
    dep = res.build_deployment(pool, replicas=2)
    assert dep["metadata"]["name"] == "sdxl-worker" and dep["metadata"]["namespace"] == "ml"
    assert dep["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "loraplex.dev/v1alpha1",
            "kind": "BaseModelPool",
            "name": "sdxl",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {
        "LORAPLEX_WORKER_BASE_MODEL": "stabilityai/stable-diffusion-xl-base-1.0",
        "LORAPLEX_WORKER_BASE_REVISION": "v1.0",
        "LORAPLEX_WORKER_HOST": "0.0.0.0",
        "LORAPLEX_WORKER_PORT": "8000",
        "LORAPLEX_WORKER_METRICS_PORT": "9100",
        "LORAPLEX_WORKER_DTYPE": "float16",
        "LORAPLEX_WORKER_MAX_ADAPTER_SLOTS": "8",
        "LORAPLEX_WORKER_RESIDENT_CACHE_BYTES": str(2 * 2**30),
        "LORAPLEX_WORKER_HOST_CACHE_BYTES": "1000",
        "LORAPLEX_WORKER_SHUTDOWN_GRACE_SECONDS": "290",
        "HF_HOME": "/models/hf",
        "HOME": "/tmp",
    }
    assert container["image"] == "img:default"
    # Probes on the metrics port: no secret there, and the API port admits only routers.
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["ports"] == [
        {"name": "http", "containerPort": 8000, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9100, "protocol": "TCP"},
    ]
    assert container["securityContext"]["runAsNonRoot"] is True
    assert pod["terminationGracePeriodSeconds"] == 300
    assert pod["nodeSelector"] == {"gpu": "a10"} and pod["tolerations"][0]["operator"] == "Exists"
    assert pod["volumes"][0] == {
        "name": "model-cache",
        "persistentVolumeClaim": {"claimName": "models"},
    }
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_worker_secret_comes_from_the_named_secret_and_is_not_optional() -> None:
    ref = res.SecretKeyRef("lp-worker-secret", "worker-secret")
    pool = res.parse_pool(body(), "img:1", worker_secret=ref)
    (container,) = res.build_deployment(pool, 1)["spec"]["template"]["spec"]["containers"]
    (entry,) = [e for e in container["env"] if e["name"] == "LORAPLEX_WORKER_SECRET"]
    assert entry == {
        "name": "LORAPLEX_WORKER_SECRET",
        "valueFrom": {"secretKeyRef": {"name": "lp-worker-secret", "key": "worker-secret"}},
    }
    assert "value" not in entry, "the secret's value never passes through the operator"
    bare = res.build_deployment(res.parse_pool(body(), "img:1"), 1)
    (plain,) = bare["spec"]["template"]["spec"]["containers"]
    assert "LORAPLEX_WORKER_SECRET" not in {e["name"] for e in plain["env"]}


def test_built_objects_are_valid_kubernetes() -> None:
    ref = res.SecretKeyRef("lp-worker-secret", "worker-secret")
    pool = res.parse_pool(
        body(worker={"hfTokenSecret": {"name": "hf"}}), "img:1", worker_secret=ref
    )
    for obj in (res.build_deployment(pool, 1), res.build_service(pool)):
        kubernetes_validate.validate(obj, "1.30", strict=True)


def test_service_is_headless_and_selects_the_workers() -> None:
    pool = res.parse_pool(body(), "img:1")
    svc = res.build_service(pool)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == res.selector_labels(pool)
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"},
        {"name": "metrics", "port": 9100, "targetPort": "metrics", "protocol": "TCP"},
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"baseModel": "https://evil.example/x"}, "baseModel"),
        ({"baseModel": ""}, "baseModel"),
        ({"revision": "../main"}, "revision"),
        ({"scaling": {"minReplicas": 4, "maxReplicas": 2}}, "minReplicas (4) exceeds"),
        ({"scaling": {"targetRequestsPerReplica": 0}}, "targetRequestsPerReplica"),
        ({"worker": {"dtype": "int4"}}, "spec.worker.dtype"),
        ({"worker": {"hostCacheSize": "lots"}}, "spec.worker.hostCacheSize"),
        ({"replicas": -1}, "spec.replicas"),
        ({"merge": "sometimes"}, "spec.merge"),
    ],
)
def test_invalid_pools_say_what_to_fix(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(res.InvalidPool) as info:
        res.parse_pool(body(**spec), "img:1")
    assert message in str(info.value)


def test_user_env_comes_last_and_hf_token_from_secret() -> None:
    pool = res.parse_pool(
        body(worker={"hfTokenSecret": {"name": "hf"}, "env": [{"name": "X", "value": "1"}]}),
        "img",
    )
    env = res.worker_env(pool)
    assert env[-1] == {"name": "X", "value": "1"}
    token = next(e for e in env if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token", "optional": True}


def test_spec_merge_reaches_the_worker_and_unset_leaves_its_default() -> None:
    names = {e["name"] for e in res.worker_env(res.parse_pool(body(), "img"))}
    assert "LORAPLEX_WORKER_MERGE" not in names
    for mode in res.MERGE_MODES:
        env = res.worker_env(res.parse_pool(body(merge=mode), "img"))
        assert {"name": "LORAPLEX_WORKER_MERGE", "value": mode} in env


def test_drifted_ignores_server_defaults_but_sees_changes() -> None:
    desired = {"spec": {"a": 1, "list": [{"name": "x", "v": "1"}]}}
    assert not res.drifted(
        desired, {"spec": {"a": "1", "b": 2, "list": [{"name": "x", "v": "1", "extra": 0}]}}
    )
    assert res.drifted(desired, {"spec": {"a": 2, "list": [{"name": "x", "v": "1"}]}})
    assert res.drifted(desired, {"spec": {"a": 1, "list": []}})
    assert res.drifted(desired, None)


def test_drifted_accepts_the_api_servers_rewrites() -> None:
    """The API server stores quantities in canonical form and drops empty env values."""
    desired = {
        "resources": {"limits": {"memory": "16384Mi", "cpu": "0.5", "nvidia.com/gpu": 1}},
        "volumes": [{"emptyDir": {"sizeLimit": "1024Mi"}}],
        "env": [{"name": "A", "value": ""}],
    }
    served = {
        "resources": {"limits": {"memory": "16Gi", "cpu": "500m", "nvidia.com/gpu": "1"}},
        "volumes": [{"emptyDir": {"sizeLimit": "1Gi"}}],
        "env": [{"name": "A"}],
    }
    assert not res.drifted(desired, served)
    served["resources"]["limits"]["memory"] = "8Gi"
    assert res.drifted(desired, served)


def test_fields_removed_from_the_pool_are_removed_from_the_deployment() -> None:
    """Absent optional pod fields are built as None: the merge patch deletes them, and a
    Deployment that still has them counts as drifted."""
    image = "img:1"
    worker = {"nodeSelector": {"gpu": "a10g"}, "tolerations": [{"key": "gpu"}]}
    live = res.build_deployment(res.parse_pool(body(worker=worker), image), 1)
    plain = res.build_deployment(res.parse_pool(body(), image), 1)
    assert plain["spec"]["template"]["spec"]["nodeSelector"] is None
    assert res.drifted(plain, live)
    assert not res.drifted(plain, res.build_deployment(res.parse_pool(body(), image), 1))


def test_condition_keeps_transition_time_until_status_changes() -> None:
    t0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    t1 = t0 + datetime.timedelta(minutes=5)
    first = res.condition(None, "Ready", False, "WarmingUp", "0/1", t0)
    same = res.condition(first, "Ready", False, "WarmingUp", "0/1", t1)
    flipped = res.condition(same, "Ready", True, "ReplicasReady", "1/1", t1)
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T00:05:00Z"
    assert flipped[0]["status"] == "True"


def test_crd_matches_what_the_operator_reads() -> None:
    """The CRD's schema declares every field parse_pool reads, and the defaults agree."""
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    scaling = spec["scaling"]["properties"]
    assert {
        "minReplicas",
        "maxReplicas",
        "targetRequestsPerReplica",
        "scaleUpStabilizationSeconds",
        "scaleDownStabilizationSeconds",
        "idleToZeroSeconds",
    } == set(scaling)
    defaults = res.parse_scaling({})
    assert scaling["minReplicas"]["default"] == defaults.min_replicas
    assert scaling["maxReplicas"]["default"] == defaults.max_replicas
    assert scaling["idleToZeroSeconds"]["default"] == defaults.idle_to_zero_s
    assert (
        scaling["scaleDownStabilizationSeconds"]["default"] == defaults.scale_down_stabilization_s
    )
    worker = spec["worker"]["properties"]
    assert {
        "image",
        "dtype",
        "adapterSlots",
        "residentCacheSize",
        "hostCacheSize",
        "hfTokenSecret",
        "cacheVolume",
        "resources",
        "nodeSelector",
        "tolerations",
        "env",
    } <= set(worker)
    assert set(worker["dtype"]["enum"]) == set(res.DTYPES)
    assert set(spec["merge"]["enum"]) == set(res.MERGE_MODES) and "default" not in spec["merge"]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert crd["spec"]["names"]["shortNames"] == ["bmp"]
