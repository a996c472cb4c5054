"""Dagster resources over the store layer, configured with the settings of the run.

``AlienStoresResource`` takes the data cluster's settings as resource configuration: every
non-secret one as a value (``settings_values``), shown in the Dagster UI like any
configuration; secret ones (``SecretStr`` fields, and the PostgreSQL URL, which may carry a
password) never enter Dagster's storage and come from the process environment under their
``ALIEN_*`` names, as ``dg.EnvVar`` does. The settings are built once per resource, not
re-read at each call. The code location's default (``AlienStoresResource()``) takes the
settings the code server started with; ``alien ingest`` and the API worker pass their own
(``for_settings``), and a run in their process uses that very settings object, secrets
included (``settings_ref``), since Dagster rebuilds resources from their configuration.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr, SecretStr

from resources.settings import AlienSettings
from resources.stores import TenantRegistry, TenantStores, settings_key

# Settings objects handed to in-process runs, by a digest of their whole content.
_IN_PROCESS: dict[str, AlienSettings] = {}
NOT_CONFIG = frozenset({"postgres_url"})  # may carry a password


def _is_secret(name: str) -> bool:
    annotation = AlienSettings.model_fields[name].annotation
    return name in NOT_CONFIG or SecretStr in getattr(annotation, "__args__", (annotation,))


def public_settings(settings: AlienSettings) -> dict[str, str]:
    """Every set, non-secret setting as a string (so the environment cannot override it)."""
    out: dict[str, str] = {}
    for name in AlienSettings.model_fields:
        value = getattr(settings, name)
        if _is_secret(name) or value is None:
            continue
        out[name] = str(value.resolve() if isinstance(value, Path) else value)
    return out


def _reference(settings: AlienSettings) -> str:
    ref = hashlib.sha256(repr(settings_key(settings)).encode()).hexdigest()[:24]
    _IN_PROCESS[ref] = settings
    return ref


class AlienStoresResource(dg.ConfigurableResource):
    """Opens one tenant's stores through the registry of these settings."""

    home: str | None = None
    settings_values: dict[str, str] = Field(default_factory=dict)
    settings_ref: str = ""

    _settings: AlienSettings | None = PrivateAttr(default=None)
    _registry: TenantRegistry | None = PrivateAttr(default=None)

    @classmethod
    def for_settings(cls, settings: AlienSettings) -> AlienStoresResource:
        return cls(
            home=str(settings.home.resolve()),
            settings_values=public_settings(settings),
            settings_ref=_reference(settings),
        )

    def settings(self) -> AlienSettings:
        if self._settings is None and self.settings_ref in _IN_PROCESS:
            self._settings = _IN_PROCESS[self.settings_ref]
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
