"""Rendered chart output shared by the deploy tests (helm runs once per values set)."""

from __future__ import annotations

import pytest
from fixtures.deploy_checks import ALL_ON_VALUES, Manifest, helm_template, load_all
from fixtures.k8s_binaries import helm_bin, kubectl_bin  # noqa: F401


@pytest.fixture(scope="session")
def rendered_default(helm_bin) -> list[Manifest]:  # noqa: F811
    return load_all(helm_template(helm_bin, "--include-crds"))


@pytest.fixture(scope="session")
def rendered_all_on(helm_bin) -> list[Manifest]:  # noqa: F811
    return load_all(helm_template(helm_bin, "--include-crds", "-f", str(ALL_ON_VALUES)))


@pytest.fixture(scope="session", params=["default", "all-on"])
def rendered(request, rendered_default, rendered_all_on) -> list[Manifest]:
    """Each rendering in turn: default values, then every optional feature on."""
    return rendered_default if request.param == "default" else rendered_all_on
