"""Dagster's ``K8sRunLauncher``, with each tenant's runs launched into the tenant's namespace.

dagster-k8s picks a run's namespace from the launcher or the code location, never from the
run, and gives every run the same environment. A run of tenant T's partition must run beside
T's Data API, under T's NetworkPolicies and quota, holding T's credentials only; so for a run
tagged ``dagster/partition`` this launcher swaps, in the container context dagster-k8s
computes for the run (everything else is the parent's, unchanged):

- the namespace for ``alien-t-<tenant>``;
- the environment for what the operator applies in every tenant namespace: the settings
  ConfigMap, the credentials Secret and the Dagster-storage Secret, by name, so the very
  same names resolve to that tenant's objects; the launcher's own environment (the control
  plane's, for runs that belong to no tenant) is dropped, never merged;
- the ServiceAccount for the tenant's run account (no API token mounted).

Runs without a partition (metadata sync) keep the launcher's namespace and environment; a
run over a range of several tenants is refused.
"""

from __future__ import annotations

from typing import Any

from dagster import Array, Field
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext

from resources.kube import RUN_ENV_CONFIG_MAPS, RUN_ENV_SECRETS, RUN_SERVICE_ACCOUNT
from resources.kube import tenant_namespace as namespace_of

PARTITION_TAG = "dagster/partition"
RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")


def run_tenant(tags: dict[str, str]) -> str | None:
    """The tenant a run belongs to: its partition; a range of one partition is that one. A
    range over several tenants is refused: no pod may hold two tenants' credentials."""
    if tags.get(PARTITION_TAG):
        return tags[PARTITION_TAG]
    start, end = (tags.get(tag) for tag in RANGE_TAGS)
    if start is None and end is None:
        return None
    if start != end:
        raise ValueError(
            f"a run over tenants {start!r}..{end!r} would hold several tenants' credentials: "
            "launch one run per tenant partition"
        )
    return start


class TenantK8sRunLauncher(K8sRunLauncher):
    def __init__(
        self,
        *args: Any,
        tenant_env_config_maps: list[str] | None = None,
        tenant_env_secrets: list[str] | None = None,
        tenant_service_account_name: str = RUN_SERVICE_ACCOUNT,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.tenant_env_config_maps = list(tenant_env_config_maps or RUN_ENV_CONFIG_MAPS)
        self.tenant_env_secrets = list(tenant_env_secrets or RUN_ENV_SECRETS)
        self.tenant_service_account_name = tenant_service_account_name

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            **K8sRunLauncher.config_type(),
            "tenant_env_config_maps": Field(
                Array(str),
                is_required=False,
                description="ConfigMaps (by name, in the tenant's namespace) of a tenant's runs",
            ),
            "tenant_env_secrets": Field(
                Array(str),
                is_required=False,
                description="Secrets (by name, in the tenant's namespace) of a tenant's runs",
            ),
            "tenant_service_account_name": Field(
                str, is_required=False, description="ServiceAccount of a tenant's run pods"
            ),
        }

    def get_container_context_for_run(self, dagster_run: Any) -> K8sContainerContext:
        context = super().get_container_context_for_run(dagster_run)
        tenant = run_tenant(dagster_run.tags)
        if not tenant:
            return context
        run_config = context.run_k8s_config
        container = {
            key: value
            for key, value in run_config.container_config.items()
            if key not in ("env", "env_from")
        }
        container["env_from"] = [
            *({"config_map_ref": {"name": name}} for name in self.tenant_env_config_maps),
            *({"secret_ref": {"name": name}} for name in self.tenant_env_secrets),
        ]
        pod_spec = {
            **run_config.pod_spec_config,
            "service_account_name": self.tenant_service_account_name,
            "automount_service_account_token": False,
        }
        return context._replace(
            namespace=namespace_of(tenant),
            run_k8s_config=run_config._replace(
                container_config=container, pod_spec_config=pod_spec
            ),
        )
