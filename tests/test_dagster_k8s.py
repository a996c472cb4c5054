"""Dagster's instance configuration from the chart loads in Dagster and instantiates its
classes: the run launcher (dagster-k8s), the queued run coordinator with its per-tenant
limit, and run, event-log and schedule storage on the real PostgreSQL (dagster-postgres).
Launched against a Kubernetes API (kmock), a tenant's run becomes a Job in that tenant's
namespace holding that tenant's settings and credentials and no key of the control plane."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import kmock
import kubernetes_validate
import pytest
import yaml
from dagster import DagsterInstance
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.launcher import LaunchRunContext
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.test_utils import create_run_for_test

from tests.kube_api import BackgroundKMock, write_kubeconfig
from tests.test_helm_chart import NAMESPACE, instance_config, render, value_set

JOBS = kmock.resource("batch", "v1", "jobs")


def _chart_instance(tmp_path: Path, database: str, value_file: str) -> dict[str, Any]:
    """The chart's dagster.yaml, its PostgreSQL being this machine's."""
    docs = render(
        value_set(value_file),
        {"dagster": {"postgresql": {"host": "127.0.0.1", "database": database,
                                    "sslmode": "disable"}}},
        tmp=tmp_path,
    )  # fmt: skip
    return instance_config(docs)


def _in_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, port: int) -> None:
    """What a pod sees: the service host and port, its service account's token and CA."""
    from kubernetes.config import incluster_config

    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("run-launcher-token")
    ca.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(port))


def _home(tmp_path: Path, config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster-home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("DAGSTER_PG_USERNAME", "postgres")
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "")
    return home


def test_the_charts_instance_loads_and_instantiates_its_classes(
    tmp_path: Path, dagster_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_k8s import K8sRunLauncher
    from dagster_postgres import (
        PostgresEventLogStorage,
        PostgresRunStorage,
        PostgresScheduleStorage,
    )

    from alien_assets.launcher import TenantK8sRunLauncher

    config = _chart_instance(tmp_path, dagster_database, "production")
    _in_cluster(monkeypatch, tmp_path, 6443)  # construction reads the config, calls nothing
    instance = DagsterInstance.from_config(str(_home(tmp_path, config, monkeypatch)))
    try:
        launcher = instance.run_launcher
        assert type(launcher) is TenantK8sRunLauncher and isinstance(launcher, K8sRunLauncher)
        assert launcher.job_namespace == NAMESPACE
        assert launcher.tenant_env_secrets == ["alien-tenant-credentials", "alien-dagster-storage"]
        assert isinstance(instance._run_storage, PostgresRunStorage)
        assert isinstance(instance._event_storage, PostgresEventLogStorage)
        assert isinstance(instance._schedule_storage, PostgresScheduleStorage)
        coordinator = instance.run_coordinator
        assert isinstance(coordinator, QueuedRunCoordinator)
        queue = coordinator.get_run_queue_config()
        assert queue.max_concurrent_runs == 20
        assert queue.tag_concurrency_limits == [
            {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 2}
        ]
        # the storage is real: a run written is read back from PostgreSQL
        run = create_run_for_test(instance, job_name="ingest", tags={"dagster/partition": "acme"})
        assert instance.get_run_by_id(run.run_id).tags["dagster/partition"] == "acme"
    finally:
        instance.dispose()


def _origin() -> JobPythonOrigin:
    pointer = ModuleCodePointer("alien_assets.definitions", "defs", working_directory=None)
    return JobPythonOrigin("ingest", RepositoryPythonOrigin(sys.executable, pointer))


def test_a_tenants_run_is_a_job_in_its_namespace_with_its_credentials_only(
    tmp_path: Path, dagster_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _chart_instance(tmp_path, dagster_database, "gpu")
    launcher = config["run_launcher"]["config"]
    control_plane = {e["name"] for e in launcher["run_k8s_config"]["container_config"]["env"]}
    assert "ALIEN_CLUSTER_SECRET" in control_plane  # what runs of no tenant get
    with BackgroundKMock() as api:
        api.handler.resources.load_bundled()
        # The same configuration, reaching the API through a kube-config instead of the pod's
        # service account (kmock speaks plain HTTP; in-cluster loading assumes HTTPS).
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url, "daemon-token")
        launcher.update(load_incluster_config=False, kubeconfig_file=str(kubeconfig))
        instance = DagsterInstance.from_config(str(_home(tmp_path, config, monkeypatch)))
        try:
            tenant_run = create_run_for_test(
                instance, job_name="ingest", tags={"dagster/partition": "acme"},
                job_code_origin=_origin(),
            )  # fmt: skip
            instance.run_launcher.launch_run(LaunchRunContext(tenant_run, workspace=None))
            control_run = create_run_for_test(
                instance, job_name="metadata_sync", job_code_origin=_origin()
            )
            instance.run_launcher.launch_run(LaunchRunContext(control_run, workspace=None))
        finally:
            instance.dispose()
        jobs = {
            (ns, obj["metadata"]["labels"]["dagster/run-id"]): obj.raw
            for (resource, ns, _), obj in api.handler.objects.items()
            if resource == JOBS
        }
    tenant_job = jobs[("alien-t-acme", tenant_run.run_id)]
    control_job = jobs[(NAMESPACE, control_run.run_id)]
    for job in (tenant_job, control_job):
        kubernetes_validate.validate(job, "1.33", strict=True)

    pod = tenant_job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["serviceAccountName"] == "alien-run"
    assert pod["automountServiceAccountToken"] is False
    assert container["envFrom"] == [
        {"configMapRef": {"name": "alien-tenant-settings"}},
        {"secretRef": {"name": "alien-tenant-credentials"}},
        {"secretRef": {"name": "alien-dagster-storage"}},
    ]
    names = {e["name"] for e in container.get("env", [])}
    assert not names & control_plane, names & control_plane  # no key of the control plane
    refs = [e for e in container.get("env", []) if "valueFrom" in e]
    assert refs == []
    # the chart's GPU ingestion, security and writable volumes reach the run pod
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/var/lib/alien", "/opt/dagster/dagster_home"} <= mounts
    assert tenant_job["spec"]["backoffLimit"] == 0

    # a run of no tenant stays in the release's namespace, with the control plane's settings
    (control,) = control_job["spec"]["template"]["spec"]["containers"]
    assert {e["name"] for e in control["env"]} >= control_plane


def test_the_companion_dagster_values_mirror_the_chart() -> None:
    """helm/dagster-values.yaml (Dagster's own chart: webserver, daemon) is what the chart
    renders for the guide's values: the daemon launches runs with this chart's launcher
    configuration and queue, on its storage, dialling its code server."""
    from alien.chart import NAMESPACE as GUIDE_NAMESPACE
    from alien.chart import OUTPUT, RELEASE, dagster_values
    from alien.chart import render as render_release
    from tests.test_helm_chart import HELM

    docs = render_release(HELM, value_set("minimal"))
    assert yaml.safe_load(OUTPUT.read_text()) == dagster_values(docs), "run python -m alien.chart"
    values = yaml.safe_load(OUTPUT.read_text())
    instance = instance_config(docs)
    launcher = values["runLauncher"]["config"]["customRunLauncher"]
    assert (
        launcher["class"] == "TenantK8sRunLauncher"
        and launcher["config"] == (instance["run_launcher"]["config"])
    )
    assert launcher["config"]["job_namespace"] == GUIDE_NAMESPACE
    (server,) = values["dagsterWebserver"]["workspace"]["servers"]
    service = next(d for d in docs if d["kind"] == "Service")
    assert server["host"] == f"{service['metadata']['name']}.{GUIDE_NAMESPACE}.svc"
    assert server["host"].startswith(f"{RELEASE}-code-location")
    assert values["postgresql"]["enabled"] is False  # no bundled database
    assert values["generatePostgresqlPasswordSecret"] is False  # no invented password
    limits = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert limits["tagConcurrencyLimits"][0]["key"] == "dagster/partition"


def test_a_run_over_several_tenants_is_refused() -> None:
    from alien_assets.launcher import run_tenant

    start, end = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
    assert run_tenant({"dagster/partition": "acme"}) == "acme"
    assert run_tenant({start: "acme", end: "acme"}) == "acme"
    assert run_tenant({}) is None
    with pytest.raises(ValueError, match="several tenants"):
        run_tenant({start: "acme", end: "globex"})
