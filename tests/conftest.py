"""Fixtures for every test; each fixture module documents what it builds."""

from fixtures.models import demo_models  # noqa: F401
