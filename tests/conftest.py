"""Fixtures for every test; each fixture module documents what it builds."""

from fixtures.engines import hub_cache  # noqa: F401
from fixtures.hub import hf_env, hub_server, isolated_hub_server  # noqa: F401
from fixtures.k8s import k8s, k8s_kubeconfig, kmock_options, kopf_registry  # noqa: F401
from fixtures.models import demo_models  # noqa: F401
