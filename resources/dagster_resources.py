"""Dagster resources over the store layer (configured from the environment at run time)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from resources.settings import AlienSettings
from resources.stores import TenantRegistry, TenantStores


class AlienStoresResource(dg.ConfigurableResource):
    """Opens one tenant's stores. ``home`` defaults to ``ALIEN_HOME`` (else ``./.alien``)."""

    home: str | None = None

    _registry: TenantRegistry | None = PrivateAttr(default=None)

    def settings(self) -> AlienSettings:
        base = AlienSettings()
        return base.model_copy(update={"home": Path(self.home)}) if self.home else base

    def registry(self) -> TenantRegistry:
        if self._registry is None:
            self._registry = TenantRegistry(self.settings())
        return self._registry

    def for_tenant(self, tenant: str) -> TenantStores:
        """The tenant's stores; an unprovisioned tenant raises ``UnknownTenantError``."""
        return self.registry().open(tenant)
