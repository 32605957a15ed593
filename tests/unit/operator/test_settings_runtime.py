"""Operator settings from the environment, and one router read per tick shared by all pools."""

from __future__ import annotations

import pydantic
import pytest
from loraplex.operator.rates import RateSnapshot
from loraplex.operator.runtime import CachedRates
from loraplex.operator.settings import OperatorSettings


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAPLEX_OPERATOR_INTERVAL_S", "2.5")
    monkeypatch.setenv("LORAPLEX_OPERATOR_ROUTER_URLS", '["http://r1:8080/metrics"]')
    monkeypatch.setenv("LORAPLEX_OPERATOR_PEERING", "")
    settings = OperatorSettings()
    assert settings.interval_s == 2.5 and settings.router_urls == ["http://r1:8080/metrics"]
    assert settings.peering == "" and settings.rate_source == "scrape"  # "" = standalone
    monkeypatch.delenv("LORAPLEX_OPERATOR_PEERING")
    assert OperatorSettings().peering is None  # unset = kopf's auto mode


def test_every_setting_is_documented() -> None:
    for name, field in OperatorSettings.model_fields.items():
        assert field.description and len(field.description) > 15, name


def test_prometheus_source_needs_a_url() -> None:
    with pytest.raises(pydantic.ValidationError, match="PROMETHEUS_URL"):
        OperatorSettings(rate_source="prometheus")
    with pytest.raises(pydantic.ValidationError):
        OperatorSettings(interval_s=0)


class CountingSource:
    def __init__(self) -> None:
        self.reads: list[float] = []

    async def read(self, now: float) -> RateSnapshot:
        self.reads.append(now)
        return RateSnapshot({"a/b": float(len(self.reads))})


async def test_cached_rates_read_once_per_half_interval() -> None:
    clock = [0.0]
    source = CountingSource()
    rates = CachedRates(source, max_age_s=2.5, clock=lambda: clock[0])
    first = [await rates.read() for _ in range(3)]  # three pools in one tick
    clock[0] = 2.0
    same_tick = await rates.read()
    clock[0] = 5.0
    next_tick = await rates.read()
    assert source.reads == [0.0, 5.0]
    assert {s.rate("a/b") for s in [*first, same_tick]} == {1.0}
    assert next_tick.rate("a/b") == 2.0


def test_each_replica_draws_its_own_peering_priority() -> None:
    """kopf freezes every peer that shares a priority: two replicas must not both get 0."""
    import kopf
    from loraplex.operator.handlers import configure_kopf

    drawn = set()
    for _ in range(5):
        settings = kopf.OperatorSettings()
        configure_kopf(settings, OperatorSettings())
        drawn.add(settings.peering.priority)
    assert len(drawn) == 5 and min(drawn) > 0
    pinned = kopf.OperatorSettings()
    configure_kopf(pinned, OperatorSettings(peering_priority=100))
    assert pinned.peering.priority == 100
