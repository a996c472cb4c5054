"""Kubernetes objects the operator applies, generated from the Tenant spec (no templates).

``crd()`` is shipped as YAML in ``operator/crd.yaml`` and in the Helm chart's ``files/`` (a
test keeps both equal to it); the control plane itself (operator, code location, Dagster's
instance) is the Helm chart ``helm/alien-data-cluster``. ``tenant_objects(spec, template)``
is what the operator creates for one tenant, with the chart's defaults (``TenantTemplate``),
and what ``alien tenant manifests T`` prints, with Secrets listed by key name only.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from resources.helm_values import DEFAULT_PROXY_LABELS, Placement, Probe, TenantTemplate
from resources.tenancy import TenantId

GROUP = "alien.ai"
VERSION = "v1"
KIND = "Tenant"
PLURAL = "tenants"
SYSTEM_NAMESPACE = "alien-system"
API_PORT = 8000
SECRET_NAME = "alien-tenant-credentials"
SETTINGS_NAME = "alien-tenant-settings"
# What a tenant's run pods read (Dagster's run launcher names them; each resolves in the
# tenant's own namespace): its settings, its credentials, Dagster's storage.
DAGSTER_STORAGE_SECRET = "alien-dagster-storage"
RUN_SERVICE_ACCOUNT = "alien-run"
RUN_ENV_CONFIG_MAPS = (SETTINGS_NAME,)
RUN_ENV_SECRETS = (SECRET_NAME, DAGSTER_STORAGE_SECRET)
# The keys of the tenant's credentials Secret (values: resources/provisioning.py).
SECRET_KEYS = (
    "ALIEN_MEILI_KEY",
    "ALIEN_POSTGRES_PASSWORD",
    "ALIEN_QDRANT_TOKEN",
    "ALIEN_S3_SECRET_KEY",
)
# The Data API's ALIEN_HOME (locks, its Dagster instance): a writable emptyDir, the root
# file system staying read-only.
HOME_MOUNT = "/var/lib/alien"
# What a container with a read-only root file system may write: /tmp and ALIEN_HOME.
WRITABLE_MOUNTS = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "home", "mountPath": HOME_MOUNT}]
WRITABLE_VOLUMES = [{"name": "tmp", "emptyDir": {}}, {"name": "home", "emptyDir": {}}]
CHART = "helm/alien-data-cluster"


class Quotas(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    storage_bytes: int = Field(default=10 * 1024**3, ge=0, alias="storageBytes")
    entries: int = Field(default=100_000, ge=0)
    ocr_pages_per_month: int = Field(default=10_000, ge=0, alias="ocrPagesPerMonth")


class Features(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    search: bool = True
    ocr: bool = True
    mistral_ocr: bool = Field(default=False, alias="mistralOcr")
    metadata_sync: bool = Field(default=True, alias="metadataSync")


class TenantSpec(BaseModel):
    """The ``spec`` of a Tenant object."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    tenant_id: str = Field(alias="tenantId", pattern=r"^[a-z0-9-]{3,40}$")
    display_name: str = Field(default="", alias="displayName", max_length=200)
    quotas: Quotas = Field(default_factory=Quotas)
    retention: Literal["delete", "retain"] = "delete"
    features: Features = Field(default_factory=Features)

    def namespace(self) -> str:
        return tenant_namespace(self.tenant_id)


def tenant_namespace(tenant: str) -> str:
    return f"alien-t-{TenantId(tenant)}"


def _labels(tenant: str | None = None, component: str | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/part-of": "alien-data-cluster",
              "app.kubernetes.io/managed-by": "alien-operator"}  # fmt: skip
    if tenant:
        labels["alien.ai/tenant"] = tenant
    if component:
        labels["app.kubernetes.io/component"] = component
    return labels


def _meta(name: str, namespace: str | None, tenant: str | None, component: str | None = None):
    meta: dict[str, Any] = {"name": name, "labels": _labels(tenant, component)}
    if namespace:
        meta["namespace"] = namespace
    return meta


# -- the tenant's objects ---------------------------------------------------------------------
def _probe(probe: Probe) -> dict[str, Any]:
    return {"httpGet": {"path": probe.path, "port": "http"},
            "initialDelaySeconds": probe.initial_delay_seconds,
            "periodSeconds": probe.period_seconds, "timeoutSeconds": probe.timeout_seconds,
            "failureThreshold": probe.failure_threshold}  # fmt: skip


def _placement(api: Placement) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if api.node_selector:
        out["nodeSelector"] = dict(api.node_selector)
    if api.tolerations:
        out["tolerations"] = list(api.tolerations)
    if api.affinity:
        out["affinity"] = dict(api.affinity)
    return out


def tenant_objects(
    spec: TenantSpec,
    *,
    template: TenantTemplate | None = None,
    config: dict[str, str] | None = None,
    secrets: dict[str, str] | None = None,
    dagster_storage: dict[str, str] | None = None,
    pull_secrets: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Namespace, network policies, quota, service accounts, settings, credentials, the Data
    API (Deployment, Service, disruption budget, autoscaler) and what Dagster's run launcher
    needs there, in the order they are applied.

    ``template`` is what the chart tells the operator (image, security contexts, the
    ``tenantDefaults`` values); ``config`` and ``secrets`` are the tenant's data-plane
    environment (``resources/provisioning.tenant_environment``): the ConfigMap carries
    ``config``, the Secret ``secrets``, and the Data API container reads both, nothing else.
    Without ``secrets`` the Secret lists its key names only (for review and GitOps).
    ``dagster_storage`` (the ``DAGSTER_PG_*`` of Dagster's run storage) is what the tenant's
    run pods add, to report their events; the Data API never reads it. ``pull_secrets`` are
    the chart's image pull Secrets as read in its namespace: copied into the tenant's, where
    its pods pull their image.
    """
    tpl = template or TenantTemplate()
    api = tpl.defaults.data_api
    t, ns = spec.tenant_id, spec.namespace()
    api_labels = {"app.kubernetes.io/name": "alien-data-api", "alien.ai/tenant": t}
    settings = {
        "ALIEN_HOME": HOME_MOUNT,
        **(config or {"ALIEN_MODE": "cluster"}),
        "ALIEN_TENANT": t,
        "ALIEN_QUOTA_ENTRIES": str(spec.quotas.entries),
        "ALIEN_OCR_MAX_PAGES_PER_MONTH": str(spec.quotas.ocr_pages_per_month),
        "ALIEN_OCR": "mistral" if spec.features.mistral_ocr else "local",
    }
    secret: dict[str, Any] = {
        **_meta(SECRET_NAME, ns, t),
        "annotations": {"alien.ai/keys": ",".join(sorted(secrets) if secrets else SECRET_KEYS)},
    }
    pod_annotations = {}
    if secrets is not None:
        # A renewed credential (the Qdrant JWT) changes this, which rolls the pods onto it.
        digest = hashlib.sha256(json.dumps(secrets, sort_keys=True).encode()).hexdigest()
        pod_annotations["alien.ai/credentials-sha256"] = digest
    proxy = tpl.defaults.proxy
    container = {
        "name": "data-api",
        "image": tpl.data_api_image(),
        "imagePullPolicy": tpl.image_pull_policy,
        # its ingest worker runs the pipeline for this tenant only
        "args": ["alien", "serve", "--host", "0.0.0.0", "--port", str(API_PORT)],
        "ports": [{"name": "http", "containerPort": API_PORT}],
        "envFrom": [{"configMapRef": {"name": SETTINGS_NAME}},
                    {"secretRef": {"name": SECRET_NAME}}],
        "readinessProbe": _probe(api.readiness_probe),
        "livenessProbe": _probe(api.liveness_probe),
        "startupProbe": _probe(api.startup_probe),
        "resources": api.resources.model_dump(),
        "securityContext": dict(tpl.security_context),
        "volumeMounts": WRITABLE_MOUNTS,
    }  # fmt: skip
    pod_spec: dict[str, Any] = {
        "serviceAccountName": "alien-data-api",
        "automountServiceAccountToken": False,
        "securityContext": dict(tpl.pod_security_context),
        **({"imagePullSecrets": list(tpl.image_pull_secrets)} if tpl.image_pull_secrets else {}),
        "containers": [container],
        "volumes": WRITABLE_VOLUMES,
        **_placement(api),
    }
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": api_labels},
        "template": {
            "metadata": {"labels": {**api_labels, **_labels(t, "data-api")},
                         **({"annotations": pod_annotations} if pod_annotations else {})},
            "spec": pod_spec,
        },
    }  # fmt: skip
    if not api.autoscaling.enabled:  # else the autoscaler owns the replica count
        deployment_spec = {"replicas": api.replicas, **deployment_spec}
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": ns, "labels": {**_labels(t), "alien.ai/tenant-namespace": "true"},
                      "annotations": {"alien.ai/display-name": spec.display_name}}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": _meta("default-deny", ns, t),
         "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": _meta("ingress-from-platform-proxy", ns, t),
         "spec": {
             "podSelector": {"matchLabels": api_labels},
             "policyTypes": ["Ingress"],
             "ingress": [{
                 "from": [{
                     "namespaceSelector": {"matchLabels": {
                         "kubernetes.io/metadata.name": proxy.namespace}},
                     "podSelector": {"matchLabels": dict(
                         proxy.pod_labels or DEFAULT_PROXY_LABELS)},
                 }],
                 "ports": [{"protocol": "TCP", "port": API_PORT}],
             }],
         }},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": _meta("egress-to-stores-and-dns", ns, t),
         "spec": {
             "podSelector": {},
             "policyTypes": ["Egress"],
             "egress": [
                 {"to": [{"namespaceSelector": {"matchLabels": {
                      "kubernetes.io/metadata.name": "kube-system"}},
                          "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                  "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
                 {"to": [{"namespaceSelector": {"matchLabels": {
                      "kubernetes.io/metadata.name": tpl.stores_namespace}}}],
                  "ports": [{"protocol": "TCP", "port": p} for p in tpl.store_ports]},
             ],
         }},
        {"apiVersion": "v1", "kind": "ResourceQuota",
         "metadata": _meta("alien-tenant-quota", ns, t),
         "spec": {"hard": {"requests.storage": str(spec.quotas.storage_bytes),
                           **{k: str(v) for k, v in tpl.defaults.quota.items()}}}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": _meta("alien-data-api", ns, t, "data-api"),
         "automountServiceAccountToken": False},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": _meta(RUN_SERVICE_ACCOUNT, ns, t, "run"),
         "automountServiceAccountToken": False},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": _meta(SETTINGS_NAME, ns, t), "data": settings},
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": secret,
         **({"stringData": dict(secrets)} if secrets is not None else {})},
    ]  # fmt: skip
    if spec.features.mistral_ocr:
        # Mistral's API is outside the cluster: HTTPS to public addresses only.
        private = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"]
        public = {"ipBlock": {"cidr": "0.0.0.0/0", "except": private}}
        https = [{"to": [public], "ports": [{"protocol": "TCP", "port": 443}]}]
        objects.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                        "metadata": _meta("egress-to-mistral-ocr", ns, t),
                        "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                                 "egress": https}})  # fmt: skip
    for pull in pull_secrets or []:
        objects.append({"apiVersion": "v1", "kind": "Secret", "type": pull["type"],
                        "metadata": _meta(pull["metadata"]["name"], ns, t),
                        "data": dict(pull["data"])})  # fmt: skip
    if dagster_storage is not None:
        objects.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                        "metadata": _meta(DAGSTER_STORAGE_SECRET, ns, t, "run"),
                        "stringData": dict(dagster_storage)})  # fmt: skip
    if tpl.run_launcher_role and tpl.launcher_subjects:
        # Dagster's daemon (and webserver) may create and watch run Jobs here, nothing else.
        objects.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                        "metadata": _meta("alien-run-launcher", ns, t, "run"),
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                                    "kind": "ClusterRole", "name": tpl.run_launcher_role},
                        "subjects": [dict(s) for s in tpl.launcher_subjects]})  # fmt: skip
    meta = _meta("alien-data-api", ns, t, "data-api")
    objects += [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
         "spec": deployment_spec},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta,
         "spec": {"selector": api_labels,
                  "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}},
    ]  # fmt: skip
    if api.pod_disruption_budget.enabled:
        objects.append({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta,
                        "spec": {"maxUnavailable": api.pod_disruption_budget.max_unavailable,
                                 "selector": {"matchLabels": api_labels}}})  # fmt: skip
    if api.autoscaling.enabled:
        scaling = api.autoscaling
        cpu = {
            "name": "cpu",
            "target": {
                "type": "Utilization",
                "averageUtilization": scaling.target_cpu_utilization_percentage,
            },
        }
        objects.append({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                        "metadata": meta,
                        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                                    "name": "alien-data-api"},
                                 "minReplicas": scaling.min_replicas,
                                 "maxReplicas": max(scaling.max_replicas, scaling.min_replicas),
                                 "metrics": [{"type": "Resource", "resource": cpu}]}})  # fmt: skip
    return objects


# -- what the operator itself needs -----------------------------------------------------------
def crd() -> dict[str, Any]:
    """The Tenant CustomResourceDefinition: structural schema, status subresource, columns."""
    condition = {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
        },
    }
    count = {"type": "integer", "format": "int64", "minimum": 0}
    spec = {
        "type": "object",
        "required": ["tenantId"],
        "properties": {
            "tenantId": {"type": "string", "pattern": "^[a-z0-9-]{3,40}$",
                         "x-kubernetes-validations": [{"rule": "self == oldSelf",
                                                       "message": "tenantId is immutable"}]},
            "displayName": {"type": "string", "maxLength": 200},
            "quotas": {"type": "object", "properties": {
                "storageBytes": count, "entries": count, "ocrPagesPerMonth": count}},
            "retention": {"type": "string", "enum": ["delete", "retain"], "default": "delete"},
            "features": {"type": "object", "properties": {
                name: {"type": "boolean"}
                for name in ("search", "ocr", "mistralOcr", "metadataSync")}},
        },
    }  # fmt: skip
    status = {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,  # kopf records its handlers' progress
        "properties": {
            "conditions": {"type": "array", "items": condition,
                           "x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["type"]},
            "namespace": {"type": "string"},
            "observedGeneration": {"type": "integer", "format": "int64"},
        },
    }  # fmt: skip
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}", "labels": _labels()},
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {"kind": KIND, "plural": PLURAL, "singular": "tenant",
                      "listKind": "TenantList", "shortNames": ["atn"]},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Tenant", "type": "string", "jsonPath": ".spec.tenantId"},
                    {"name": "Ready", "type": "string",
                     "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
                    {"name": "Retention", "type": "string", "jsonPath": ".spec.retention"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "required": ["spec"],
                    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "metadata": {"type": "object"}, "spec": spec,
                                   "status": status},
                }},
            }],
        },
    }  # fmt: skip


def shipped() -> dict[str, list[dict[str, Any]]]:
    """The generated YAML files (relative to the repository) and what each holds: the CRD,
    for ``kubectl apply`` and for the chart (which reads it from its own ``files/``)."""
    return {"operator/crd.yaml": [crd()], f"{CHART}/files/crd.yaml": [crd()]}


def to_yaml(objects: list[dict[str, Any]]) -> str:
    import yaml

    return "".join("---\n" + yaml.safe_dump(o, sort_keys=False) for o in objects)


def write_shipped(repo: Any) -> list[str]:
    """Write the generated YAML files under ``repo`` (``make manifests``); their paths."""
    from pathlib import Path

    header = "# Generated by resources/kube.py (make manifests): edit the code, not this file.\n"
    for name, objects in shipped().items():
        body = yaml_dump(objects[0]) if len(objects) == 1 else to_yaml(objects)
        (Path(repo) / name).write_text(header + body)
    return sorted(shipped())


def yaml_dump(obj: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)


if __name__ == "__main__":
    import sys

    print(", ".join(write_shipped(sys.argv[1] if len(sys.argv) > 1 else ".")))
