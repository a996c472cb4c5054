"""Provisioning a tenant, store by store: the plain functions behind the operator's
sub-handlers, ``alien tenant create|delete|env`` and the tests.

Every step is idempotent (creating what exists is success) and resumable (a step never
depends on in-memory state of an earlier one, and the cluster catalog records each store's
state), so a crash or a retry repeats nothing harmful. Dagster's tenant partition is the
pipeline's business and is added beside these steps by ``alien/tenants.py``.
"""

from __future__ import annotations

from typing import Literal

from resources.backends import TenantEnvironment
from resources.settings import AlienSettings
from resources.stores import TenantRegistry
from resources.tenancy import TenantId

STORE_STEPS = ("catalog", "objects", "vectors", "keywords")


def provision_store(settings: AlienSettings, tenant: str, step: str) -> str:
    """Bring one store of ``tenant`` into existence; a short message says what was done."""
    return TenantRegistry(settings).provision_store(tenant, step)


def check_stores(settings: AlienSettings, tenant: str) -> dict[str, bool]:
    """For each store, whether it is there now (the drift check)."""
    registry = TenantRegistry(settings)
    return {step: registry.store_exists(tenant, step) for step in STORE_STEPS}


def retire_stores(
    settings: AlienSettings, tenant: str, retention: Literal["delete", "retain"]
) -> bool:
    """Retire the tenant's stores (``delete``) or only stop serving it (``retain``); whether
    there was a tenant to retire."""
    registry = TenantRegistry(settings)
    if retention == "retain":
        return registry.retain(tenant)
    return registry.drop(tenant)


def tenant_environment(settings: AlienSettings, tenant: str) -> TenantEnvironment:
    """The settings (ConfigMap) and credentials (Secret) of the tenant's data plane: store
    URLs as this control plane knows them, names and credentials that reach only the
    tenant's own database, bucket, collection and index. Each credential is derived from a
    cluster key, so the operator can rewrite the Secret at any time and nothing stores it."""
    return TenantRegistry(settings).environment(TenantId(tenant))


def apply_kubernetes_objects(objects: list[dict], field_manager: str = "alien-operator") -> int:
    """Server-side apply of ``objects`` through the API server (in-cluster or kube-config).

    Idempotent by construction: applying the same objects again changes nothing.
    """
    import os

    from kubernetes import config, dynamic
    from kubernetes.client import ApiClient

    try:
        config.load_incluster_config()
    except config.ConfigException:
        # KUBECONFIG as it is now (the client reads it once, when first imported)
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    client = dynamic.DynamicClient(ApiClient())
    for obj in objects:
        api = client.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        client.server_side_apply(
            api,
            body=obj,
            name=obj["metadata"]["name"],
            namespace=obj["metadata"].get("namespace"),
            field_manager=field_manager,
            force_conflicts=True,
        )
    return len(objects)
