"""Worker settings that keep the API closed: the secret, loopback, the two ports."""

from __future__ import annotations

import pytest
from loraplex.worker.settings import WorkerSettings, is_loopback
from pydantic import ValidationError

SECRET = "unit-test-worker-secret-0123456789"


def settings(**values: object) -> WorkerSettings:
    return WorkerSettings(base_model="org/base", **values)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.7", False),
        ("worker.example", False),
    ],
)
def test_only_loopback_may_go_without_a_secret(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    problem = settings(host=host).exposure_problem()
    assert (problem is None) is loopback
    if problem:
        assert "LORAPLEX_WORKER_SECRET" in problem
    assert settings(host=host, secret=SECRET).exposure_problem() is None


def test_the_default_worker_refuses_to_start_open() -> None:
    assert settings().host == "0.0.0.0" and settings().exposure_problem() is not None


def test_the_secret_is_never_shown_and_empty_means_unset() -> None:
    configured = settings(secret=SECRET)
    assert SECRET not in repr(configured) and SECRET not in str(configured.model_dump())
    assert settings(secret="").secret is None
    with pytest.raises(ValidationError) as info:
        settings(secret="too-short")
    assert "too-short" not in str(info.value)


def test_metrics_port_differs_from_the_api_port() -> None:
    assert (settings().port, settings().metrics_port) == (8000, 9100)
    with pytest.raises(ValidationError, match="metrics port must differ"):
        settings(port=9000, metrics_port=9000)
    assert settings(port=0, metrics_port=0).metrics_port == 0  # tests: both any free port
