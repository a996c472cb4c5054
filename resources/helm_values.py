"""The Helm chart's values as typed models: the one source of ``values.yaml`` (every value
with its comment) and ``values.schema.json`` (Helm refuses unknown keys and wrong types).

``python -m resources.helm_values helm/alien-data-cluster`` writes both files (``make
manifests``); a test keeps them equal to these models. The operator reads the
``tenantDefaults`` section back (``TenantDefaults``) from the ConfigMap the chart renders, so
what an operator stamps on each tenant's Data API is typed once, here.

Kubernetes' own shapes (``resources``, ``affinity``, ``tolerations``, security contexts) are
passed through as objects: the API server validates them, and the chart tests validate every
rendered object against Kubernetes' schemas.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

Quantity = str | int | float


class Values(BaseModel):
    """A section of the values: camelCase keys, unknown keys refused."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


def _field(default: Any, description: str, **kw: Any) -> Any:
    if isinstance(default, BaseModel) or callable(default):
        factory = default if callable(default) else (lambda d=default: d.model_copy())
        return Field(default_factory=factory, description=description, **kw)
    return Field(default=default, description=description, **kw)


class Resources(Values):
    requests: dict[str, Quantity] = _field({}, "Guaranteed share, e.g. {cpu: 500m, memory: 1Gi}")
    limits: dict[str, Quantity] = _field({}, "Ceiling, e.g. {cpu: '2', memory: 3Gi}")


def _resources(cpu: str, memory: str, cpu_limit: str, memory_limit: str) -> Resources:
    return Resources(
        requests={"cpu": cpu, "memory": memory}, limits={"cpu": cpu_limit, "memory": memory_limit}
    )


class Placement(Values):
    """Where pods may be scheduled (Kubernetes' own shapes)."""

    node_selector: dict[str, str] = _field({}, "Node labels the pods require")
    tolerations: list[dict[str, Any]] = _field([], "Taints the pods tolerate")
    affinity: dict[str, Any] = _field({}, "Node and pod (anti-)affinity rules")


class Image(Values):
    repository: str = _field("ghcr.io/alien-data/cluster", "One image serves every component")
    tag: str = _field("", "Empty: the chart's appVersion")
    digest: str = _field(
        "",
        "Pin by digest (sha256:...; wins over the tag), e.g. for a mirror in an air-gapped site",
        pattern=r"^(sha256:[0-9a-f]{64})?$",
    )
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = _field(
        "IfNotPresent", "Kubernetes' imagePullPolicy"
    )


class ImageOverride(Values):
    repository: str = _field("", "Empty: the chart's image.repository")
    tag: str = _field("", "Empty: the chart's image tag")


class ServiceAccount(Values):
    create: bool = _field(True, "Create the operator's ServiceAccount")
    name: str = _field("", "Its name; empty: <release fullname>-operator")
    annotations: dict[str, str] = _field({}, "e.g. a workload-identity binding")


class Crds(Values):
    install: bool = _field(
        True,
        "Render the Tenant CRD. Set false where it is managed outside this release (GitOps, "
        "another release): an existing CRD is then never touched",
    )
    keep: bool = _field(
        True,
        "Annotate it helm.sh/resource-policy: keep, so uninstalling the release never deletes "
        "the CRD and with it every Tenant",
    )


# -- connections to the stores -----------------------------------------------------------------
class PostgresKeys(Values):
    username: str = _field("username", "Key of the user name in existingSecret")
    password: str = _field("password", "Key of the password in existingSecret")


SSLMODES = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class Postgres(Values):
    host: str = _field("", "Host of the server, e.g. alien-pg-rw.alien-system.svc (CloudNativePG)")
    port: int = _field(5432, "Port", ge=1, le=65535)
    database: str = _field(
        "postgres", "Database the admin connection opens (tenant databases are created beside)"
    )
    sslmode: SSLMODES = _field("prefer", "libpq sslmode")
    cluster_database: str = _field(
        "alien_cluster",
        "Database of the cluster catalog (the tenant registry), created if missing",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
    )
    existing_secret: str = _field(
        "",
        "Secret with a role allowed to CREATE DATABASE and CREATE ROLE (CloudNativePG's "
        "<cluster>-superuser has keys username and password)",
    )
    secret_keys: PostgresKeys = _field(PostgresKeys, "Key names inside existingSecret")


class ObjectStoreKeys(Values):
    access_key: str = _field("rootUser", "Key of the access key in existingSecret")
    secret_key: str = _field("rootPassword", "Key of the secret key in existingSecret")


class ObjectStore(Values):
    endpoint: str = _field("", "host:port of MinIO (or any S3), e.g. minio.alien-system.svc:9000")
    secure: bool = _field(True, "HTTPS to the endpoint")
    minio_admin: bool = _field(
        True, "The endpoint is MinIO: each tenant gets its own user and IAM policy"
    )
    bucket_prefix: str = _field("alien", "Tenant buckets are <prefix>-<tenant>")
    existing_secret: str = _field("", "Secret with the admin's keys")
    secret_keys: ObjectStoreKeys = _field(ObjectStoreKeys, "Key names inside existingSecret")


class ApiKeyRef(Values):
    api_key: str = _field("api-key", "Key of the API key in existingSecret")


class Qdrant(Values):
    url: str = _field("", "e.g. http://qdrant.alien-system.svc:6333 (JWT RBAC enabled)")
    existing_secret: str = _field("", "Secret with the cluster's API key (signs tenant JWTs)")
    secret_keys: ApiKeyRef = _field(ApiKeyRef, "Key names inside existingSecret")


class MasterKeyRef(Values):
    master_key: str = _field("master-key", "Key of the master key in existingSecret")


class Meilisearch(Values):
    url: str = _field("", "e.g. http://meilisearch.alien-system.svc:7700")
    existing_secret: str = _field("", "Secret with the master key (derives tenant keys)")
    secret_keys: MasterKeyRef = _field(MasterKeyRef, "Key names inside existingSecret")


class ClusterKey(Values):
    existing_secret: str = _field(
        "",
        "Secret with the key every tenant's store passwords are derived from (HMAC-SHA256); "
        "create it once (e.g. openssl rand -hex 32) and keep it",
    )
    secret_key: str = _field("cluster-secret", "Key inside existingSecret")


class StorePorts(Values):
    postgresql: int = _field(
        5432, "PostgreSQL (the catalogs and Dagster's storage)", ge=1, le=65535
    )
    object_store: int = _field(9000, "MinIO / S3", ge=1, le=65535)
    qdrant: int = _field(6333, "Qdrant (HTTP)", ge=1, le=65535)
    meilisearch: int = _field(7700, "Meilisearch", ge=1, le=65535)


class Stores(Values):
    namespace: str = _field(
        "alien-system",
        "Namespace the stores run in (Dagster's PostgreSQL too): tenants' pods may reach it "
        "on the ports below, nothing else",
    )
    ports: StorePorts = _field(StorePorts, "Ports the pods of the stores listen on (egress)")
    postgresql: Postgres = _field(Postgres, "PostgreSQL: the cluster catalog and tenant catalogs")
    object_store: ObjectStore = _field(ObjectStore, "MinIO / S3: raw documents and OCR output")
    qdrant: Qdrant = _field(Qdrant, "Qdrant: vectors, a collection per tenant")
    meilisearch: Meilisearch = _field(Meilisearch, "Meilisearch: keyword index per tenant")
    cluster_key: ClusterKey = _field(ClusterKey, "The cluster key (control plane only)")


class SecretKeyRef(Values):
    existing_secret: str = _field("", "Secret holding it; empty: not used")
    secret_key: str = _field("api-key", "Key inside existingSecret")


class Mistral(Values):
    api_key: SecretKeyRef = _field(SecretKeyRef, "Mistral OCR's API key (tenants with mistralOcr)")
    model: str = _field("mistral-ocr-latest", "Mistral OCR model")


class Platform(Values):
    url: str = _field("", "Where metadata sync posts; empty: the outbox only")
    cluster_id: str = _field("local", "This data cluster's name to the platform")
    token: SecretKeyRef = _field(
        lambda: SecretKeyRef(secret_key="token"), "The cluster's service credential (Bearer)"
    )


# -- control-plane workloads ---------------------------------------------------------------------
class Operator(Placement):
    enabled: bool = _field(True, "Deploy the Tenant operator (kopf)")
    resources: Resources = _field(_resources("100m", "256Mi", "1", "1Gi"), "Its resources")
    pod_annotations: dict[str, str] = _field({}, "Extra pod annotations")
    log_level: Literal["debug", "verbose", "quiet"] = _field("verbose", "kopf's verbosity")


class Service(Values):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = _field("ClusterIP", "Service type")
    port: int = _field(4000, "Port of the gRPC service", ge=1, le=65535)


class CodeLocation(Placement):
    enabled: bool = _field(True, "Deploy the Dagster code location (gRPC code server)")
    name: str = _field("alien_assets", "Location name in Dagster's workspace")
    replicas: int = _field(1, "Code server replicas", ge=1)
    resources: Resources = _field(_resources("250m", "1Gi", "2", "3Gi"), "Its resources")
    pod_annotations: dict[str, str] = _field({}, "Extra pod annotations")
    service: Service = _field(Service, "The Service the webserver and daemon dial")


class DagsterPostgres(Values):
    host: str = _field("", "PostgreSQL host of Dagster's run, event-log and schedule storage")
    port: int = _field(5432, "Port", ge=1, le=65535)
    database: str = _field("alien_dagster", "Database (created beforehand)")
    username: str = _field("dagster", "Dagster's role")
    sslmode: SSLMODES = _field("prefer", "libpq sslmode")
    existing_secret: str = _field(
        "",
        "Secret with that role's password: the one Dagster's chart reads too "
        "(its global.postgresqlSecretName)",
    )
    secret_key: str = _field(
        "postgresql-password", "Key of the password (the key Dagster's chart reads)"
    )


class Gpu(Values):
    enabled: bool = _field(False, "Run ingestion (embedding, OCR) on GPU nodes")
    resource_name: str = _field("nvidia.com/gpu", "Extended resource a run pod requests")
    count: int = _field(1, "GPUs per run pod", ge=1)
    node_selector: dict[str, str] = _field({}, "Labels of the GPU nodes")
    tolerations: list[dict[str, Any]] = _field(
        lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "Taints of the GPU nodes",
    )


class RunLauncher(Placement):
    resources: Resources = _field(_resources("1", "2Gi", "2", "4Gi"), "Each run pod's resources")
    gpu: Gpu = _field(Gpu, "GPU ingestion")
    job_ttl_seconds_after_finished: int = _field(
        3600, "Finished run Jobs are removed after this", ge=0
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = _field(
        "IfNotPresent", "imagePullPolicy of run pods"
    )


class RunCoordinator(Values):
    max_concurrent_runs: int = _field(8, "Runs in flight across every tenant", ge=1)
    per_tenant_runs: int = _field(1, "Runs in flight per tenant (its partition)", ge=1)


class DaemonAccount(Values):
    name: str = _field("dagster", "ServiceAccount of Dagster's daemon (the companion release)")
    namespace: str = _field("", "Its namespace; empty: this release's")


class Dagster(Values):
    postgresql: DagsterPostgres = _field(DagsterPostgres, "Dagster's storage (dagster-postgres)")
    run_launcher: RunLauncher = _field(
        RunLauncher, "K8sRunLauncher: a tenant's runs are Jobs in its own namespace"
    )
    run_coordinator: RunCoordinator = _field(RunCoordinator, "QueuedRunCoordinator limits")
    daemon_service_account: DaemonAccount = _field(
        DaemonAccount, "Bound in each tenant namespace so the daemon may launch its run Jobs"
    )


# -- what the operator stamps on each tenant ----------------------------------------------------
class Autoscaling(Values):
    enabled: bool = _field(False, "A HorizontalPodAutoscaler for each tenant's Data API")
    min_replicas: int = _field(1, "Lower bound", ge=1)
    max_replicas: int = _field(4, "Upper bound", ge=1)
    target_cpu_utilization_percentage: int = _field(75, "Average CPU target", ge=1, le=100)


class DisruptionBudget(Values):
    enabled: bool = _field(True, "A PodDisruptionBudget for each tenant's Data API")
    max_unavailable: int = _field(1, "Pods a voluntary disruption may take at once", ge=0)


class Probe(Values):
    path: str = _field("/v1/health", "HTTP path")
    initial_delay_seconds: int = _field(0, "Delay before the first probe", ge=0)
    period_seconds: int = _field(10, "Interval", ge=1)
    timeout_seconds: int = _field(2, "Timeout", ge=1)
    failure_threshold: int = _field(3, "Failures before acting", ge=1)


class DataApiDefaults(Placement):
    image: ImageOverride = _field(ImageOverride, "Empty fields take the chart's image")
    replicas: int = _field(1, "Replicas (when autoscaling is off)", ge=0)
    resources: Resources = _field(_resources("500m", "1Gi", "2", "3Gi"), "Its resources")
    autoscaling: Autoscaling = _field(Autoscaling, "Horizontal autoscaling")
    pod_disruption_budget: DisruptionBudget = _field(DisruptionBudget, "Disruption budget")
    readiness_probe: Probe = _field(
        lambda: Probe(path="/v1/ready", period_seconds=10), "Ready: its stores answer"
    )
    liveness_probe: Probe = _field(
        lambda: Probe(path="/v1/health", period_seconds=20, failure_threshold=3),
        "Alive: the process answers",
    )
    startup_probe: Probe = _field(
        lambda: Probe(path="/v1/health", period_seconds=5, failure_threshold=60),
        "Started (loading the model may take a minute)",
    )


class Proxy(Values):
    namespace: str = _field("alien-platform", "Namespace of the callers of tenants' Data APIs")
    pod_labels: dict[str, str] = _field(
        {},
        "Labels of the calling pods; empty: app.kubernetes.io/name=platform-proxy (a map, not "
        "merged with a default: Helm would merge the two into one stricter selector)",
    )


DEFAULT_PROXY_LABELS = {"app.kubernetes.io/name": "platform-proxy"}


class TenantDefaults(Values):
    data_api: DataApiDefaults = _field(DataApiDefaults, "Each tenant's Data API Deployment")
    quota: dict[str, Quantity] = _field(
        lambda: {
            "pods": "10",
            "persistentvolumeclaims": "4",
            "requests.cpu": "4",
            "requests.memory": "8Gi",
            "limits.cpu": "8",
            "limits.memory": "16Gi",
        },
        "ResourceQuota of each tenant namespace (requests.storage comes from the Tenant)",
    )
    proxy: Proxy = _field(Proxy, "Who may call a tenant's Data API (NetworkPolicy)")


# -- the rest ------------------------------------------------------------------------------------
class NetworkPolicy(Values):
    enabled: bool = _field(
        True, "Default-deny in this release's namespace, then only the traffic it needs"
    )
    dagster_pod_labels: dict[str, str] = _field(
        {},
        "Labels of the Dagster webserver and daemon pods that dial the code server; empty: "
        "app.kubernetes.io/instance=dagster (the companion release's name)",
    )


class SkupperConnector(Values):
    tenant: str = _field("", "Tenant whose Data API is exposed", pattern=r"^[a-z0-9-]{3,40}$")
    routing_key: str = _field("", "Routing key; empty: alien-data-api-<tenant>")


class Skupper(Values):
    enabled: bool = _field(
        False, "A Skupper v2 site for on-premise clusters that connect outbound only"
    )
    site_name: str = _field("", "Site name; empty: the release fullname")
    connectors: list[SkupperConnector] = _field(
        [], "One Connector per tenant Data API; nothing else is exposed"
    )


class ChartValues(Values):
    """Values of the ``alien-data-cluster`` chart."""

    name_override: str = _field("", "Replaces the chart name in object names")
    full_name_override: str = _field(
        "", "Replaces <release>-<chart> in object names", alias="fullnameOverride"
    )
    image: Image = _field(Image, "The image of the operator, code server, run pods, Data APIs")
    image_pull_secrets: list[dict[str, str]] = _field([], "e.g. [{name: regcred}]")
    crds: Crds = _field(Crds, "The Tenant CustomResourceDefinition")
    service_account: ServiceAccount = _field(ServiceAccount, "The operator's ServiceAccount")
    pod_security_context: dict[str, Any] = _field(
        lambda: {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "Pod securityContext of every pod this chart and the operator create",
    )
    security_context: dict[str, Any] = _field(
        lambda: {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "Container securityContext (writable /tmp and ALIEN_HOME are emptyDir volumes)",
    )
    stores: Stores = _field(Stores, "Connections to the stores (never bundled)")
    mistral: Mistral = _field(Mistral, "Mistral OCR (optional)")
    platform: Platform = _field(Platform, "The platform half (metadata sync)")
    operator: Operator = _field(Operator, "The Tenant operator")
    code_location: CodeLocation = _field(CodeLocation, "Dagster code location for alien_assets")
    dagster: Dagster = _field(Dagster, "Dagster instance: storage, run launcher, coordinator")
    tenant_defaults: TenantDefaults = _field(
        TenantDefaults, "What the operator stamps on each tenant"
    )
    network_policy: NetworkPolicy = _field(NetworkPolicy, "NetworkPolicies of this namespace")
    skupper: Skupper = _field(Skupper, "Optional Skupper site (outbound-only clusters)")


# -- what the chart hands the operator ---------------------------------------------------------
IMAGE = "ghcr.io/alien-data/cluster:0.1.0"


class TenantTemplate(Values):
    """The chart's ``tenant-defaults.json``: what the operator stamps on every tenant. Its
    defaults (no chart) are the chart's defaults, for ``alien tenant manifests``."""

    image: str = _field(IMAGE, "The chart's image (operator, runs, Data API)")
    data_api_image_override: str = _field("", "tenantDefaults.dataApi.image, resolved")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = _field("IfNotPresent", "")
    image_pull_secrets: list[dict[str, str]] = _field([], "")
    pod_security_context: dict[str, Any] = _field(
        lambda: ChartValues.model_fields["pod_security_context"].get_default(
            call_default_factory=True
        ),
        "",
    )
    security_context: dict[str, Any] = _field(
        lambda: ChartValues.model_fields["security_context"].get_default(call_default_factory=True),
        "",
    )
    stores_namespace: str = _field("alien-system", "")
    store_ports: list[int] = _field(lambda: [5432, 9000, 6333, 7700], "")
    namespace: str = _field("", "The release's namespace (where image pull Secrets are)")
    run_launcher_role: str = _field("", "ClusterRole bound in each tenant namespace")
    launcher_subjects: list[dict[str, str]] = _field([], "Who launches runs (Dagster's daemon)")
    defaults: TenantDefaults = _field(TenantDefaults, "tenantDefaults")

    def data_api_image(self) -> str:
        return self.data_api_image_override or self.image

    @classmethod
    def load(cls, path: str | Path | None) -> TenantTemplate:
        """The file the chart mounts into the operator; no file: the defaults."""
        if not path:
            return cls()
        return cls.model_validate_json(Path(path).read_text())


# -- the two files -------------------------------------------------------------------------------
def schema() -> dict[str, Any]:
    """JSON schema (draft 7) of the values: every model inlined, additionalProperties false."""
    raw = ChartValues.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                target = defs[node["$ref"].rsplit("/", 1)[1]]
                extra = {k: v for k, v in node.items() if k != "$ref"}
                return {**inline(target), **inline(extra)}
            return {k: inline(v) for k, v in node.items() if k != "title"}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    out = inline(raw)
    out.pop("title", None)
    head = {"$schema": "http://json-schema.org/draft-07/schema#", "title": "alien-data-cluster"}
    return head | out


def _lines(model: type[BaseModel], values: dict[str, Any], indent: int) -> list[str]:
    import yaml

    pad = " " * indent
    out: list[str] = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        value = values[key]
        if field.description:
            out.extend(f"{pad}# {line}" for line in _wrap(field.description, 96 - indent))
        annotation = field.annotation
        nested = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if nested:
            out.append(f"{pad}{key}:")
            out.extend(_lines(annotation, value, indent + 2))
        elif isinstance(value, dict | list) and value:
            block = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=False)
            out.extend(pad + line for line in block.rstrip("\n").splitlines())
        else:
            out.append(f"{pad}{key}: {json.dumps(value)}")
    return out


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width=max(width, 40)) or [""]


def values_yaml() -> str:
    head = [
        "# Values of the alien-data-cluster chart. Generated from resources/helm_values.py",
        "# (make manifests): edit the models there; values.schema.json comes from them too.",
        "# The chart creates no Secret: every credential is an existingSecret you create first.",
        "",
    ]
    defaults = ChartValues().model_dump(by_alias=True, mode="json")
    return "\n".join(head + _lines(ChartValues, defaults, 0)) + "\n"


def write(chart: Path) -> list[str]:
    (chart / "values.yaml").write_text(values_yaml())
    (chart / "values.schema.json").write_text(json.dumps(schema(), indent=2) + "\n")
    return ["values.schema.json", "values.yaml"]


if __name__ == "__main__":
    import sys

    print(", ".join(write(Path(sys.argv[1] if len(sys.argv) > 1 else "helm/alien-data-cluster"))))
