"""A tenant's whole lifecycle: its stores (``resources/provisioning.py``) and its Dagster
partition, step by step. The operator's sub-handlers and ``alien tenant`` call these."""

from __future__ import annotations

from typing import Literal

from resources.provisioning import STORE_STEPS, check_stores, provision_store, retire_stores
from resources.settings import AlienSettings
from resources.tenancy import TenantId

STEPS = (*STORE_STEPS, "partition")


def provision_step(settings: AlienSettings, tenant: str, step: str) -> str:
    """One step of creating ``tenant`` (idempotent); a short message says what was done."""
    if step != "partition":
        return provision_store(settings, tenant, step)
    from alien.runner import register_partition

    register_partition(settings, TenantId(tenant))
    return "dagster partition registered"


def provision_tenant(settings: AlienSettings, tenant: str) -> list[str]:
    """Every step, in order; a failure stops here and the next call resumes."""
    return [provision_step(settings, tenant, step) for step in STEPS]


def check_tenant(settings: AlienSettings, tenant: str) -> dict[str, bool]:
    """For each step, whether its part is there now (the drift check)."""
    from alien.runner import dagster_instance
    from alien_assets.partitions import TENANTS

    out = check_stores(settings, tenant)
    out["partition"] = dagster_instance(settings).has_dynamic_partition(TENANTS, TenantId(tenant))
    return out


def retire_tenant(
    settings: AlienSettings, tenant: str, retention: Literal["delete", "retain"]
) -> tuple[str, bool]:
    """Retire the tenant: its partition always; its stores and data unless ``retain``.
    Returns a message and whether there was a tenant to retire."""
    from alien.runner import unregister_partition

    tenant = TenantId(tenant)
    unregister_partition(settings, tenant)
    found = retire_stores(settings, tenant, retention)
    if retention == "retain":
        return "partition retired; data retained", found
    return "partition retired; stores and data deleted", found
