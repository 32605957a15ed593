"""Router settings from the environment and the ``loraplex router`` flags."""

from __future__ import annotations

import pytest
from loraplex.router.cli import build_parser, main, settings_from_args
from loraplex.router.settings import RouterSettings
from pydantic import ValidationError


def test_static_pools_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAPLEX_ROUTER_STATIC_POOLS", '{"org/base": ["http://127.0.0.1:8001/"]}')
    monkeypatch.setenv("LORAPLEX_ROUTER_HOLD_TIMEOUT_S", "5")
    settings = RouterSettings()
    assert settings.static_pools == {"org/base": ["http://127.0.0.1:8001"]}
    assert settings.hold_timeout_s == 5


@pytest.mark.parametrize(
    "pools", [{"../x": ["http://a"]}, {"org/base": ["ftp://a"]}, {"org/base": ["a:80"]}]
)
def test_bad_static_pools_are_refused(pools: dict[str, list[str]]) -> None:
    with pytest.raises(ValidationError):
        RouterSettings(static_pools=pools)


def test_flags_override_settings(tmp_path) -> None:
    args = build_parser().parse_args(
        [
            "--port",
            "9123",
            "--static-pools",
            '{"org/b": ["http://h:1"]}',
            "--models-dir",
            str(tmp_path),
        ]
    )
    settings = settings_from_args(args)
    assert (settings.port, settings.static_pools, settings.models_dir) == (
        9123,
        {"org/b": ["http://h:1"]},
        tmp_path,
    )


def test_cli_rejects_bad_json_with_a_clear_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--static-pools", "{not json"])
    assert exit_info.value.code == 2
    assert "--static-pools is not valid JSON" in capsys.readouterr().err
