"""The edge rules as pure functions (issue 17 rows 3, 4, 5, 6, 7): hosts, origins, sizes, tokens,
the pixel budget and prompt redaction, without a server. The same rules over real sockets are
in ``test_router_edge.py`` and ``test_worker_edge.py``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from loraplex.router.settings import RouterSettings
from pydantic import ValidationError

from loraplex.embedded.up import child_env
from loraplex.shared.contract import GenerateRequest, Limits, bearer_token, check_pixel_budget
from loraplex.shared.edge_policy import (
    ANY,
    EdgePolicy,
    EdgeSettings,
    check_head,
    effective_allowed_hosts,
    embedded_allowed_hosts,
    host_allowed,
    same_origin,
)
from loraplex.shared.errors import BadRequest
from loraplex.shared.logs import REDACTED_TRUNCATION, redact_prompt_echoes

LOCAL = effective_allowed_hosts([], "127.0.0.1")


def policy(**kw: object) -> EdgePolicy:
    values: dict[str, object] = {
        "allowed_hosts": LOCAL,
        "cors_origins": (),
        "max_body_bytes": 1000,
        "body_timeout_s": 1.0,
        "env_prefix": "LORAPLEX_ROUTER_",
    }
    return EdgePolicy(**{**values, **kw})  # type: ignore[arg-type]


def test_default_hosts_follow_the_listen_address() -> None:
    assert set(LOCAL) == {"127.0.0.1", "localhost", "[::1]"}
    assert effective_allowed_hosts([], "0.0.0.0") == (ANY,)  # a container: the cluster decides
    assert effective_allowed_hosts([], "::1") == ("[::1]", "localhost", "127.0.0.1")
    assert effective_allowed_hosts(["API.Example.com."], "0.0.0.0") == ("api.example.com",)
    assert RouterSettings().allowed_hosts == []  # empty: the derived default above


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1:8080", True),
        ("LOCALHOST:1", True),
        ("[::1]:8080", True),
        ("localhost.", True),
        ("attacker.example:8080", False),  # a DNS-rebinding name pointing at 127.0.0.1
        ("127.0.0.1.nip.io", False),
        ("", False),
        (None, False),
    ],
)
def test_host_check(host: str | None, ok: bool) -> None:
    assert host_allowed(host, LOCAL) is ok


def test_wildcard_subdomains_and_any() -> None:
    assert host_allowed("a.example.com", ("*.example.com",))
    assert not host_allowed("example.com.evil", ("*.example.com",))
    assert host_allowed("whatever:1", (ANY,))


def test_same_origin_ignores_scheme_and_default_ports() -> None:
    assert same_origin("http://127.0.0.1:8080", "127.0.0.1:8080")
    assert same_origin("https://api.example.com", "api.example.com")  # TLS ended at an Ingress
    assert same_origin("http://api.example.com:80", "api.example.com")
    assert not same_origin("http://127.0.0.1:8081", "127.0.0.1:8080")
    assert not same_origin("null", "127.0.0.1:8080")
    assert not same_origin("http://evil.example", "127.0.0.1:8080")


def test_cross_site_post_is_refused_but_curl_and_same_origin_are_not() -> None:
    form = {"host": "127.0.0.1:8080", "content-type": "application/x-www-form-urlencoded"}
    form["content-length"] = "10"
    assert check_head(policy(), "POST", form) is None  # curl -d: no Origin
    same = {**form, "origin": "http://127.0.0.1:8080"}
    assert check_head(policy(), "POST", same) is None
    refusal = check_head(policy(), "POST", {**form, "origin": "http://evil.example"})
    assert refusal is not None and refusal.status == 403
    assert "LORAPLEX_ROUTER_CORS_ORIGINS" in refusal.message
    # Reading is not state-changing: CORS keeps the answer from the page anyway.
    assert check_head(policy(), "GET", {"host": "127.0.0.1", "origin": "http://evil"}) is None


def test_preflight_from_an_unknown_origin_is_refused_as_json() -> None:
    head = {"host": "127.0.0.1", "origin": "http://evil", "access-control-request-method": "POST"}
    refusal = check_head(policy(), "OPTIONS", head)
    assert refusal is not None and refusal.status == 403


def test_cors_origins_must_send_json() -> None:
    allowed = policy(cors_origins=("https://app.example",))
    head = {"host": "127.0.0.1", "origin": "https://app.example", "content-length": "5"}
    assert check_head(allowed, "POST", {**head, "content-type": "application/json"}) is None
    refusal = check_head(allowed, "POST", {**head, "content-type": "text/plain"})
    assert refusal is not None and refusal.status == 415


def test_declared_length_over_the_limit_is_413() -> None:
    head = {"host": "127.0.0.1", "content-length": "1001"}
    refusal = check_head(policy(), "POST", head)
    assert refusal is not None and refusal.status == 413
    assert check_head(policy(), "POST", {**head, "content-length": "1000"}) is None


def test_settings_lists_from_env_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAPLEX_WORKER_ALLOWED_HOSTS", "a.example, [::1]")
    monkeypatch.setenv("LORAPLEX_WORKER_CORS_ORIGINS", '["https://x.example"]')
    edge = EdgeSettings(_env_prefix="LORAPLEX_WORKER_")
    assert edge.allowed_hosts == ["a.example", "[::1]"]
    assert edge.cors_origins == ["https://x.example"]
    assert edge.max_body_bytes == 256 * 1024


def test_embedded_mode_never_allows_any_host(tmp_path: Path) -> None:
    args = argparse.Namespace(log_level="INFO", cache_dir=tmp_path, hub=False, log_json=False)
    for host in ("127.0.0.1", "0.0.0.0", "192.168.1.5"):
        env = child_env(argparse.Namespace(**vars(args), host=host))
        hosts = RouterSettings(allowed_hosts=env["LORAPLEX_ROUTER_ALLOWED_HOSTS"]).allowed_hosts
        assert ANY not in hosts and {"localhost", "127.0.0.1", "[::1]"} <= set(hosts)
    assert embedded_allowed_hosts("192.168.1.5")[0] == "192.168.1.5"


@pytest.mark.parametrize("token", ["tøken", "hf_abc def", "hf_\u00a0x", "hf_\x7f"])
def test_tokens_must_be_visible_ascii(token: str) -> None:
    with pytest.raises(BadRequest, match="visible ASCII") as info:
        bearer_token(f"Bearer {token}")
    assert token not in info.value.message
    assert bearer_token("Bearer hf_AbC-123_x") == "hf_AbC-123_x"
    assert bearer_token("Basic abc") is None and bearer_token(None) is None


def test_pixel_budget_message_names_sides_and_defaults() -> None:
    with pytest.raises(BadRequest) as info:
        check_pixel_budget(2048, 1024, "height 1024 is this worker's default")
    message = info.value.message
    assert "2048×1024" in message and "height 1024 is this worker's default" in message
    assert str(Limits.MAX_PIXELS) in message
    check_pixel_budget(1024, 1024)
    with pytest.raises(ValidationError, match="budget"):
        GenerateRequest(prompt="a", width=2048, height=1024)


@pytest.fixture
def redacting() -> Iterator[None]:
    before = logging.getLogRecordFactory()
    redact_prompt_echoes()
    redact_prompt_echoes()  # idempotent: one wrapper, not two
    yield
    logging.setLogRecordFactory(before)


def test_prompt_echoes_are_redacted_where_records_are_made(redacting: None) -> None:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    library = logging.getLogger("diffusers.pipelines.some_pipeline")
    handler = Keep()
    library.addHandler(handler)
    try:
        library.warning(
            "The following part of your input was truncated because CLIP can only handle "
            "sequences up to 77 tokens: my secret prompt"
        )
        library.warning("something else: kept")
    finally:
        library.removeHandler(handler)
    assert [r.getMessage() for r in seen] == [REDACTED_TRUNCATION, "something else: kept"]
