"""The operator's kopf handlers, through kopf's own registry and sub-handler machinery, on the
real stores this machine runs (embedded; PostgreSQL + the S3-protocol server). The end-to-end
run with KopfRunner needs a Kubernetes API server and runs only when a kube-config is given."""

from __future__ import annotations

import contextvars
import importlib.util
import os
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import kopf
import pytest
from kopf._core.actions.execution import handler_var
from kopf._core.intents.registries import ChangingRegistry
from kopf._core.reactor.subhandling import subregistry_var

from alien.tenants import STEPS, check_tenant
from resources.settings import AlienSettings
from resources.stores import TenantRegistry
from tests.conftest import CLUSTER_SECRET, POSTGRES_ADMIN

HANDLERS = Path(__file__).resolve().parents[1] / "operator" / "handlers.py"


@pytest.fixture(scope="module")
def handlers() -> ModuleType:
    """operator/handlers.py loaded by path, its decorators filling a fresh kopf registry."""
    registry = kopf.OperatorRegistry()
    previous = kopf.get_default_registry()
    kopf.set_default_registry(registry)
    try:
        spec = importlib.util.spec_from_file_location("alien_operator_handlers", HANDLERS)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        kopf.set_default_registry(previous)
    module.registry = registry  # type: ignore[attr-defined]
    return module


def _reconcile(handlers: ModuleType, spec: dict, status: dict) -> tuple[list, kopf.Patch]:
    """Run ``reconcile`` as kopf does: with its registered handler as the parent and a
    sub-registry in context; kopf's ``register`` then records the sub-handlers there."""
    sub = ChangingRegistry()
    patch = kopf.Patch()
    parent = next(h for h in handlers.registry._changing.get_all_handlers() if h.reason == "create")

    def run() -> None:
        subregistry_var.set(sub)
        handler_var.set(parent)
        handlers.reconcile(spec=spec, patch=patch)

    contextvars.copy_context().run(run)
    return sub.get_all_handlers(), patch


def _run_all(handlers: ModuleType, spec: dict, status: dict) -> dict:
    subs, patch = _reconcile(handlers, spec, status)
    # Stable ids under the parent's: kopf keeps each one's progress in the status.
    assert [h.id for h in subs] == [*(f"reconcile/store-{s}" for s in STEPS), "reconcile/summarize"]
    for h in subs:
        h.fn(status=status, patch=patch, spec=spec, logger=None)
    return dict(patch.get("status", {}))


def test_handlers_are_registered_with_kopf(handlers: ModuleType) -> None:
    changing = [(h.id, str(h.reason) if h.reason else None, h.field)
                for h in handlers.registry._changing.get_all_handlers()]  # fmt: skip
    # create and resume share the id "reconcile"; the update handler watches spec only.
    assert ("reconcile", "create", None) in changing
    assert ("reconcile", None, None) in changing  # resume (on operator restart)
    assert ("reconcile/spec", "update", ("spec",)) in changing
    assert ("retire", "delete", None) in changing
    timers = {h.id: h for h in handlers.registry._spawning.get_all_handlers()}
    assert timers["drift"].interval == handlers.DRIFT_INTERVAL


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AlienSettings:
    monkeypatch.setenv("ALIEN_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    return AlienSettings(home=tmp_path)


def test_create_rerun_drift_and_retire_on_embedded_stores(
    handlers: ModuleType, embedded: AlienSettings
) -> None:
    spec = {"tenantId": "initech", "displayName": "Initech", "retention": "retain"}
    status = _run_all(handlers, spec, {})
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    assert all(check_tenant(embedded, "initech").values())
    assert status["namespace"] == "alien-t-initech"

    again = _run_all(handlers, spec, status)  # re-run: no change, no error
    assert [c["status"] for c in again["conditions"]] == ["True"] * (len(STEPS) + 1)

    # Drift: a store vanishes; the timer reports and recreates it.
    (TenantRegistry(embedded).tenant_dir("initech") / "keywords.db").unlink()
    assert check_tenant(embedded, "initech")["keywords"] is False
    patch = kopf.Patch()
    result = handlers.drift(spec=spec, status=again, patch=patch, logger=_Logger())
    assert result == {"repaired": ["keywords"], "dataset_spaces": []}
    assert patch["status"]["stores"]["keywords"]["reason"] == "Recreated"
    assert all(check_tenant(embedded, "initech").values())

    # Delete with retain: the partition goes, the data stays; then with delete: all goes.
    handlers.retire(spec=spec, logger=_Logger())
    state = check_tenant(embedded, "initech")
    assert state["partition"] is False and state["catalog"] is True
    progress = kopf.Patch()
    handlers.retire(spec={**spec, "retention": "delete"}, logger=_Logger(), patch=progress)
    assert progress["status"]["retirement"]["phase"] == "Retired"
    assert not any(check_tenant(embedded, "initech").values())
    handlers.retire(spec={**spec, "retention": "delete"}, logger=_Logger())  # idempotent


def test_an_unreachable_store_is_a_temporary_error_and_the_others_proceed(
    handlers: ModuleType,
    embedded: AlienSettings,
    monkeypatch: pytest.MonkeyPatch,
    postgres: Any,
    cluster_database: str,
) -> None:
    tenant = f"op-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("ALIEN_MODE", "cluster")
    monkeypatch.setenv("ALIEN_CLUSTER_DATABASE", cluster_database)
    monkeypatch.setenv("ALIEN_POSTGRES_URL", POSTGRES_ADMIN)
    monkeypatch.setenv("ALIEN_CLUSTER_SECRET", CLUSTER_SECRET)
    monkeypatch.setenv("ALIEN_S3_ENDPOINT", "127.0.0.1:1")  # nothing listens there
    monkeypatch.setenv("ALIEN_S3_SECURE", "false")
    spec = {"tenantId": tenant}
    subs, patch = _reconcile(handlers, spec, {})
    outcome = {}
    for h in subs[:-1]:
        try:
            h.fn(status={}, patch=patch, spec=spec, logger=None)
            outcome[h.id.split("/")[-1]] = "done"
        except kopf.TemporaryError as err:
            outcome[h.id.split("/")[-1]] = f"retry in {err.delay}"
    subs[-1].fn(status={}, patch=patch)
    try:
        assert outcome["store-objects"] == f"retry in {handlers.RETRY_DELAY}"
        assert outcome["store-catalog"] == "done" and outcome["store-partition"] == "done"
        conditions = {c["type"]: c for c in patch["status"]["conditions"]}
        assert conditions["ObjectsReady"]["status"] == "False"
        assert conditions["ObjectsReady"]["reason"] == "Unavailable"
        assert conditions["CatalogReady"]["status"] == "True"
        assert (
            conditions["Ready"]["status"] == "False" and "objects" in conditions["Ready"]["message"]
        )
        # The registry says the same: half-made, not served, the objects store failed.
        record = TenantRegistry(AlienSettings()).cluster.get(tenant)
        assert record.state == "provisioning" and record.stores["objects"][0] == "failed"
        assert not TenantRegistry(AlienSettings()).exists(tenant)
    finally:
        postgres.drop(tenant)


class _Logger:
    def info(self, *args: object) -> None: ...
    def warning(self, *args: object) -> None: ...


@pytest.mark.skipif(
    not os.environ.get("KUBECONFIG"),
    reason="needs a Kubernetes API server: set KUBECONFIG (none runs on this machine)",
)
def test_kopf_runner_against_a_real_cluster(tmp_path: Path) -> None:  # pragma: no cover
    """Apply the CRD, create a Tenant, wait for Ready and the namespace, delete it."""
    import time

    from kopf.testing import KopfRunner
    from kubernetes import client, config

    from resources.kube import crd
    from resources.provisioning import apply_kubernetes_objects

    config.load_kube_config()
    apply_kubernetes_objects([crd()])
    api = client.CustomObjectsApi()
    tenant = f"kr-{uuid.uuid4().hex[:8]}"
    body = {"apiVersion": "alien.ai/v1", "kind": "Tenant", "metadata": {"name": tenant},
            "spec": {"tenantId": tenant, "retention": "delete"}}  # fmt: skip
    os.environ.update(ALIEN_HOME=str(tmp_path), ALIEN_KUBE_APPLY="true")
    with KopfRunner(["run", "--standalone", "--all-namespaces", str(HANDLERS)]) as runner:
        api.create_cluster_custom_object("alien.ai", "v1", "tenants", body)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            obj = api.get_cluster_custom_object("alien.ai", "v1", "tenants", tenant)
            ready = [c for c in obj.get("status", {}).get("conditions", [])
                     if c["type"] == "Ready"]  # fmt: skip
            if ready and ready[0]["status"] == "True":
                break
            time.sleep(2)
        assert ready and ready[0]["status"] == "True"
        client.CoreV1Api().read_namespace(f"alien-t-{tenant}")
        api.delete_cluster_custom_object("alien.ai", "v1", "tenants", tenant)
        time.sleep(10)
    assert runner.exit_code == 0, runner.output


@pytest.fixture
def cluster(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    s3_server: Any,
    postgres: Any,
    cluster_database: str,
) -> AlienSettings:
    """Cluster mode on this machine's servers: PostgreSQL, the S3-protocol server, Qdrant's
    embedded mode; the keyword index stays embedded (no Meilisearch can run here)."""
    env = {
        "ALIEN_HOME": str(tmp_path),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "ALIEN_MODE": "cluster",
        "ALIEN_POSTGRES_URL": POSTGRES_ADMIN,
        "ALIEN_CLUSTER_SECRET": CLUSTER_SECRET,
        "ALIEN_S3_ENDPOINT": s3_server.endpoint,
        "ALIEN_S3_ACCESS_KEY": s3_server.access_key,
        "ALIEN_S3_SECRET_KEY": s3_server.secret_key,
        "ALIEN_S3_SECURE": "false",
        "ALIEN_QDRANT_URL": f"local:{tmp_path / 'qdrant'}",
        "ALIEN_QDRANT_API_KEY": "qdrant-cluster-key-of-at-least-32-bytes",
        "ALIEN_CLUSTER_DATABASE": cluster_database,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return AlienSettings()


def test_sub_handlers_on_cluster_stores(
    handlers: ModuleType, cluster: AlienSettings, projected_model: Path
) -> None:
    from resources.backends import BackendConfigError
    from resources.postgres import identifier, role_password
    from resources.provisioning import tenant_environment
    from resources.qdrant import collection_name
    from resources.s3objects import bucket_name

    tenant = f"op-{uuid.uuid4().hex[:8]}"
    spec = {"tenantId": tenant, "retention": "delete"}
    backends = TenantRegistry(cluster).backends
    try:
        status = _run_all(handlers, spec, {})
        ready = {c["type"]: c["status"] for c in status["conditions"]}
        assert set(ready.values()) == {"True"}, status["conditions"]
        assert backends.catalog.provisioner.exists(tenant)
        assert backends.objects.s3.bucket_exists(bucket_name(tenant))
        assert backends.vectors.admin.collection_exists(collection_name(tenant))
        rerun = _run_all(handlers, spec, status)  # re-run: no change, no error
        assert [(c["type"], c["status"]) for c in rerun["conditions"]] == [
            (c["type"], c["status"]) for c in status["conditions"]
        ]

        # Drift on three servers at once: a dropped database, bucket and collection.
        TenantRegistry(cluster).forget(tenant)
        backends.catalog.provisioner.drop(tenant)
        backends.objects.s3.remove_bucket(bucket_name(tenant))
        backends.vectors.admin.delete_collection(collection_name(tenant))
        missing = {k for k, v in check_tenant(cluster, tenant).items() if not v}
        assert missing == {"catalog", "objects", "vectors"}
        patch = kopf.Patch()
        result = handlers.drift(spec=spec, status=status, patch=patch, logger=_Logger())
        assert set(result["repaired"]) == missing
        assert all(check_tenant(cluster, tenant).values())
        stores = TenantRegistry(cluster).open(tenant)
        assert stores.catalog.engine.url.username == identifier(tenant)  # its own role
        assert stores.catalog.status_counts() == {}
        assert result["dataset_spaces"] == []

        # A dataset given a model of its own (through the tenant's Data API, which cannot
        # make a collection): the drift timer makes its space, once.
        stores.catalog.ensure_dataset("papers")
        stores.catalog.update_dataset("papers", {"embedding_model": str(projected_model)})
        result = handlers.drift(spec=spec, status=status, patch=kopf.Patch(), logger=_Logger())
        assert result["dataset_spaces"] == [f"papers: {projected_model}"]
        (space,) = [s for s, _ in stores.catalog.vector_spaces() if s.dataset == "papers"]
        assert backends.vectors.admin.collection_exists(backends.vectors.collection(tenant, space))
        again = handlers.drift(spec=spec, status=status, patch=kopf.Patch(), logger=_Logger())
        assert again["dataset_spaces"] == []

        generation = TenantRegistry(cluster).cluster.get(tenant).generation
        catalog_env = backends.catalog.tenant_env(tenant, generation)
        assert catalog_env.secrets == {
            "ALIEN_POSTGRES_PASSWORD": role_password(CLUSTER_SECRET, tenant, generation)
        }
        # Neither the S3 server without MinIO's admin API (no tenant user) nor Qdrant's local
        # mode can give a tenant's pod credentials of its own: the environment is refused.
        with pytest.raises(BackendConfigError):
            tenant_environment(cluster, tenant)
    finally:
        handlers.retire(spec=spec, logger=_Logger())
    assert not any(check_tenant(cluster, tenant).values())
    assert not backends.catalog.provisioner.exists(tenant)
    assert not backends.objects.s3.bucket_exists(bucket_name(tenant))


def test_a_condition_keeps_its_transition_time_while_its_status_holds(
    handlers: ModuleType,
) -> None:
    def state(ok: bool) -> dict[str, str]:
        return handlers._store_state(ok, "R", "m")

    required = (*STEPS, "kubernetes")
    stores = {step: state(True) for step in required}
    earlier = [
        {**c, "lastTransitionTime": "2026-01-01T00:00:00+00:00"}
        for c in handlers.conditions(stores, required)
    ]
    stores["vectors"] = state(False)
    now = {c["type"]: c for c in handlers.conditions(stores, required, earlier)}
    assert now["CatalogReady"]["lastTransitionTime"] == "2026-01-01T00:00:00+00:00"
    assert now["VectorsReady"]["lastTransitionTime"] != "2026-01-01T00:00:00+00:00"
    assert now["Ready"]["status"] == "False" and "vectors" in now["Ready"]["message"]
    # Ready waits for the tenant's objects when they are applied
    stores = {step: state(True) for step in STEPS}
    ready = {c["type"]: c for c in handlers.conditions(stores, required)}["Ready"]
    assert ready["status"] == "False" and ready["message"] == "waiting for: kubernetes"
