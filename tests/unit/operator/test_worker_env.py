"""The ``LORAPLEX_WORKER_*`` variables the operator writes are settings the worker reads.

The operator may not import the worker (import-linter keeps the components apart), so it
spells the names by hand in :func:`loraplex.operator.resources.worker_env`. A misspelt one
would be ignored silently (the worker's settings ignore unknown variables), so this test,
which may import both, checks every name against :class:`WorkerSettings` and every value
against its validation.
"""

from __future__ import annotations

from typing import Any

import pytest
from loraplex.operator import resources as res
from loraplex.worker.settings import WorkerSettings

PREFIX = WorkerSettings.model_config["env_prefix"]

# Every worker option a BaseModelPool can set, so every variable the operator can write appears.
EVERY_OPTION: dict[str, Any] = {
    "image": "registry.example/worker:1",
    "dtype": "bfloat16",
    "adapterSlots": 12,
    "residentCacheSize": "3Gi",
    "hostCacheSize": "16Gi",
    "terminationGracePeriodSeconds": 200,
    "hfTokenSecret": {"name": "hf", "key": "token"},
    "env": [{"name": "EXTRA", "value": "1"}],  # the user's own; not the operator's to check
    "imagePullPolicy": "IfNotPresent",
    "podAnnotations": {"a": "b"},
    "cacheSizeLimit": "100Gi",
    "nodeSelector": {"gpu": "h100"},
    "resources": {"limits": {"nvidia.com/gpu": 1}},
}


def _operator_env() -> dict[str, str]:
    body = {
        "metadata": {"name": "sdxl", "namespace": "ml", "uid": "u-1"},
        "spec": {
            "baseModel": "stabilityai/stable-diffusion-xl-base-1.0",
            "revision": "v1.0",
            "merge": "auto",  # spec.merge: fused serving (docs/merge.md)
            "worker": EVERY_OPTION,
        },
    }
    secret = res.SecretKeyRef("lp-worker-secret", "worker-secret")
    pool = res.parse_pool(body, default_image="img:default", worker_secret=secret)
    (container,) = res.build_deployment(pool, 1)["spec"]["template"]["spec"]["containers"]
    # A Secret's value stands in for valueFrom entries (the worker secret): a valid secret.
    return {
        e["name"]: e.get("value", "x" * 32)
        for e in container["env"]
        if e["name"].startswith(PREFIX)
    }


def test_prefix_is_the_one_the_operator_writes() -> None:
    assert PREFIX == "LORAPLEX_WORKER_"


def test_every_worker_variable_names_a_worker_setting() -> None:
    """Each name is ``PREFIX + field.upper()`` for a field of WorkerSettings, spelled exactly
    (pydantic-settings would also match other casings; the operator should not rely on it)."""
    by_name = {PREFIX + field.upper(): field for field in WorkerSettings.model_fields}
    written = _operator_env()
    unknown = sorted(set(written) - set(by_name))
    assert not unknown, f"the operator writes variables the worker ignores: {unknown}"
    # The pool set every option, so the conditional variables must be among those checked.
    assert {"base_model", "resident_cache_bytes", "host_cache_bytes", "secret", "merge"} <= {
        by_name[name] for name in written
    }


def test_worker_accepts_every_value_the_operator_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    env = _operator_env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = WorkerSettings()
    assert settings.exposure_problem() is None, "the worker would refuse to start"
    for name, value in env.items():
        field = name.removeprefix(PREFIX).lower()
        read = getattr(settings, field)
        if field == "secret":
            read = read.get_secret_value()
        assert str(read) == value or read == type(read)(value), (name, value, read)
