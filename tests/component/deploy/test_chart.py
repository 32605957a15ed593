"""The Helm chart, checked with the real helm binary and offline Kubernetes schemas.

Renders default values and ``charts/loraplex/ci/all-on-values.yaml`` (every option on), lints
strictly, validates every object (built-in kinds with kubernetes-validate --strict, custom
kinds with jsonschema — see fixtures/deploy_checks.py), and asserts the security and wiring
properties the chart promises.
"""

from __future__ import annotations

import base64
import subprocess
from typing import Any

import pytest
from fixtures.deploy_checks import (
    ALL_ON_VALUES,
    CHART,
    HelmError,
    Manifest,
    by_kind,
    helm_template,
    load_all,
    one,
    pod_specs,
    validate_object,
)


def operator_built_worker() -> tuple[Manifest, Manifest]:
    """A worker Deployment and Service exactly as the operator builds them for a pool: the
    chart can only select worker pods by the labels the operator puts on them."""
    from loraplex.operator import resources

    body = {
        "metadata": {"name": "sdxl-base", "namespace": "lp", "uid": "0000"},
        "spec": {"baseModel": "stabilityai/stable-diffusion-xl-base-1.0"},
    }
    pool = resources.parse_pool(body, default_image="worker:test")
    return resources.build_deployment(pool, replicas=1), resources.build_service(pool)


OPERATOR_RULES = {
    ("loraplex.dev", "basemodelpools"): {"get", "list", "watch", "patch"},
    ("loraplex.dev", "basemodelpools/status"): {"patch"},
    ("apps", "deployments"): {"get", "create", "patch"},
    ("", "services"): {"get", "create", "patch"},
    ("discovery.k8s.io", "endpointslices"): {"list"},
    ("", "pods"): {"list"},  # the pool's worker Pods: why they fail (operator/health.py)
    ("", "events"): {"create"},
}
ROUTER_RULES = {
    ("loraplex.dev", "basemodelpools"): {"list", "watch"},
    ("discovery.k8s.io", "endpointslices"): {"list", "watch"},
}


def rules_of(role: Manifest) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("values", [[], ["-f", str(ALL_ON_VALUES)]], ids=["default", "all-on"])
def test_helm_lint_strict(helm_bin, values: list[str]) -> None:
    result = subprocess.run(
        [str(helm_bin), "lint", "--strict", str(CHART), *values],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_every_rendered_object_validates(rendered: list[Manifest]) -> None:
    methods = {f"{d['kind']}/{d['metadata']['name']}": validate_object(d) for d in rendered}
    assert len(methods) == len(rendered), "two objects share a kind and name"
    assert "CustomResourceDefinition/basemodelpools.loraplex.dev" in methods


def test_all_on_renders_every_optional_object(rendered_all_on: list[Manifest]) -> None:
    kinds = {d["kind"] for d in rendered_all_on}
    for kind in [
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "ConfigMap",
        "PersistentVolumeClaim",
        "BaseModelPool",
        "ClusterKopfPeering",
        "ClusterRole",
    ]:
        assert kind in kinds, f"all-on values did not render a {kind}"


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("podSecurityContext.runAsNonRoot=false", "runAsNonRoot"),
        ("containerSecurityContext.allowPrivilegeEscalation=true", "allowPrivilegeEscalation"),
        ("operator.replicas=2", "replicas"),
        ("router.port=70000", "port"),
        ("router.resources=null", "resources"),
        ("ingress.path=nope", "path"),
        ("operator.typo=1", "typo"),
        ("router.playground=maybe", "playground"),
    ],
)
def test_values_schema_rejects_bad_values(helm_bin, flag: str, message: str) -> None:
    with pytest.raises(HelmError, match=message):
        helm_template(helm_bin, "--set", flag)


def test_every_container_is_locked_down(rendered: list[Manifest]) -> None:
    workloads = dict(pod_specs(rendered))
    assert set(workloads) == {"Deployment/lp-loraplex-operator", "Deployment/lp-loraplex-router"}
    for name, pod in workloads.items():
        pod_ctx = pod["securityContext"]
        assert pod_ctx["runAsNonRoot"] is True and pod_ctx["runAsUser"] != 0, name
        assert pod_ctx["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod.get("initContainers", []) + pod["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["readOnlyRootFilesystem"] is True, name
            assert ctx["capabilities"]["drop"] == ["ALL"] and "add" not in ctx["capabilities"]
            res = container["resources"]
            assert res["requests"]["cpu"] and res["requests"]["memory"], name
            assert res["limits"]["memory"], name
            # The read-only root needs writable emptyDirs for every path the process writes.
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, name
            env = {e["name"]: e.get("value") for e in container["env"]}
            if "HF_HOME" in env:
                assert env["HF_HOME"] in mounts, name
        assert all("emptyDir" in v for v in pod["volumes"]), name


def test_default_pools_request_gpus_on_gpu_nodes(rendered_all_on: list[Manifest]) -> None:
    (pool,) = by_kind(rendered_all_on, "BaseModelPool")
    worker = pool["spec"]["worker"]
    assert pool["spec"]["baseModel"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["nodeSelector"] and worker["tolerations"]
    assert worker["image"].startswith("ghcr.io/loraplex/loraplex-worker:")
    assert worker["hfTokenSecret"] == {"name": "hf-token", "key": "token"}
    claim = one(rendered_all_on, "PersistentVolumeClaim", "lp-loraplex-model-cache")
    assert worker["cacheVolume"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_ingress_routes_to_the_router_service_and_pods(rendered: list[Manifest]) -> None:
    (ingress,) = by_kind(rendered, "Ingress")
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    service = one(rendered, "Service", backend["name"])
    port = next(p for p in service["spec"]["ports"] if p["name"] == backend["port"]["name"])
    deployment = one(rendered, "Deployment", "lp-loraplex-router")
    pod = deployment["spec"]["template"]
    assert selects(service["spec"]["selector"], pod["metadata"]["labels"])
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "router"
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["router"]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}
    assert path["path"] == "/" and path["pathType"] == "Prefix"


def test_ingress_options_from_values(rendered_all_on: list[Manifest]) -> None:
    (ingress,) = by_kind(rendered_all_on, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["rules"][0]["host"] == "images.example.com"
    assert ingress["spec"]["tls"] == [
        {"secretName": "loraplex-tls", "hosts": ["images.example.com"]}
    ]
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt"


@pytest.mark.parametrize(
    ("values", "role_kind"),
    [([], "Role"), (["-f", str(ALL_ON_VALUES)], "ClusterRole")],
    ids=["namespaced", "cluster-wide"],
)
def test_rbac_grants_exactly_what_is_needed(helm_bin, values: list[str], role_kind: str) -> None:
    docs = load_all(helm_template(helm_bin, *values))
    assert not by_kind(docs, "ClusterRole" if role_kind == "Role" else "Role")
    peering = {("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"}}
    expected_operator = OPERATOR_RULES | (peering if values else {})
    operator_role = one(docs, role_kind, "lp-loraplex-operator")
    assert rules_of(operator_role) == expected_operator
    assert rules_of(one(docs, role_kind, "lp-loraplex-router")) == ROUTER_RULES
    for component in ("operator", "router"):
        binding = one(docs, f"{role_kind}Binding", f"lp-loraplex-{component}")
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role_kind,
            "name": f"lp-loraplex-{component}",
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": f"lp-loraplex-{component}", "namespace": "lp"}
        ]
        deployment = one(docs, "Deployment", f"lp-loraplex-{component}")
        assert (
            deployment["spec"]["template"]["spec"]["serviceAccountName"]
            == binding["subjects"][0]["name"]
        )


def test_network_policies_select_workers_router_and_operator(rendered: list[Manifest]) -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(rendered, "NetworkPolicy")}
    router_pod = one(rendered, "Deployment", "lp-loraplex-router")["spec"]["template"]
    operator_pod = one(rendered, "Deployment", "lp-loraplex-operator")["spec"]["template"]
    router_labels = router_pod["metadata"]["labels"]

    worker = policies["lp-loraplex-worker"]
    worker_deployment, _ = operator_built_worker()
    worker_pod = worker_deployment["spec"]["template"]
    assert selects(worker["podSelector"]["matchLabels"], worker_pod["metadata"]["labels"])
    assert not selects(worker["podSelector"]["matchLabels"], router_labels)
    assert not selects(worker["podSelector"]["matchLabels"], operator_pod["metadata"]["labels"])
    (worker_container,) = worker_pod["spec"]["containers"]
    worker_port = worker_container["ports"][0]["containerPort"]
    first = worker["ingress"][0]
    (peer,) = first["from"]
    assert set(peer) == {"podSelector"}, "workers must accept only pods, not namespaces"
    assert selects(peer["podSelector"]["matchLabels"], router_labels)
    assert not selects(peer["podSelector"]["matchLabels"], operator_pod["metadata"]["labels"])
    assert first["ports"] == [{"port": worker_port, "protocol": "TCP"}]

    router = policies["lp-loraplex-router"]
    assert selects(router["podSelector"]["matchLabels"], router_labels)
    (rule,) = router["ingress"]
    namespaces = [
        p["namespaceSelector"]["matchLabels"] for p in rule["from"] if "namespaceSelector" in p
    ]
    assert {"kubernetes.io/metadata.name": "ingress-nginx"} in namespaces
    pods = [p["podSelector"]["matchLabels"] for p in rule["from"] if "podSelector" in p]
    assert any(selects(p, operator_pod["metadata"]["labels"]) for p in pods)

    operator = policies["lp-loraplex-operator"]
    assert selects(operator["podSelector"]["matchLabels"], operator_pod["metadata"]["labels"])


def test_router_accepts_everyone_when_the_ingress_is_off(helm_bin) -> None:
    docs = load_all(helm_template(helm_bin, "--set", "ingress.enabled=false"))
    assert not by_kind(docs, "Ingress")
    router = one(docs, "NetworkPolicy", "lp-loraplex-router")
    assert router["spec"]["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]


def test_operator_finds_the_router_service_it_is_told(rendered: list[Manifest]) -> None:
    pod = one(rendered, "Deployment", "lp-loraplex-operator")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    service = one(rendered, "Service", env["LORAPLEX_OPERATOR_ROUTER_SERVICE"])
    assert service["metadata"]["labels"]["app.kubernetes.io/component"] == "router"
    assert env["LORAPLEX_OPERATOR_ROUTER_NAMESPACE"] == service["metadata"]["namespace"]
    assert container["args"][0] == "operator"
    assert one(rendered, "Deployment", "lp-loraplex-operator")["spec"]["strategy"] == {
        "type": "Recreate"
    }


def test_service_monitors_scrape_named_ports(rendered_all_on: list[Manifest]) -> None:
    monitors = {
        m["metadata"]["name"]: m["spec"] for m in by_kind(rendered_all_on, "ServiceMonitor")
    }
    assert set(monitors) == {"lp-loraplex-router", "lp-loraplex-operator", "lp-loraplex-worker"}
    for component in ("router", "operator"):
        service = one(rendered_all_on, "Service", f"lp-loraplex-{component}")
        spec = monitors[f"lp-loraplex-{component}"]
        assert selects(spec["selector"]["matchLabels"], service["metadata"]["labels"])
        assert spec["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert monitors[f"lp-loraplex-{component}"]["endpoints"][0]["interval"] == "15s"
    _, worker_service = operator_built_worker()
    worker_monitor = monitors["lp-loraplex-worker"]
    assert selects(worker_monitor["selector"]["matchLabels"], worker_service["metadata"]["labels"])
    assert worker_monitor["endpoints"][0]["port"] in {
        p["name"] for p in worker_service["spec"]["ports"]
    }


def defined_metric_names() -> set[str]:
    """Metric names the components define (their metrics modules, PREFIX constants expanded,
    and the router-operator contract's names in loraplex/shared/metric_names.py)."""
    import re

    from fixtures.deploy_checks import REPO

    names = set()
    sources = [REPO / folder / "metrics.py" for folder in ("router", "worker", "operator")]
    for path in [*sources, REPO / "loraplex" / "shared" / "metric_names.py"]:
        source = path.read_text()
        prefix = re.search(r'^PREFIX = "([a-z_]+)"', source, re.MULTILINE)
        if prefix:
            source = source.replace('f"{PREFIX}', f'"{prefix[1]}')
        names |= set(re.findall(r'"(loraplex_[a-z_]+)"', source))
    return names


def test_dashboard_plots_metrics_the_components_export(rendered_all_on: list[Manifest]) -> None:
    import json
    import re

    config_map = one(rendered_all_on, "ConfigMap", "lp-loraplex-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["loraplex.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    series = re.findall(r"\bloraplex_\w+", exprs)
    used = {re.sub(r"_(bucket|total|count|sum)$", "", name) for name in series}
    defined = defined_metric_names()
    assert used <= defined, f"dashboard queries metrics nobody exports: {used - defined}"
    for metric in [
        "loraplex_router_requests",  # requests per base model
        "loraplex_router_pending",  # pending per base model
        "loraplex_worker_adapter_switch_seconds",  # switch time by tier
        "loraplex_operator_desired_replicas",  # desired …
        "loraplex_router_replicas_ready",  # … vs ready
    ]:
        assert metric in used, f"dashboard misses {metric}"
    assert "by (tier, le)" in exprs and "by (base_model" in exprs


def test_notes_render_with_the_contract(helm_bin) -> None:
    result = subprocess.run(
        [str(helm_bin), "install", "lp", str(CHART), "--dry-run=client", "-n", "lp"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "kubectl get bmp -n lp -w" in notes
    assert "app.kubernetes.io/component=worker" in notes


def test_router_env_names_are_router_settings(rendered: list[Manifest]) -> None:
    """Every LORAPLEX_ROUTER_* variable the chart sets is a RouterSettings field (pydantic-
    settings ignores unknown variables, so a typo would silently do nothing)."""
    from loraplex.router.settings import RouterSettings

    pod = one(rendered, "Deployment", "lp-loraplex-router")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    prefix = RouterSettings.model_config["env_prefix"]
    names = {n.removeprefix(prefix).lower() for n in env if n.startswith(prefix)}
    assert names and names <= RouterSettings.model_fields.keys()
    settings = RouterSettings(**{n: env[prefix + n.upper()] for n in names})
    assert settings.pool_source == "kubernetes"
    assert settings.port == container["ports"][0]["containerPort"]


@pytest.mark.parametrize("on", [True, False])
def test_router_playground_value_sets_the_setting(helm_bin, on: bool) -> None:
    from loraplex.router.settings import RouterSettings

    docs = load_all(helm_template(helm_bin, "--set", f"router.playground={str(on).lower()}"))
    pod = one(docs, "Deployment", "lp-loraplex-router")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert RouterSettings(playground=env["LORAPLEX_ROUTER_PLAYGROUND"]).playground is on


def test_operator_env_names_are_operator_settings(rendered: list[Manifest]) -> None:
    """Every LORAPLEX_OPERATOR_* variable the chart sets is an OperatorSettings field."""
    from loraplex.operator.settings import OperatorSettings

    pod = one(rendered, "Deployment", "lp-loraplex-operator")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    prefix = OperatorSettings.model_config["env_prefix"]
    names = {n.removeprefix(prefix).lower() for n in env if n.startswith(prefix)}
    assert names and names <= OperatorSettings.model_fields.keys()
    settings = OperatorSettings(**{n: env[prefix + n.upper()] for n in names})
    assert settings.metrics_port == container["ports"][0]["containerPort"]
    assert settings.router_service == "lp-loraplex-router"
    assert not settings.cluster_scanning, "RBAC grants no CRD or namespace listing"
    peering_on = any(d["kind"].endswith("KopfPeering") for d in rendered)
    assert bool(settings.peering) == peering_on


def test_operator_built_worker_pods_are_non_root() -> None:
    """Worker pods are not rendered by the chart but by the operator: same baseline."""
    deployment, _ = operator_built_worker()
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"].get("runAsUser", 1) != 0
    assert pod["automountServiceAccountToken"] is False, "workers never call the API"
    (container,) = pod["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_operator_built_worker_pods_match_the_chart_hardening(rendered_default) -> None:
    deployment, _ = operator_built_worker()
    pod = deployment["spec"]["template"]["spec"]
    chart_pod = one(rendered_default, "Deployment", "lp-loraplex-router")["spec"]["template"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsUser"] == chart_pod["spec"]["securityContext"]["runAsUser"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts


# --- the closed worker API: the worker secret, two worker ports -------------------------------


def container_env(docs: list[Manifest], deployment: str) -> dict[str, Any]:
    pod = one(docs, "Deployment", deployment)["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def operator_built_worker_for(docs: list[Manifest]) -> tuple[Manifest, Manifest]:
    """A worker Deployment and Service as the chart-configured operator builds them: its
    settings read from the rendered operator env, its parse_pool the handlers' own."""
    from loraplex.operator import resources
    from loraplex.operator.handlers import parse_pool
    from loraplex.operator.settings import OperatorSettings

    env = container_env(docs, "lp-loraplex-operator")
    prefix = OperatorSettings.model_config["env_prefix"]
    values = {n.removeprefix(prefix).lower(): v for n, v in env.items() if n.startswith(prefix)}
    pool = parse_pool(
        {
            "metadata": {"name": "sdxl-base", "namespace": "lp", "uid": "0000"},
            "spec": {"baseModel": "stabilityai/stable-diffusion-xl-base-1.0"},
        },
        OperatorSettings(**values),
    )
    return resources.build_deployment(pool, replicas=1), resources.build_service(pool)


@pytest.mark.parametrize(
    ("values", "secret_name", "key", "created"),
    [
        ([], "lp-loraplex-worker-secret", "worker-secret", True),
        (["-f", str(ALL_ON_VALUES)], "loraplex-worker-secret", "secret", False),
    ],
    ids=["chart-made", "existing"],
)
def test_router_and_workers_get_the_same_worker_secret(
    helm_bin, values: list[str], secret_name: str, key: str, created: bool
) -> None:
    docs = load_all(helm_template(helm_bin, *values))
    secrets = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
    assert (secret_name in secrets) is created
    if created:
        value = base64.b64decode(secrets[secret_name]["data"][key]).decode()
        assert len(value) >= 32 and value.isalnum()
    ref = {"secretKeyRef": {"name": secret_name, "key": key}}
    assert container_env(docs, "lp-loraplex-router")["LORAPLEX_ROUTER_WORKER_SECRET"] == ref
    worker, _ = operator_built_worker_for(docs)
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    worker_env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert worker_env["LORAPLEX_WORKER_SECRET"] == ref  # not optional: no open worker
    assert "LORAPLEX_OPERATOR_WORKER_SECRET" not in container_env(docs, "lp-loraplex-operator")


def test_each_render_keeps_the_secret_out_of_values_and_logs(helm_bin) -> None:
    """Two renders without a cluster make two random values (helm upgrade reuses the live one
    through lookup); the value never appears in a ConfigMap, an env value or the notes."""
    first, second = (load_all(helm_template(helm_bin)) for _ in range(2))
    key = "worker-secret"
    values = [one(d, "Secret", "lp-loraplex-worker-secret")["data"][key] for d in (first, second)]
    assert values[0] != values[1]
    plain = base64.b64decode(values[0]).decode()
    others = [d for d in first if d["kind"] != "Secret"]
    assert plain not in str(others) and values[0] not in str(others)


def test_worker_network_policy_opens_generation_to_routers_only(
    rendered_all_on: list[Manifest],
) -> None:
    """With a metrics namespace allowed to scrape, workers still admit only router pods on
    their API port; the metrics namespace gets the metrics port, nothing else."""
    docs = rendered_all_on
    policy = one(docs, "NetworkPolicy", "lp-loraplex-worker")["spec"]
    router_labels = one(docs, "Deployment", "lp-loraplex-router")["spec"]["template"]["metadata"][
        "labels"
    ]
    worker, service = operator_built_worker_for(docs)
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(ports) == {"http", "metrics"} and ports["http"] != ports["metrics"]
    by_port: dict[int, list[dict[str, Any]]] = {}
    for rule in policy["ingress"]:
        for port in rule["ports"]:
            by_port.setdefault(port["port"], []).extend(rule["from"])
    assert set(by_port) == {ports["http"], ports["metrics"]}
    (api_peer,) = by_port[ports["http"]]
    assert set(api_peer) == {"podSelector"}, "the API port must admit pods, not namespaces"
    assert selects(api_peer["podSelector"]["matchLabels"], router_labels)
    (metrics_peer,) = by_port[ports["metrics"]]
    assert metrics_peer == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    # Probes and the ServiceMonitor use the metrics port; the router's EndpointSlice port
    # ("http") is the API.
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics"
    monitor = one(docs, "ServiceMonitor", "lp-loraplex-worker")["spec"]
    (endpoint,) = monitor["endpoints"]
    service_port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
    assert service_port["targetPort"] == "metrics"


def test_worker_network_policy_without_a_metrics_namespace(rendered_default) -> None:
    (rule,) = one(rendered_default, "NetworkPolicy", "lp-loraplex-worker")["spec"]["ingress"]
    assert rule["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert [set(peer) for peer in rule["from"]] == [{"podSelector"}]
