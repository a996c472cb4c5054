"""The Helm chart, rendered by the real Helm 3 CLI for several value sets: every object
validates against Kubernetes 1.33's schemas, the security settings, secret wiring, run
launcher and per-tenant defaults are what the values say; ``helm lint`` passes; a values file
with an unknown key or a wrong type is refused; values.yaml and values.schema.json are what
the typed models generate."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, get_args

import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel

from resources.helm_values import ChartValues, TenantTemplate, schema, values_yaml
from resources.kube import TenantSpec, crd, tenant_objects

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "alien-data-cluster"
HELM = REPO / ".servers" / "bin" / "helm"
VALUE_SETS = ("minimal", "production", "gpu", "skupper")
K8S = "1.33"
NAMESPACE = "alien-control"
# Custom resources of other projects: no Kubernetes schema; checked field by field below.
FOREIGN = {("skupper.io/v2alpha1", "Site"), ("skupper.io/v2alpha1", "Connector")}


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if not HELM.exists():
        pytest.fail(f"the Helm CLI is not at {HELM}: run `make servers-install`")
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, check=check, timeout=120
    )


def render(*values: Path | dict[str, Any], tmp: Path | None = None) -> list[dict[str, Any]]:
    args = ["template", "r1", str(CHART), "--namespace", NAMESPACE]
    for i, v in enumerate(values):
        if isinstance(v, dict):
            assert tmp is not None
            path = tmp / f"extra-{i}.yaml"
            path.write_text(yaml.safe_dump(v))
            v = path
        args += ["-f", str(v)]
    out = helm(*args)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def value_set(name: str) -> Path:
    return CHART / "ci" / f"{name}-values.yaml"


def _merge(base: Any, override: Any) -> Any:
    """Helm's coalescing of a values file onto the defaults: maps merge, the rest replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in override.items()}}
    return override


def values_of(name: str) -> ChartValues:
    """The values the chart sees for a value set (the defaults, then the file)."""
    defaults = ChartValues().model_dump(by_alias=True, mode="json")
    return ChartValues.model_validate(_merge(defaults, yaml.safe_load(value_set(name).read_text())))


@pytest.fixture(scope="module", params=VALUE_SETS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(value_set(request.param))


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, (kind, suffix, [d["metadata"]["name"] for d in by_kind(docs, kind)])
    return found[0]


def instance_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    cm = one(docs, "ConfigMap", "-dagster-instance")
    return yaml.safe_load(cm["data"]["dagster.yaml"])


def template_of(docs: list[dict[str, Any]]) -> TenantTemplate:
    cm = one(docs, "ConfigMap", "-tenant-defaults")
    return TenantTemplate.model_validate_json(cm["data"]["tenant-defaults.json"])


# -- the files the models generate -------------------------------------------------------------
def test_values_files_are_what_the_models_generate() -> None:
    assert (CHART / "values.yaml").read_text() == values_yaml(), "run `make manifests`"
    on_disk = json.loads((CHART / "values.schema.json").read_text())
    assert on_disk == schema(), "run `make manifests`"
    # values.yaml is exactly the models' defaults
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert ChartValues.model_validate(defaults).model_dump() == ChartValues().model_dump()


def test_every_value_is_commented() -> None:
    """values.yaml writes each field's description above it: every field has one."""
    seen: set[type] = set()

    def walk(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            for arg in (field.annotation, *get_args(field.annotation)):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    walk(arg)

    walk(ChartValues)
    assert len(seen) > 20
    text = (CHART / "values.yaml").read_text()
    assert "# Runs in flight per tenant (its partition)\n    perTenantRuns: 1" in text


def test_the_chart_crd_is_the_generated_one() -> None:
    on_disk = yaml.safe_load((CHART / "files" / "crd.yaml").read_text())
    assert on_disk == crd()


# -- helm lint, schema refusals, required secrets ---------------------------------------------
@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_passes(name: str) -> None:
    out = helm("lint", "--strict", str(CHART), "-f", str(value_set(name)), check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"operator": {"replica": 2}}, "replica"),  # a misspelt key
        ({"unknownTopLevel": True}, "unknownTopLevel"),
        ({"codeLocation": {"replicas": "two"}}, "replicas"),  # a wrong type
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),  # not one of the choices
        ({"stores": {"postgresql": {"port": 70000}}}, "port"),  # out of range
        ({"image": {"digest": "latest"}}, "digest"),
        ({"skupper": {"connectors": [{"tenant": "Bad_Id"}]}}, "tenant"),
    ],
)
def test_a_bad_values_file_is_refused(bad: dict[str, Any], says: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    args = ["template", "r1", str(CHART), "-f", str(value_set("minimal")), "-f", str(path)]
    out = helm(*args, check=False)
    assert out.returncode != 0
    assert "schema" in out.stderr and says in out.stderr, out.stderr


@pytest.mark.parametrize(
    "missing",
    [
        "stores.postgresql.existingSecret",
        "stores.clusterKey.existingSecret",
        "stores.objectStore.existingSecret",
        "dagster.postgresql.existingSecret",
        "stores.qdrant.url",
    ],
)
def test_no_secret_means_no_render(missing: str, tmp_path: Path) -> None:
    """The chart never invents a credential: without the Secret's name it fails, saying so."""
    values = yaml.safe_load(value_set("minimal").read_text())
    node = values
    *path, leaf = missing.split(".")
    for key in path:
        node = node[key]
    del node[leaf]
    file = tmp_path / "values.yaml"
    file.write_text(yaml.safe_dump(values))
    out = helm("template", "r1", str(CHART), "-f", str(file), check=False)
    assert out.returncode != 0
    assert f"{missing} is required" in out.stderr, out.stderr


# -- every value set: schemas, security, secrets ------------------------------------------------
def test_every_object_validates_against_kubernetes(rendered) -> None:
    _, docs = rendered
    assert docs
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in FOREIGN:
            continue
        kubernetes_validate.validate(doc, K8S, strict=True)


def test_the_chart_creates_no_secret(rendered) -> None:
    _, docs = rendered
    assert by_kind(docs, "Secret") == []


def _pods(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in by_kind(docs, "Deployment")
    ]


def test_every_pod_is_locked_down(rendered) -> None:
    _, docs = rendered
    pods = _pods(docs)
    assert {name.rsplit("-", 1)[-1] for name, _ in pods} == {"operator", "location"}
    for name, pod in pods:
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, name
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in pod["containers"]:
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False, name
            assert csc["readOnlyRootFilesystem"] is True, name
            assert csc["capabilities"] == {"drop": ["ALL"]}, name
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            volumes = {v["name"]: v for v in pod["volumes"]}
            for writable in ("/tmp", "/var/lib/alien"):  # what the code writes: emptyDirs
                assert "emptyDir" in volumes[mounts[writable]], (name, writable)
            assert c["resources"]["limits"] and c["resources"]["requests"], name


def _secret_refs(docs: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    refs = {}
    for _, pod in _pods(docs):
        for c in pod["containers"]:
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs[env["name"]] = (ref["name"], ref["key"])
    return refs


def test_secrets_are_wired_from_the_existing_secrets(rendered) -> None:
    name, docs = rendered
    merged = values_of(name)
    s = merged.stores
    expected = {
        "ALIEN_POSTGRES_USER": (s.postgresql.existing_secret, s.postgresql.secret_keys.username),
        "ALIEN_POSTGRES_PASSWORD": (
            s.postgresql.existing_secret,
            s.postgresql.secret_keys.password,
        ),
        "ALIEN_CLUSTER_SECRET": (s.cluster_key.existing_secret, s.cluster_key.secret_key),
        "ALIEN_S3_ACCESS_KEY": (
            s.object_store.existing_secret,
            s.object_store.secret_keys.access_key,
        ),
        "ALIEN_S3_SECRET_KEY": (
            s.object_store.existing_secret,
            s.object_store.secret_keys.secret_key,
        ),
        "ALIEN_QDRANT_API_KEY": (s.qdrant.existing_secret, s.qdrant.secret_keys.api_key),
        "ALIEN_MEILI_MASTER_KEY": (
            s.meilisearch.existing_secret,
            s.meilisearch.secret_keys.master_key,
        ),
        "DAGSTER_PG_PASSWORD": (
            merged.dagster.postgresql.existing_secret,
            merged.dagster.postgresql.secret_key,
        ),
    }
    if merged.mistral.api_key.existing_secret:
        expected["MISTRAL_API_KEY"] = (
            merged.mistral.api_key.existing_secret,
            merged.mistral.api_key.secret_key,
        )
    if merged.platform.token.existing_secret:
        expected["ALIEN_PLATFORM_TOKEN"] = (
            merged.platform.token.existing_secret,
            merged.platform.token.secret_key,
        )
    assert _secret_refs(docs) == expected
    # no credential sits in the settings ConfigMap
    settings = one(docs, "ConfigMap", "-settings")["data"]
    assert not [k for k in settings if k.endswith(("_KEY", "_PASSWORD", "_TOKEN", "_SECRET"))]


def test_production_values_reach_the_objects() -> None:
    docs = render(value_set("production"))
    operator = one(docs, "Deployment", "-operator")
    pod = operator["spec"]["template"]["spec"]
    values = yaml.safe_load(value_set("production").read_text())
    image = f"{values['image']['repository']}@{values['image']['digest']}"
    assert pod["containers"][0]["image"] == image
    assert pod["imagePullSecrets"] == [{"name": "internal-registry"}]
    assert pod["nodeSelector"] == {"node-role.example.com/control": "true"}
    assert by_kind(docs, "CustomResourceDefinition") == []  # crds.install: false
    sa = one(docs, "ServiceAccount", "-operator")
    assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].startswith("alien-")
    assert one(docs, "Deployment", "-code-location")["spec"]["replicas"] == 2
    url = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}["ALIEN_POSTGRES_URL"]
    assert (
        url
        == "postgresql://$(ALIEN_POSTGRES_USER)@pg-main-rw.data-stores.svc:5432/postgres?sslmode=verify-full"
    )
    # Dagster in its own namespace still reaches the code server
    code = one(docs, "NetworkPolicy", "-code-location")["spec"]["ingress"][0]["from"][0]
    assert code["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "dagster"}
    binding = one(docs, "RoleBinding", "-run-launcher")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "dagster", "namespace": "dagster"}
    ]


def test_the_crd_is_kept_on_uninstall_by_default() -> None:
    docs = render(value_set("minimal"))
    (crd_doc,) = by_kind(docs, "CustomResourceDefinition")
    assert crd_doc["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    # a kept CRD is adopted by the next install only if it says it is Helm's
    assert crd_doc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert crd_doc["spec"] == crd()["spec"]


def test_network_policies_default_deny(rendered) -> None:
    _, docs = rendered
    deny = one(docs, "NetworkPolicy", "-default-deny")["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny and "egress" not in deny
    # the deny covers every pod of the release
    selector = deny["podSelector"]["matchLabels"]
    for _, pod_template in [(d, d["spec"]["template"]) for d in by_kind(docs, "Deployment")]:
        labels = pod_template["metadata"]["labels"]
        assert selector.items() <= labels.items()


def test_operator_rbac_is_least_privilege() -> None:
    docs = render(value_set("production"))  # autoscaling on: every kind it may apply
    role = one(docs, "ClusterRole", "-operator")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): r for r in role["rules"]}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert not {"escalate", "impersonate"} & set(rule["verbs"])
        if {"list", "watch"} & set(rule["verbs"]):  # what kopf watches, nothing else
            assert set(rule["resources"]) <= {"tenants", "customresourcedefinitions"}
        if "update" in rule["verbs"]:
            assert rule["resources"] == ["tenants/finalizers"]
    # Secrets: written by server-side apply, never read
    assert rules[(("",), ("secrets",))]["verbs"] == ["create", "patch", "delete"]
    # binding only the run launcher's role, by name
    (bind,) = [r for r in role["rules"] if "bind" in r["verbs"]]
    assert bind["verbs"] == ["bind"] and bind["resources"] == ["clusterroles"]
    assert bind["resourceNames"] == ["r1-alien-data-cluster-run-launcher"]
    # exactly the kinds it applies for a tenant, plus its own resource, events and kopf's needs
    kinds = {r for rule in role["rules"] if "bind" not in rule["verbs"] for r in rule["resources"]}
    template = template_of(docs)
    spec = TenantSpec.model_validate({"tenantId": "acme", "features": {"mistralOcr": True}})
    applied = {o["kind"] for o in tenant_objects(spec, template=template, dagster_storage={})}
    plural = {"Namespace": "namespaces", "NetworkPolicy": "networkpolicies",
              "ResourceQuota": "resourcequotas", "ServiceAccount": "serviceaccounts",
              "ConfigMap": "configmaps", "Secret": "secrets", "Deployment": "deployments",
              "Service": "services", "PodDisruptionBudget": "poddisruptionbudgets",
              "HorizontalPodAutoscaler": "horizontalpodautoscalers",
              "RoleBinding": "rolebindings"}  # fmt: skip
    own = {"tenants", "tenants/status", "tenants/finalizers", "customresourcedefinitions", "events"}
    assert {plural[k] for k in applied} | own == kinds
    # the image pull Secrets: read by name, in the release's namespace only
    pull = one(docs, "Role", "-operator-pull-secrets")
    assert pull["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
         "resourceNames": ["internal-registry"]}
    ]  # fmt: skip
    assert not [d for d in render(value_set("minimal")) if d["kind"] == "Role"]


# -- Dagster's instance ---------------------------------------------------------------------
def test_the_run_launcher_sends_tenant_runs_to_their_namespace(rendered) -> None:
    name, docs = rendered
    config = instance_config(docs)
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == (
        "alien_assets.launcher",
        "TenantK8sRunLauncher",
    )
    c = launcher["config"]
    assert c["tenant_env_config_maps"] == ["alien-tenant-settings"]
    assert c["tenant_env_secrets"] == ["alien-tenant-credentials", "alien-dagster-storage"]
    assert c["job_namespace"] == NAMESPACE
    assert c["load_incluster_config"] is True
    assert "postgres_password_secret" not in c  # that Secret does not exist in tenant namespaces
    storage = config["storage"]["postgres"]["postgres_db"]
    assert storage["password"] == {"env": "DAGSTER_PG_PASSWORD"}
    assert storage["scheme"] == "postgresql+psycopg2"
    limits = config["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert limits[0]["key"] == "dagster/partition"
    assert limits[0]["value"] == {"applyLimitPerUniqueValue": True}
    gpu = c["resources"]["limits"].get("nvidia.com/gpu")
    tolerations = c["run_k8s_config"]["pod_spec_config"].get("tolerations", [])
    if name == "gpu":
        assert gpu == "1"
        assert {
            "key": "nvidia.com/gpu",
            "operator": "Exists",
            "effect": "NoSchedule",
        } in tolerations
        assert c["run_k8s_config"]["pod_spec_config"]["node_selector"] == {
            "nvidia.com/gpu.present": "true"
        }
    else:
        assert gpu is None and tolerations == []


# -- what the operator stamps on each tenant ----------------------------------------------------
def test_tenant_defaults_reach_the_tenant_objects(rendered) -> None:
    name, docs = rendered
    template = template_of(docs)
    values = values_of(name)
    assert template.defaults == values.tenant_defaults
    objects = tenant_objects(TenantSpec(tenantId="acme"), template=template)
    for obj in objects:
        kubernetes_validate.validate(obj, K8S, strict=True)
    kinds = {o["kind"]: o for o in objects}
    api = values.tenant_defaults.data_api
    deployment = kinds["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    operator = one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]
    assert container["image"] == operator["containers"][0]["image"]
    assert container["resources"] == api.resources.model_dump()
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v1/health"
    assert pod["securityContext"] == values.pod_security_context
    assert container["securityContext"] == values.security_context
    assert ("HorizontalPodAutoscaler" in kinds) is api.autoscaling.enabled
    assert ("replicas" in deployment["spec"]) is (not api.autoscaling.enabled)
    assert ("PodDisruptionBudget" in kinds) is api.pod_disruption_budget.enabled
    binding = kinds["RoleBinding"]
    assert binding["roleRef"]["name"] == "r1-alien-data-cluster-run-launcher"
    (ingress,) = [o for o in objects if o["metadata"]["name"] == "ingress-from-platform-proxy"]
    peer = ingress["spec"]["ingress"][0]["from"][0]
    want = values.tenant_defaults.proxy.pod_labels or {"app.kubernetes.io/name": "platform-proxy"}
    assert peer["podSelector"]["matchLabels"] == want
    if name == "production":
        hpa = kinds["HorizontalPodAutoscaler"]["spec"]
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
        assert pod["affinity"]["podAntiAffinity"]
        assert kinds["ResourceQuota"]["spec"]["hard"]["pods"] == "20"


def test_skupper_site_exposes_only_the_data_apis() -> None:
    docs = render(value_set("skupper"))
    (site,) = [d for d in docs if d["kind"] == "Site"]
    assert site["apiVersion"] == "skupper.io/v2alpha1"
    assert site["spec"] == {"linkAccess": "none"}  # accepts no incoming link
    connectors = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Connector"}
    host = "alien-data-api.alien-t-{}.svc.cluster.local"
    assert connectors == {
        "alien-data-api-acme": {
            "routingKey": "alien-data-api-acme", "host": host.format("acme"), "port": 80
        },
        "alien-data-api-globex": {
            "routingKey": "globex-api", "host": host.format("globex"), "port": 80
        },
    }  # fmt: skip
    assert not [d for d in render(value_set("minimal")) if d["kind"] in ("Site", "Connector")]


def test_the_readme_lists_every_value_a_minimal_install_needs() -> None:
    """The guide's minimal values file is the one the tests render, and it sets every value
    the templates require."""
    import re

    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- minimal-values -->", 1)[1].split("```yaml\n", 1)[1]
    block = block.split("```", 1)[0]
    assert block == value_set("minimal").read_text()
    minimal = yaml.safe_load(block)
    templates = "".join(p.read_text() for p in (CHART / "templates").iterdir())
    required = set(re.findall(r'required "([\w.]+) is required', templates))
    required |= set(re.findall(r'"path" "([\w.]+)"', templates))
    # required only once their feature is on (Mistral, platform sync, an existing account)
    optional = {"mistral.apiKey.existingSecret", "platform.token.existingSecret",
                "serviceAccount.name"}  # fmt: skip
    assert len(required) > 8
    for path in required - optional:
        node: Any = minimal
        for key in path.split("."):
            assert isinstance(node, dict) and key in node, f"the guide does not set {path}"
            node = node[key]


def test_a_data_api_image_of_its_own(tmp_path: Path) -> None:
    extra = {"tenantDefaults": {"dataApi": {"image": {"tag": "0.1.1-api"}}}}
    docs = render(value_set("minimal"), extra, tmp=tmp_path)
    template = template_of(docs)
    assert template.image == "ghcr.io/alien-data/cluster:0.1.0"  # the operator's, the runs'
    assert template.data_api_image() == "ghcr.io/alien-data/cluster:0.1.1-api"
    objects = tenant_objects(TenantSpec(tenantId="acme"), template=template)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "ghcr.io/alien-data/cluster:0.1.1-api"


def _quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a number (cpu in cores, memory in bytes)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6,
             "G": 1e9}  # fmt: skip
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def test_a_tenants_quota_holds_its_data_apis_and_runs(rendered) -> None:
    """The quota the operator stamps leaves room for the most Data API pods (and one
    rollout's surge) beside the tenant's concurrent run pods: else the run never starts."""
    import math

    name, docs = rendered
    template = template_of(docs)
    api = template.defaults.data_api
    most = api.autoscaling.max_replicas if api.autoscaling.enabled else api.replicas
    api_pods = most + math.ceil(most / 4)  # maxSurge 25%
    config = instance_config(docs)
    runs = config["run_coordinator"]["config"]["tag_concurrency_limits"][0]["limit"]
    run_resources = config["run_launcher"]["config"]["resources"]
    objects = tenant_objects(TenantSpec(tenantId="acme"), template=template)
    (hard,) = [o["spec"]["hard"] for o in objects if o["kind"] == "ResourceQuota"]
    quota = {k: _quantity(v) for k, v in hard.items()}
    assert quota["pods"] >= api_pods + runs, name
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            need = api_pods * _quantity(getattr(api.resources, kind)[resource]) + runs * _quantity(
                run_resources[kind][resource]
            )
            assert quota[f"{kind}.{resource}"] >= need, (name, kind, resource, need)
    gpu = run_resources["limits"].get("nvidia.com/gpu")
    if gpu is not None:
        assert quota["requests.nvidia.com/gpu"] >= runs * _quantity(gpu)


def test_store_ports_reach_every_egress_rule(tmp_path: Path) -> None:
    extra = {"stores": {"ports": {"objectStore": 443, "meilisearch": 443}}}
    docs = render(value_set("minimal"), extra, tmp=tmp_path)
    wanted = [5432, 443, 6333]
    operator = one(docs, "NetworkPolicy", "-operator")["spec"]["egress"][1]
    assert [p["port"] for p in operator["ports"]] == wanted
    objects = tenant_objects(TenantSpec(tenantId="acme"), template=template_of(docs))
    (egress,) = [o for o in objects if o["metadata"]["name"] == "egress-to-stores-and-dns"]
    assert [p["port"] for p in egress["spec"]["egress"][1]["ports"]] == wanted
