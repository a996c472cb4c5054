"""The cluster catalog (the tenant registry) and the generations that keep process caches of
tenant handles honest, on SQLite and on the machine's PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from alien.credentials import create_api_key
from data_api import create_app
from resources.cluster_catalog import ClusterCatalog, ReservedTenantError, tenant_name
from resources.settings import AlienSettings
from resources.stores import TenantRegistry
from resources.tenancy import UnknownTenantError
from tests.conftest import POSTGRES_ADMIN
from tests.data_api.conftest import api_settings

ALIEN = str(Path(sys.executable).with_name("alien"))


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog(request, tmp_path):
    if request.param == "sqlite":
        yield ClusterCatalog.sqlite(tmp_path / "cluster.db")
        return
    name = request.getfixturevalue("cluster_database")
    cat = ClusterCatalog.postgres(POSTGRES_ADMIN, name)
    yield cat
    cat.close()


def test_rows_states_and_generations(catalog: ClusterCatalog) -> None:
    first = catalog.begin("acme")
    assert first.state == "provisioning" and catalog.begin("acme") == first  # idempotent
    assert catalog.list() == []  # not ready: not a tenant yet
    catalog.record_store("acme", "catalog", "ready", "made")
    catalog.record_store("acme", "objects", "failed", "S3 down")
    catalog.record_store("acme", "objects", "ready", "made")  # an update, not a second row
    record = catalog.get("acme")
    assert record is not None
    assert record.stores == {"catalog": ("ready", "made"), "objects": ("ready", "made")}
    catalog.set_state("acme", "ready")
    assert [r.tenant for r in catalog.list()] == ["acme"]
    assert catalog.generation("acme") == (first.generation, "ready")

    catalog.set_state("acme", "retained")
    assert catalog.list() == [] and [r.state for r in catalog.list(None)] == ["retained"]
    assert catalog.begin("acme").generation == first.generation  # same data, same generation

    assert catalog.remove("acme") and not catalog.remove("acme")
    assert catalog.get("acme") is None and catalog.generation("acme") is None
    assert catalog.begin("acme").generation != first.generation  # made afresh


@pytest.mark.parametrize("name", ["dagster", "system", "postgres", "cluster", "template1"])
def test_reserved_names_are_refused(catalog: ClusterCatalog, name: str) -> None:
    with pytest.raises(ReservedTenantError):
        tenant_name(name)
    with pytest.raises(ReservedTenantError):
        catalog.begin(name)


def test_an_embedded_home_made_before_the_catalog_is_adopted(tmp_path: Path) -> None:
    settings = AlienSettings(home=tmp_path / "home")
    TenantRegistry(settings).create("old-tenant")
    (settings.system_dir / "cluster.db").unlink()  # as a home from before the registry
    for suffix in ("-wal", "-shm"):
        (settings.system_dir / f"cluster.db{suffix}").unlink(missing_ok=True)
    (settings.tenants_dir / "not_a_tenant").mkdir()  # a stray directory is no tenant
    adopted = ClusterCatalog.sqlite(settings.system_dir / "cluster.db", settings.tenants_dir)
    assert [r.tenant for r in adopted.list()] == ["old-tenant"]


def test_a_tenant_recreated_elsewhere_is_never_served_from_old_handles(tmp_path: Path) -> None:
    """A long-lived process (the Data API) holds tenant handles; another process deletes the
    tenant and creates it again. The old key must stop working at once, and the new tenant
    must be served from its new stores."""
    settings = api_settings(tmp_path / "home")
    registry = TenantRegistry(settings)
    old = registry.create("tenant-g")
    key, _ = create_api_key(old, ["read"])
    env = {"ALIEN_HOME": str(settings.home), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    with TestClient(create_app(settings)) as client:
        auth = {"Authorization": f"Bearer {key}"}
        assert client.get("/v1/entries", headers=auth).status_code == 200
        for args in (("delete", "tenant-g"), ("create", "tenant-g")):
            subprocess.run([ALIEN, "tenant", *args, "--json"], env=env, check=True,
                           capture_output=True, timeout=300)  # fmt: skip
        assert client.get("/v1/entries", headers=auth).status_code == 401
        new = registry.open("tenant-g")
        assert new is not old and new.generation != old.generation
        assert new.catalog.api_key(key.split("_")[2]) is None
    subprocess.run([ALIEN, "tenant", "delete", "tenant-g"], env=env, check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    with pytest.raises(UnknownTenantError):
        registry.open("tenant-g")
