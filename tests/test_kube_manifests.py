"""Every generated Kubernetes object, and the CRD, validate offline against the schemas of a
current Kubernetes; the shipped YAML is what the code generates; a Tenant validates against
the CRD's own schema."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from alien.cli import main
from resources.helm_values import TenantTemplate
from resources.kube import SECRET_KEYS, TenantSpec, crd, shipped, tenant_objects

K8S = "1.33"
REPO = Path(__file__).resolve().parents[1]
SPEC = TenantSpec.model_validate(
    {
        "tenantId": "acme",
        "displayName": "ACME Corp",
        "quotas": {"storageBytes": 5 * 1024**3, "entries": 50_000, "ocrPagesPerMonth": 2_000},
        "retention": "retain",
        "features": {"mistralOcr": True},
    }
)


# Every optional object on: autoscaler, disruption budget, run launcher binding, run storage.
FULL = TenantTemplate.model_validate(
    {
        "runLauncherRole": "alien-run-launcher",
        "launcherSubjects": [{"kind": "ServiceAccount", "name": "dagster", "namespace": "d"}],
        "defaults": {"dataApi": {"autoscaling": {"enabled": True}}},
    }
)


def _all_objects() -> list[dict]:
    full = tenant_objects(SPEC, template=FULL, dagster_storage={"DAGSTER_PG_PASSWORD": "x"})
    return [crd(), *tenant_objects(SPEC), *full]


@pytest.mark.parametrize(
    "obj", _all_objects(), ids=lambda o: f"{o['kind']}/{o['metadata']['name']}"
)
def test_object_validates_against_kubernetes_schemas(obj: dict) -> None:
    kubernetes_validate.validate(obj, K8S, strict=True)


def test_an_invalid_object_is_caught() -> None:
    """The validation can fail: a Deployment with a misspelt field does."""
    broken = next(o for o in tenant_objects(SPEC) if o["kind"] == "Deployment")
    broken["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S, strict=True)


def test_shipped_yaml_is_what_the_code_generates() -> None:
    for name, objects in shipped().items():
        on_disk = [d for d in yaml.safe_load_all((REPO / name).read_text()) if d]
        assert on_disk == objects, f"{name} is stale: run `make manifests`"


def test_tenants_validate_against_the_crd_schema() -> None:
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    good = {"apiVersion": "alien.ai/v1", "kind": "Tenant", "metadata": {"name": "acme"},
            "spec": SPEC.model_dump(by_alias=True)}  # fmt: skip
    jsonschema.validate(good, schema)
    for bad_spec in ({"tenantId": "Bad_Id"}, {"tenantId": "acme", "retention": "archive"},
                     {"tenantId": "acme", "quotas": {"entries": -1}}, {}):  # fmt: skip
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**good, "spec": bad_spec}, schema)


def test_tenant_objects_are_isolating() -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in tenant_objects(SPEC)}
    namespace = SPEC.namespace()
    assert all(o["metadata"].get("namespace", namespace) == namespace for o in objects.values())
    deny = objects[("NetworkPolicy", "default-deny")]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    secret = objects[("Secret", "alien-tenant-credentials")]
    assert "data" not in secret and "stringData" not in secret
    assert secret["metadata"]["annotations"]["alien.ai/keys"].split(",") == list(SECRET_KEYS)
    quota = objects[("ResourceQuota", "alien-tenant-quota")]["spec"]["hard"]
    assert quota["requests.storage"] == str(5 * 1024**3)
    pod = objects[("Deployment", "alien-data-api")]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_alien_tenant_manifests_prints_the_objects_without_secret_values() -> None:
    result = CliRunner().invoke(main, ["tenant", "manifests", "acme", "--retention", "retain"])
    assert result.exit_code == 0, result.output
    docs = [d for d in yaml.safe_load_all(result.output) if d]
    plain = TenantSpec(tenantId="acme", retention="retain")
    assert [d["kind"] for d in docs] == [o["kind"] for o in tenant_objects(plain)]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S, strict=True)
        if doc["kind"] == "Secret":
            assert "data" not in doc and "stringData" not in doc


def test_read_only_containers_write_only_to_their_empty_dirs() -> None:
    """The Data API's instance writes under ALIEN_HOME: with a read-only root file system,
    that path and /tmp must be emptyDir mounts (the chart's pods: tests/test_helm_chart.py)."""
    objects = tenant_objects(SPEC, template=FULL)
    settings = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            home = env.get("ALIEN_HOME") or (
                settings.get("ALIEN_HOME") if container.get("envFrom") else None
            )
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert home is not None, deployment["metadata"]["name"]
            assert mounts.get(home) in empty and mounts.get("/tmp") in empty
            assert env.get("DAGSTER_HOME", f"{home}/dagster").startswith(home)
