"""Kubernetes objects of the data cluster, generated from the Tenant spec (no templates).

``crd()``, ``operator_rbac()`` and ``operator_deployment()`` are shipped as YAML in
``operator/`` (a test keeps the files equal to these functions); ``tenant_objects(spec)`` is
what the operator creates for one tenant, and what ``alien tenant manifests T`` prints, with
Secrets listed by key name only.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from resources.tenancy import TenantId

GROUP = "alien.ai"
VERSION = "v1"
KIND = "Tenant"
PLURAL = "tenants"
SYSTEM_NAMESPACE = "alien-system"
IMAGE = "ghcr.io/alien-data/cluster:0.1.0"
API_PORT = 8000
SECRET_NAME = "alien-tenant-credentials"
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
STORE_PORTS = {"postgresql": 5432, "minio": 9000, "qdrant": 6333, "meilisearch": 7700}


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
def tenant_objects(
    spec: TenantSpec,
    *,
    image: str = IMAGE,
    proxy_namespace: str = "alien-platform",
    stores_namespace: str = SYSTEM_NAMESPACE,
    config: dict[str, str] | None = None,
    secrets: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Namespace, network policies, quota, service account, settings, credentials, the Data
    API Deployment and Service, in the order they are applied.

    ``config`` and ``secrets`` are the tenant's data-plane environment
    (``resources/provisioning.tenant_environment``): the ConfigMap carries ``config``, the
    Secret ``secrets``, and the Data API container reads both, nothing else. Without
    ``secrets`` the Secret lists its key names only (for review and GitOps).
    """
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
    return [
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
                         "kubernetes.io/metadata.name": proxy_namespace}},
                     "podSelector": {"matchLabels": {
                         "app.kubernetes.io/name": "platform-proxy"}},
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
                      "kubernetes.io/metadata.name": stores_namespace}}}],
                  "ports": [{"protocol": "TCP", "port": p} for p in STORE_PORTS.values()]},
             ],
         }},
        {"apiVersion": "v1", "kind": "ResourceQuota",
         "metadata": _meta("alien-tenant-quota", ns, t),
         "spec": {"hard": {
             "requests.storage": str(spec.quotas.storage_bytes),
             "persistentvolumeclaims": "4",
             "pods": "10",
             "requests.cpu": "4",
             "requests.memory": "8Gi",
             "limits.cpu": "8",
             "limits.memory": "16Gi",
         }}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": _meta("alien-data-api", ns, t, "data-api"),
         "automountServiceAccountToken": False},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": _meta("alien-tenant-settings", ns, t), "data": settings},
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": secret,
         **({"stringData": dict(secrets)} if secrets is not None else {})},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": _meta("alien-data-api", ns, t, "data-api"),
         "spec": {
             "replicas": 1,
             "selector": {"matchLabels": api_labels},
             "template": {
                 "metadata": {"labels": {**api_labels, **_labels(t, "data-api")},
                              **({"annotations": pod_annotations} if pod_annotations else {})},
                 "spec": {
                     "serviceAccountName": "alien-data-api",
                     "automountServiceAccountToken": False,
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                         "fsGroup": 10001,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{
                         "name": "data-api",
                         "image": image,
                         # its ingest worker runs the pipeline for this tenant only
                         "args": ["alien", "serve", "--host", "0.0.0.0",
                                  "--port", str(API_PORT)],
                         "ports": [{"name": "http", "containerPort": API_PORT}],
                         "envFrom": [{"configMapRef": {"name": "alien-tenant-settings"}},
                                     {"secretRef": {"name": SECRET_NAME}}],
                         "readinessProbe": {"httpGet": {"path": "/v1/ready", "port": "http"},
                                            "periodSeconds": 10},
                         "livenessProbe": {"httpGet": {"path": "/v1/health", "port": "http"},
                                           "periodSeconds": 20},
                         "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                                       "limits": {"cpu": "2", "memory": "3Gi"}},
                         "securityContext": {"allowPrivilegeEscalation": False,
                                             "readOnlyRootFilesystem": True,
                                             "capabilities": {"drop": ["ALL"]}},
                         "volumeMounts": WRITABLE_MOUNTS,
                     }],
                     "volumes": WRITABLE_VOLUMES,
                 },
             },
         }},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": _meta("alien-data-api", ns, t, "data-api"),
         "spec": {"selector": api_labels,
                  "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}},
    ]  # fmt: skip


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


def operator_rbac() -> list[dict[str, Any]]:
    """ServiceAccount, ClusterRole (least privilege) and binding of the operator."""
    verbs_rw = ["get", "list", "watch", "create", "patch", "update", "delete"]
    rules = [
        {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": verbs_rw},
        {"apiGroups": [""],
         "resources": ["serviceaccounts", "secrets", "configmaps", "services", "resourcequotas"],
         "verbs": verbs_rw},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": verbs_rw},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": verbs_rw},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
    ]  # fmt: skip
    return [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": SYSTEM_NAMESPACE, "labels": _labels()}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": _meta("alien-operator", SYSTEM_NAMESPACE, None, "operator")},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": _meta("alien-operator", None, None, "operator"), "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": _meta("alien-operator", None, None, "operator"),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "alien-operator"},
         "subjects": [{"kind": "ServiceAccount", "name": "alien-operator",
                       "namespace": SYSTEM_NAMESPACE}]},
    ]  # fmt: skip


def operator_deployment(image: str = IMAGE) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "alien-operator"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta("alien-operator", SYSTEM_NAMESPACE, None, "operator"),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # never two operators at once
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**labels, **_labels(None, "operator")}},
                "spec": {
                    "serviceAccountName": "alien-operator",
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "operator",
                        "image": image,
                        "args": ["kopf", "run", "--standalone", "--all-namespaces",
                                 "/app/operator/handlers.py"],
                        # ALIEN_HOME holds its Dagster instance file and step locks: the
                        # root file system is read-only, so it is an emptyDir.
                        "env": [{"name": "ALIEN_KUBE_APPLY", "value": "true"},
                                {"name": "ALIEN_HOME", "value": HOME_MOUNT},
                                {"name": "DAGSTER_HOME", "value": f"{HOME_MOUNT}/dagster"}],
                        "envFrom": [{"configMapRef": {"name": "alien-cluster-settings"}},
                                    {"secretRef": {"name": "alien-cluster-secrets"}}],
                        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                      "limits": {"cpu": "1", "memory": "1Gi"}},
                        "securityContext": {"allowPrivilegeEscalation": False,
                                            "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": WRITABLE_MOUNTS,
                    }],
                    "volumes": WRITABLE_VOLUMES,
                },
            },
        },
    }  # fmt: skip


def shipped() -> dict[str, list[dict[str, Any]]]:
    """The YAML files in ``operator/`` and what each holds."""
    return {
        "crd.yaml": [crd()],
        "rbac.yaml": operator_rbac(),
        "deployment.yaml": [operator_deployment()],
    }


def to_yaml(objects: list[dict[str, Any]]) -> str:
    import yaml

    return "".join("---\n" + yaml.safe_dump(o, sort_keys=False) for o in objects)


def write_shipped(directory: Any) -> list[str]:
    """Write the operator's YAML files (``make manifests``); returns their names."""
    from pathlib import Path

    header = "# Generated by resources/kube.py (make manifests): edit the code, not this file.\n"
    for name, objects in shipped().items():
        (Path(directory) / name).write_text(header + to_yaml(objects))
    return sorted(shipped())


if __name__ == "__main__":
    import sys

    print(", ".join(write_shipped(sys.argv[1] if len(sys.argv) > 1 else "operator")))
