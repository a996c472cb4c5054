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


def prepare_dataset_spaces(settings: AlienSettings, tenant: str) -> list[str]:
    """Make the collections of the tenant's datasets' own embedding models (``"dataset:
    model"`` for each made now): the operator's drift timer asks, so a model set through a
    data plane's Data API takes effect with the token of the next re-apply."""
    made = TenantRegistry(settings).prepare_dataset_spaces(tenant)
    return [f"{space.dataset}: {space.model}" for space in made]


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


def _kube_client():  # type: ignore[no-untyped-def]
    """An API client: in-cluster, else the kube-config (``KUBECONFIG`` as it is now; the
    client reads it once, when first imported)."""
    import os

    from kubernetes import config
    from kubernetes.client import ApiClient

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return ApiClient()


def apply_kubernetes_objects(objects: list[dict], field_manager: str = "alien-operator") -> int:
    """Server-side apply of ``objects`` through the API server (in-cluster or kube-config).

    Idempotent by construction: applying the same objects again changes nothing.
    """
    from kubernetes import dynamic

    client = dynamic.DynamicClient(_kube_client())
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


def read_secrets(namespace: str, names: list[str]) -> list[dict]:
    """The named Secrets of ``namespace`` (type and data), e.g. image pull Secrets to copy
    into a tenant's namespace; the operator may read these by name and no other."""
    from kubernetes.client import CoreV1Api

    api = CoreV1Api(_kube_client())
    out = []
    for name in names:
        secret = api.read_namespaced_secret(name, namespace)
        out.append({"metadata": {"name": name}, "type": secret.type, "data": secret.data or {}})
    return out
