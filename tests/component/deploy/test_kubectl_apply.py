"""``kubectl apply`` of ``deploy/`` and the example pools, with the real kubectl binary.

The API server is the tests' emulator (tests/fixtures/k8s_emulator.py) on loopback: it stores
objects and serves discovery (the CRD's kinds, short name ``bmp`` and printer columns come from
``deploy/crds/``) but does not validate schemas, admit or run controllers — so kubectl runs with
``--validate=false``; schemas are checked by kubernetes-validate and jsonschema in the other
deploy tests. What this proves: kubectl parses every file, maps every kind in the order the
README gives, puts namespaced objects in the right namespace, and ``kubectl get bmp`` (the CRD's
short name) lists the example pools with their base models.
"""

from __future__ import annotations

from fixtures.deploy_checks import DEPLOY, load_files
from fixtures.k8s import k8s, k8s_kubeconfig, kmock_options  # noqa: F401
from fixtures.k8s_binaries import run_kubectl
from fixtures.k8s_resources import ResourceType

# Built-in kinds deploy/ uses that the emulator does not register by default.
EXTRA_TYPES = (
    ResourceType("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    ResourceType("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    ResourceType("networking.k8s.io", "v1", "ingresses", "Ingress", short_names=("ing",)),
    ResourceType("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
    ResourceType("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
)


def fix_core_discovery(emulator) -> None:
    """KMock 0.8 answers ``GET /api/v1`` with ``groupVersion: "/v1"`` (a real server says
    ``"v1"``), and kubectl then maps no core kind (Namespace, Service, …). A reaction on this
    emulator instance — reactions come before KMock's fallback discovery — fixes the field."""

    async def core_v1(request):
        payload = await emulator._serve_version(request)
        return {**payload, "groupVersion": "v1"}

    emulator["get /api/v1"] << core_v1


kubectl = run_kubectl


async def test_kubectl_applies_deploy_then_the_example_pools(
    k8s,  # noqa: F811
    k8s_kubeconfig,  # noqa: F811
    kubectl_bin,
) -> None:
    for rtype in EXTRA_TYPES:
        k8s.add_type(rtype)
    fix_core_discovery(k8s)
    run = lambda *args: kubectl(kubectl_bin, k8s_kubeconfig, *args)  # noqa: E731

    # The order of docs/kubernetes.md: CRDs, the namespace, then RBAC and the workloads.
    await run("apply", "--validate=false", "-f", str(DEPLOY / "crds"))
    await run("apply", "--validate=false", "-f", str(DEPLOY / "manifests" / "namespace.yaml"))
    out = await run(
        "apply", "--validate=false", "-f", str(DEPLOY / "rbac"), "-f", str(DEPLOY / "manifests")
    )
    applied = {line.split()[0] for line in out.splitlines()}
    files = sorted((DEPLOY / "rbac").glob("*.yaml")) + sorted((DEPLOY / "manifests").glob("*.yaml"))
    expected = {f"{d['kind'].lower()}/{d['metadata']['name']}" for d in load_files(files)}
    # kubectl prints "deployment.apps/NAME" or "service/NAME": drop the group.
    kinds_and_names = set()
    for printed in applied:
        kind_group, _, name = printed.partition("/")
        kinds_and_names.add(f"{kind_group.split('.')[0]}/{name}")
    assert kinds_and_names == expected

    router = k8s.get_object("apps/v1/deployments", "loraplex", "loraplex-router")
    assert router is not None, "the router Deployment is not in the loraplex namespace"
    role = k8s.get_object("rbac.authorization.k8s.io/v1/roles", "loraplex", "loraplex-operator")
    assert role is not None

    examples = sorted((DEPLOY / "examples").glob("*.yaml"))
    for example in examples:
        await run("apply", "--validate=false", "-n", "loraplex", "-f", str(example))
    # Printer columns are rendered by a real API server (Table responses are not emulated), so
    # ask kubectl for the same fields as custom columns; the short name "bmp" is the CRD's.
    columns = "custom-columns=NAME:.metadata.name,BASE:.spec.baseModel"
    table = await run("get", "bmp", "-n", "loraplex", "-o", columns)
    header, *rows = table.splitlines()
    assert header.split() == ["NAME", "BASE"]
    assert sorted(row.split() for row in rows) == [
        ["sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5"],
        ["sdxl-base", "stabilityai/stable-diffusion-xl-base-1.0"],
    ]
