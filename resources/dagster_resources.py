"""Dagster resources over the store layer, configured with the settings of the run.

``AlienStoresResource`` takes the data cluster's settings as resource configuration: the
non-secret ones as values (``settings``), shown in the Dagster UI like any configuration;
secret ones (``SecretStr`` fields: cluster keys, tenant credentials) never enter Dagster's
storage and come from the process environment under their ``ALIEN_*`` names, as
``dg.EnvVar`` does. The settings are built once per resource, not re-read at each call.
The code location's default (``from_env``) takes the values the code server started with;
``alien ingest`` and the API worker pass the settings of their own process
(``for_settings``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr, SecretStr

from resources.settings import AlienSettings
from resources.stores import TenantRegistry, TenantStores


def _is_secret(name: str) -> bool:
    annotation = AlienSettings.model_fields[name].annotation
    return SecretStr in getattr(annotation, "__args__", (annotation,))


def public_settings(settings: AlienSettings) -> dict[str, str]:
    """The settings that differ from their defaults, secrets left out, as strings."""
    defaults = AlienSettings.model_construct()
    out: dict[str, str] = {}
    for name in AlienSettings.model_fields:
        value = getattr(settings, name)
        if _is_secret(name) or value == getattr(defaults, name) or value is None:
            continue
        out[name] = str(value.resolve() if isinstance(value, Path) else value)
    return out


class AlienStoresResource(dg.ConfigurableResource):
    """Opens one tenant's stores through the registry of these settings."""

    home: str | None = None
    settings_values: dict[str, str] = Field(default_factory=dict)

    _settings: AlienSettings | None = PrivateAttr(default=None)
    _registry: TenantRegistry | None = PrivateAttr(default=None)

    @classmethod
    def for_settings(cls, settings: AlienSettings) -> AlienStoresResource:
        return cls(home=str(settings.home.resolve()), settings_values=public_settings(settings))

    def settings(self) -> AlienSettings:
        if self._settings is None:
            values: dict[str, Any] = dict(self.settings_values)
            if self.home:
                values["home"] = self.home
            # Secrets (and anything not configured here) come from the environment.
            self._settings = AlienSettings(**values)
        return self._settings

    def registry(self) -> TenantRegistry:
        if self._registry is None:
            self._registry = TenantRegistry(self.settings())
        return self._registry

    def for_tenant(self, tenant: str) -> TenantStores:
        """The tenant's stores; an unprovisioned tenant raises ``UnknownTenantError``."""
        return self.registry().open(tenant)
