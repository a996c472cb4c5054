"""The real operator (``kopf run operator/handlers.py``, through kopf's KopfRunner) against a
Kubernetes API (kmock: no API server installs here) and the real stores (PostgreSQL, S3 with
MinIO's admin API, Qdrant, Meilisearch): a Tenant created is provisioned on the stores, its
objects are server-side applied with the operator's field manager, with the chart's tenant
defaults; its status conditions are written; a spec change is applied again; a delete is held
by kopf's finalizer until the stores are retired; and the objects it applied boot ``alien
serve`` for that tenant from their environment alone."""

from __future__ import annotations

import base64
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import kmock
import kopf
import kubernetes
import kubernetes_validate
import pytest
from kopf.testing import KopfRunner
from kubernetes.dynamic import DynamicClient
from sqlalchemy.engine import make_url

from alien.local_servers import LocalServers
from alien.tenants import check_tenant
from data_api.local import LocalServer
from resources.kube import GROUP, KIND, PLURAL, VERSION, crd
from resources.settings import AlienSettings
from tests.conftest import CLUSTER_SECRET, POSTGRES_ADMIN
from tests.kube_api import BackgroundKMock, write_kubeconfig
from tests.test_helm_chart import one, render, value_set

HANDLERS = Path(__file__).resolve().parents[1] / "operator" / "handlers.py"
TENANTS = kmock.resource(GROUP, VERSION, PLURAL)
FIELD_MANAGER = "alien-operator"


def wait_for(
    predicate: Callable[[], Any], timeout: float = 60.0, what: str = "", state: Any = None
) -> Any:
    """``predicate`` true within ``timeout``; else fail, showing ``state()`` (the Tenant's
    status: its conditions say why a step is being retried)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := predicate():
                return result
        except (KeyError, ValueError):  # not there yet
            pass
        time.sleep(0.1)
    shown = ""
    if state is not None:
        try:
            shown = json.dumps(state(), default=str)[:4000]
        except Exception as err:
            shown = repr(err)
    raise AssertionError(f"not within {timeout}s: {what or predicate}\n{shown}")


@pytest.fixture
def api() -> Iterator[BackgroundKMock]:
    """The Kubernetes API: every built-in kind, and the Tenant kind as the CRD declares it."""
    with BackgroundKMock() as server:
        server.handler.resources.load_bundled()
        names = crd()["spec"]["names"]
        server.handler.resources[TENANTS] = kmock.ResourceInfo(
            kind=names["kind"],
            singular=names["singular"],
            namespaced=crd()["spec"]["scope"] == "Namespaced",
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            subresources={"status"},
        )
        yield server


def pod_environment(
    container: dict[str, Any], configmaps: dict[str, dict[str, str]], secrets: dict[str, Any]
) -> dict[str, str]:
    """A container's environment as the kubelet builds it: ``envFrom`` ConfigMaps, then
    ``env`` in order, ``$(VAR)`` expanded from the variables defined before it, Secret keys
    resolved (a missing Secret or key fails, as the pod would)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        if "valueFrom" in var:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            env[var["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), var["value"]
            )
    return env


@pytest.fixture
def operator_env(
    tmp_path: Path,
    api: BackgroundKMock,
    servers: LocalServers,
    postgres: object,
    cluster_database: str,
    dagster_database: str,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """The operator's environment exactly as the chart builds it (its ConfigMap, its Secret
    references, the volumes it mounts), the Secrets holding the real servers' credentials."""
    admin = make_url(POSTGRES_ADMIN)
    values = {
        "imagePullSecrets": [{"name": "regcred"}],
        "stores": {
            "postgresql": {"host": admin.host, "port": admin.port or 5432,
                           "sslmode": "disable", "clusterDatabase": cluster_database},
            "objectStore": {"endpoint": servers.s3_endpoint, "secure": False},
            "qdrant": {"url": servers.qdrant_url},
            "meilisearch": {"url": servers.meili_url},
        },
        "dagster": {"postgresql": {"host": admin.host, "port": admin.port or 5432,
                                   "database": dagster_database, "sslmode": "disable",
                                   "username": admin.username}},
        "tenantDefaults": {"dataApi": {"autoscaling": {"enabled": True}}},
    }  # fmt: skip
    docs = render(value_set("minimal"), values, tmp=tmp_path)
    secrets = {  # the Secrets the guide has you create, with this machine's servers' keys
        "alien-pg-superuser": {"username": admin.username, "password": admin.password or ""},
        "minio-root": {"rootUser": servers.s3_access_key, "rootPassword": servers.s3_secret_key},
        "qdrant-api-key": {"api-key": servers.qdrant_api_key},
        "meilisearch-master-key": {"master-key": servers.meili_master_key},
        "alien-cluster-key": {"cluster-secret": CLUSTER_SECRET},
        "dagster-pg": {"postgresql-password": admin.password or ""},
    }
    configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    operator = one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]
    (container,) = operator["containers"]
    env = pod_environment(container, configmaps, secrets)
    # Each volume mounted where the container says, as a directory of this test.
    volumes = {v["name"]: v for v in operator["volumes"]}
    mounts = {}
    for mount in container["volumeMounts"]:
        directory = tmp_path / "volumes" / mount["name"]
        directory.mkdir(parents=True)
        for name, text in configmaps.get(
            volumes[mount["name"]].get("configMap", {}).get("name"), {}
        ).items():
            (directory / name).write_text(text)
        mounts[mount["mountPath"]] = directory
    for key, value in env.items():
        for path, directory in mounts.items():
            if value == path or value.startswith(path + "/"):
                env[key] = str(directory) + value[len(path) :]
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url, "operator-token")
    env["KUBECONFIG"] = str(kubeconfig)  # in a pod: its service account, in-cluster
    for key in [k for k in os.environ if k.startswith("ALIEN_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # The read-only parts of the container: its working directory and $HOME must stay empty.
    for part in ("rootfs-cwd", "rootfs-home"):
        (tmp_path / part).mkdir()
    monkeypatch.chdir(tmp_path / "rootfs-cwd")
    monkeypatch.setenv("HOME", str(tmp_path / "rootfs-home"))
    return env


def _client(env: dict[str, str]) -> DynamicClient:
    client = kubernetes.config.new_client_from_config(config_file=env["KUBECONFIG"])
    return DynamicClient(client)


def _condition(obj: Any, kind: str) -> str | None:
    for condition in obj.get("status", {}).get("conditions", []):
        if condition["type"] == kind:
            return condition["status"]
    return None


def test_the_operator_provisions_applies_reports_and_retires(
    api: BackgroundKMock, operator_env: dict[str, str], tmp_path: Path
) -> None:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=api.url, token="operator-token")

    tenant = f"k{uuid.uuid4().hex[:8]}"
    namespace = f"alien-t-{tenant}"
    stored = api.handler.objects
    client = _client(operator_env)
    tenants = client.resources.get(api_version=f"{GROUP}/{VERSION}", kind=KIND)
    settings = AlienSettings()
    instance_file = Path(operator_env["ALIEN_DAGSTER_HOME"]) / "dagster.yaml"
    instance_text = instance_file.read_text()
    # the image pull Secret the chart names, in the release's namespace
    registry_auth = base64.b64encode(b'{"auths": {"registry.example": {}}}').decode()
    client.resources.get(api_version="v1", kind="Secret").create(
        namespace="alien-control",
        body={"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
              "metadata": {"name": "regcred", "namespace": "alien-control"},
              "data": {".dockerconfigjson": registry_auth}},
    )  # fmt: skip
    args = ["run", "--standalone", "--all-namespaces", str(HANDLERS)]
    with KopfRunner(args, registry=registry, timeout=120) as runner:
        tenants.create(
            body={
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "metadata": {"name": tenant},
                "spec": {"tenantId": tenant, "displayName": "K Corp", "retention": "delete"},
            }
        )
        wait_for(
            lambda: _condition(stored[TENANTS, None, tenant], "Ready") == "True",
            timeout=120,
            what="Ready",
            state=lambda: stored[TENANTS, None, tenant].get("status"),
        )
        status = stored[TENANTS, None, tenant]["status"]
        assert status["namespace"] == namespace
        kinds = {c["type"]: c["status"] for c in status["conditions"]}
        assert kinds == dict.fromkeys(
            ["CatalogReady", "ObjectsReady", "VectorsReady", "KeywordsReady", "PartitionReady",
             "KubernetesReady", "Ready"], "True"
        )  # fmt: skip
        # kopf's finalizer holds the object
        assert (
            "kopf.zalando.org/KopfFinalizerMarker"
            in (stored[TENANTS, None, tenant]["metadata"]["finalizers"])
        )
        # the stores exist, on the real servers; the partition in the chart's Dagster instance
        assert all(check_tenant(settings, tenant).values())
        assert _has_partition(instance_file.parent, tenant)

        # every object was applied server-side, with the operator's field manager
        applies = [
            r
            for r in api.handler[kmock.method.PATCH]
            if r.headers.get("Content-Type", "").startswith("application/apply-patch")
        ]
        assert applies and all(r.params["fieldManager"] == FIELD_MANAGER for r in applies)
        applied = {(r.data["kind"], r.data["metadata"]["name"]) for r in applies}
        assert {
            ("Namespace", namespace),
            ("NetworkPolicy", "default-deny"),
            ("ConfigMap", "alien-tenant-settings"),
            ("Secret", "alien-tenant-credentials"),
            ("Secret", "alien-dagster-storage"),
            ("Secret", "regcred"),
            ("RoleBinding", "alien-run-launcher"),
            ("Deployment", "alien-data-api"),
            ("HorizontalPodAutoscaler", "alien-data-api"),  # autoscaling on
            ("PodDisruptionBudget", "alien-data-api"),
        } <= applied
        for request in applies:
            kubernetes_validate.validate(request.data, "1.33", strict=True)
        # owned by the Tenant: deleting it takes the namespace along
        ns = stored[kmock.resource("", "v1", "namespaces"), None, namespace]
        assert ns["metadata"]["ownerReferences"][0]["name"] == tenant

        # the chart's defaults reached the Data API
        deployment = stored[
            kmock.resource("apps", "v1", "deployments"), namespace, "alien-data-api"
        ]
        pod = deployment["spec"]["template"]["spec"]
        assert "replicas" not in deployment["spec"]  # the autoscaler owns it
        assert pod["containers"][0]["resources"]["limits"] == {"cpu": "2", "memory": "3Gi"}
        assert pod["containers"][0]["image"] == "ghcr.io/alien-data/cluster:0.1.0"
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        # ...which it finds in its own namespace, copied
        copied = stored[kmock.resource("", "v1", "secrets"), namespace, "regcred"]
        assert copied["data"] == {".dockerconfigjson": registry_auth}
        assert copied["type"] == "kubernetes.io/dockerconfigjson"
        # run pods find Dagster's storage login in the tenant's namespace
        storage = stored[kmock.resource("", "v1", "secrets"), namespace, "alien-dagster-storage"]
        assert storage["stringData"] == {
            "DAGSTER_PG_USERNAME": operator_env["DAGSTER_PG_USERNAME"],
            "DAGSTER_PG_PASSWORD": operator_env["DAGSTER_PG_PASSWORD"],
        }

        # a spec change is applied again
        settings_of = lambda: stored[  # noqa: E731
            kmock.resource("", "v1", "configmaps"), namespace, "alien-tenant-settings"
        ]["data"]
        assert settings_of()["ALIEN_QUOTA_ENTRIES"] == "100000"
        tenants.patch(
            name=tenant,
            body={"spec": {"quotas": {"entries": 1234}}},
            content_type="application/merge-patch+json",
        )
        wait_for(lambda: settings_of()["ALIEN_QUOTA_ENTRIES"] == "1234", what="re-applied")

        # the applied objects boot `alien serve` for this tenant, from their environment alone
        secret = stored[kmock.resource("", "v1", "secrets"), namespace, "alien-tenant-credentials"]
        _serve_from(settings_of(), secret["stringData"], tmp_path, tenant)

        # delete: held by the finalizer until the stores are retired
        tenants.delete(name=tenant)
        wait_for(lambda: stored[TENANTS, None, tenant].deleted, timeout=120, what="deleted")
        history = stored[TENANTS, None, tenant].history
        assert any(v is not None and "deletionTimestamp" in v["metadata"] for v in history)
        assert not any(check_tenant(settings, tenant).values())
        assert not _has_partition(instance_file.parent, tenant)
        assert not api.handler.errors
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output
    assert "Handler 'retire' succeeded" in runner.output
    # it wrote under ALIEN_HOME (its emptyDir), nowhere a read-only root would refuse
    assert any(Path(operator_env["ALIEN_HOME"]).rglob("*"))
    assert operator_env["ALIEN_HOME"].endswith("/volumes/home")
    assert not any((tmp_path / "rootfs-cwd").iterdir())
    assert not any((tmp_path / "rootfs-home").iterdir())
    assert instance_file.read_text() == instance_text  # the mounted ConfigMap: read only


def _has_partition(dagster_home: Path, tenant: str) -> bool:
    from dagster import DagsterInstance

    from alien_assets.partitions import TENANTS as PARTITIONS

    instance = DagsterInstance.from_config(str(dagster_home))
    try:
        return instance.has_dynamic_partition(PARTITIONS, tenant)
    finally:
        instance.dispose()


def _serve_from(config: dict[str, str], secrets: dict[str, str], tmp: Path, tenant: str) -> None:
    home = tmp / "data-api-home"  # the Data API pod's emptyDir
    env = {
        **config,
        **secrets,
        "ALIEN_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "PATH": os.environ["PATH"],
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    assert env["ALIEN_TENANT"] == tenant
    assert "ALIEN_CLUSTER_SECRET" not in env and "DAGSTER_PG_PASSWORD" not in env
    with LocalServer(env, tmp / "serve.log", timeout=180) as server:
        ready = httpx.get(f"{server.url}/v1/ready", timeout=30)
        assert ready.status_code == 200, ready.text
        assert json.loads(ready.text)["status"] == "ready", ready.text
