"""The chart's RBAC grants every Kubernetes API call the operator's and router's code makes.

Least privilege cuts both ways: test_chart.py pins the exact rules, and this test reads the
components' source for kubernetes_asyncio calls (``read_namespaced_deployment`` → get
deployments, ``list_namespaced_endpoint_slice`` → list endpointslices, a ``Watch`` → watch, …)
plus what kopf itself does for the operator, and fails when a call is not granted — e.g. a new
``delete_namespaced_service`` without a matching rule would fail here, not in a cluster.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fixtures.deploy_checks import REPO, Manifest, one

VERBS = {
    "read": "get",
    "list": "list",
    "create": "create",
    "patch": "patch",
    "replace": "update",
    "delete": "delete",
    "delete_collection": "deletecollection",
}
CALL = re.compile(
    r"\.(?P<verb>delete_collection|read|list|create|patch|replace|delete)_"
    r"(?P<scope>namespaced_|cluster_)?(?P<kind>[a-z_]+?)(?P<sub>_status|_scale)?"
    r"(?:_for_all_namespaces)?\b"
)
GROUPS = {
    "deployment": ("apps", "deployments"),
    "service": ("", "services"),
    "pod": ("", "pods"),
    "event": ("", "events"),
    "endpoint_slice": ("discovery.k8s.io", "endpointslices"),
    "endpoints": ("", "endpoints"),
    # The only custom resource the components touch.
    "custom_object": ("loraplex.dev", "basemodelpools"),
}
# What kopf does on the operator's behalf: list+watch pools, patch them (progress annotations,
# finalizers), patch /status, and post Events (posting is on for warnings and errors).
KOPF_NEEDS = {
    ("loraplex.dev", "basemodelpools", "list"),
    ("loraplex.dev", "basemodelpools", "watch"),
    ("loraplex.dev", "basemodelpools", "patch"),
    ("loraplex.dev", "basemodelpools/status", "patch"),
    ("", "events", "create"),
}


def calls_in(folder: str) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every kubernetes_asyncio call in a component's source."""
    needed: set[tuple[str, str, str]] = set()
    for path in sorted((REPO / folder).glob("*.py")):
        source = path.read_text()
        watches = "Watch(" in source
        for match in CALL.finditer(source):
            kind = match["kind"]
            if kind not in GROUPS:
                if match["scope"] is None:
                    continue  # not a Kubernetes API call shape: create_task, read_text, ...
                pytest.fail(f"{path.name}: {match[0]} — add {kind!r} to GROUPS and to the RBAC")
            group, resource = GROUPS[kind]
            resource += {"_status": "/status", "_scale": "/scale"}.get(match["sub"] or "", "")
            needed.add((group, resource, VERBS[match["verb"]]))
            if watches and match["verb"] == "list":
                needed.add((group, resource, "watch"))
    return needed


def granted(docs: list[Manifest], name: str) -> set[tuple[str, str, str]]:
    role = one(docs, "Role", name)
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_operator_rbac_covers_the_operator_code_and_kopf(rendered_default) -> None:
    needed = calls_in("operator") | KOPF_NEEDS
    assert ("apps", "deployments", "create") in needed, "the scan found no calls: regex broken?"
    missing = needed - granted(rendered_default, "lp-loraplex-operator")
    assert not missing, f"operator calls the API without a rule for: {sorted(missing)}"


def test_router_rbac_covers_the_router_code(rendered_default) -> None:
    missing = calls_in("router") - granted(rendered_default, "lp-loraplex-router")
    assert not missing, f"router calls the API without a rule for: {sorted(missing)}"


def test_the_scan_sees_a_call_that_is_not_granted(tmp_path: Path, rendered_default) -> None:
    """The check can fail: a delete the RBAC does not allow is reported."""
    source = "await self.core.delete_namespaced_service(name, ns)\n"
    (match,) = CALL.finditer(source)
    group, resource = GROUPS[match["kind"]]
    call = (group, resource, VERBS[match["verb"]])
    assert call == ("", "services", "delete")
    assert call not in granted(rendered_default, "lp-loraplex-operator")
