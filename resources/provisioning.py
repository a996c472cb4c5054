"""Provisioning a tenant, store by store: the plain functions behind the operator's
sub-handlers, ``alien tenant create|delete`` and the tests.

Every step is idempotent (creating what exists is success) and resumable (a step never
depends on in-memory state of an earlier one), so a crash or a retry repeats nothing harmful.
"""

from __future__ import annotations

from typing import Literal

from resources.settings import AlienSettings
from resources.stores import TenantRegistry, get_embedder
from resources.tenancy import TenantId

STEPS = ("catalog", "objects", "vectors", "keywords", "partition")


def provision_step(settings: AlienSettings, tenant: str, step: str) -> str:
    """Bring one store of ``tenant`` into existence; a short message says what was done."""
    tenant = TenantId(tenant)
    registry = TenantRegistry(settings)
    if step == "partition":
        from alien.runner import register_partition

        register_partition(settings, tenant)
        return "dagster partition registered"
    if step in STEPS[:-1] and not registry.backends.store_exists(
        step, tenant, registry.tenant_dir(tenant)
    ):
        registry.forget(tenant)  # handles on a vanished store must not be reused
    embedder = get_embedder(settings)
    server = registry.backends.provision_store(
        step, tenant, embedder.model_name, embedder.dimension
    )
    stores = registry.handles(tenant)  # builds the embedded files and directories
    if step == "catalog":
        stores.catalog.create()  # migrations and the tenant row, as the tenant's own role
    return f"{step}: {'server store' if server else 'embedded store'} ready"


def check_tenant(settings: AlienSettings, tenant: str) -> dict[str, bool]:
    """For each step, whether its store is there now (the drift check)."""
    tenant = TenantId(tenant)
    registry = TenantRegistry(settings)
    root = registry.tenant_dir(tenant)
    out = {s: registry.backends.store_exists(s, tenant, root) for s in STEPS[:-1]}
    from alien.runner import dagster_instance
    from alien_assets.partitions import TENANTS

    out["partition"] = dagster_instance(settings).has_dynamic_partition(TENANTS, tenant)
    return out


def retire_tenant(
    settings: AlienSettings, tenant: str, retention: Literal["delete", "retain"]
) -> str:
    """Retire the tenant: its partition always; its stores and data unless ``retain``."""
    from alien.runner import unregister_partition

    tenant = TenantId(tenant)
    unregister_partition(settings, tenant)
    if retention == "retain":
        return "partition retired; data retained"
    TenantRegistry(settings).drop(tenant)
    return "partition retired; stores and data deleted"


def tenant_credentials(settings: AlienSettings, tenant: str) -> dict[str, str]:
    """The values of the tenant's credentials Secret: each derived from a cluster key, so
    the operator can rewrite the Secret at any time and nothing else stores them."""
    tenant = TenantId(tenant)
    backends = TenantRegistry(settings).backends
    out: dict[str, str] = {}
    secret = settings.cluster_secret.get_secret_value() if settings.cluster_secret else None
    if backends.uses_postgres and secret:
        from resources.postgres import role_password

        out["ALIEN_POSTGRES_PASSWORD"] = role_password(secret, tenant)
    if backends.uses_s3 and settings.s3_minio_admin and secret:
        from resources.minio_tenancy import tenant_secret_key

        out["ALIEN_S3_SECRET_KEY"] = tenant_secret_key(secret, tenant)
    if backends.uses_qdrant and settings.qdrant_api_key is not None:
        from resources.qdrant import collection_name, tenant_token

        key = settings.qdrant_api_key.get_secret_value()
        out["ALIEN_QDRANT_TOKEN"] = tenant_token(key, collection_name(tenant), 7 * 24 * 3600)
    if backends.uses_meili and settings.meili_master_key is not None:
        from resources.meili import derive_key, index_name, key_uid

        master = settings.meili_master_key.get_secret_value()
        out["ALIEN_MEILI_KEY"] = derive_key(master, key_uid(index_name(tenant), external=False))
    return out


def apply_kubernetes_objects(objects: list[dict], field_manager: str = "alien-operator") -> int:
    """Server-side apply of ``objects`` through the API server (in-cluster or kube-config).

    Idempotent by construction: applying the same objects again changes nothing.
    """
    from kubernetes import config, dynamic
    from kubernetes.client import ApiClient

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
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
