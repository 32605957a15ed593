"""The settings base: one pydantic-settings object per component, env prefix ``LORAPLEX_``.

Each component subclasses :class:`ComponentSettings` with its own prefix
(``LORAPLEX_WORKER_``, ``LORAPLEX_ROUTER_``, ``LORAPLEX_OPERATOR_``) and documents every field:
unit, default, and why. Objects are built in an app's lifespan and passed in — never read from
a module-level singleton.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class ComponentSettings(BaseSettings):
    """Common configuration for every component's settings class."""

    model_config = SettingsConfigDict(
        env_prefix="LORAPLEX_", env_nested_delimiter="__", extra="ignore", frozen=True
    )
