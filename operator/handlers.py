"""kopf handlers of the Tenant resource: thin, each calling ``alien/tenants.py`` (stores through
``resources/provisioning.py``, then the Dagster partition).

Run with ``kopf run --standalone operator/handlers.py`` (loaded by path: there is no Python
package named ``operator``). Creating, resuming or changing a Tenant registers one sub-handler
per store with a stable id, so kopf records each one's completion in the object's status and
a retry never repeats finished work. A store that cannot be reached is a
``kopf.TemporaryError`` with a delay, never a sleep; its condition says why while the others
proceed. A timer re-checks every store and recreates what drifted away; deletion retires the
tenant per ``spec.retention`` behind kopf's finalizer.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any

import kopf

from alien.tenants import STEPS, check_tenant, provision_step, retire_tenant
from resources.helm_values import TenantTemplate
from resources.kube import GROUP, PLURAL, VERSION, TenantSpec, tenant_objects
from resources.provisioning import (
    apply_kubernetes_objects,
    prepare_dataset_spaces,
    read_secrets,
    tenant_environment,
)
from resources.settings import AlienSettings

RETRY_DELAY = 30
DRIFT_INTERVAL = 300


def _settings() -> AlienSettings:
    return AlienSettings()


def _template(settings: AlienSettings) -> TenantTemplate:
    """What the chart says to stamp on each tenant (its tenant-defaults.json)."""
    try:
        return TenantTemplate.load(settings.tenant_defaults_file)
    except (OSError, ValueError) as err:  # a broken file: say so on every tenant, retry
        raise kopf.TemporaryError(f"tenant defaults: {err}", delay=RETRY_DELAY) from err


def _dagster_storage() -> dict[str, str] | None:
    """Dagster's run-storage login, for the tenant's run pods to report their events (the
    chart gives it to the operator as DAGSTER_PG_*); None outside a chart install."""
    keys = ("DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD")
    if not os.environ.get(keys[0]) or keys[1] not in os.environ:  # an empty password is one
        return None
    return {k: os.environ[k] for k in keys}


def _spec(spec: Any) -> TenantSpec:
    try:
        return TenantSpec.model_validate(dict(spec))
    except ValueError as err:  # the CRD schema should have refused it already
        raise kopf.PermanentError(f"invalid Tenant spec: {err}") from None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _store_state(ok: bool, reason: str, message: str) -> dict[str, str]:
    return {"status": "True" if ok else "False", "reason": reason, "message": message[:500],
            "lastTransitionTime": _now()}  # fmt: skip


def _required() -> tuple[str, ...]:
    """What Ready waits for: every store, and in a cluster the tenant's objects too."""
    return (*STEPS, "kubernetes") if _settings().kube_apply else STEPS


def conditions(
    stores: dict[str, dict[str, str]],
    required: tuple[str, ...] = STEPS,
    previous: list[dict[str, str]] | None = None,
) -> list[dict[str, str]]:
    """One condition per step (``CatalogReady``, ..., ``KubernetesReady``) and ``Ready`` when
    every required one is True. A condition whose status did not change keeps the time of its
    last transition (``previous``: the conditions in the object's status now)."""
    out = [
        {"type": f"{step.capitalize()}Ready", **stores[step]}
        for step in (*STEPS, "kubernetes")
        if step in stores
    ]
    ready = all(stores.get(step, {}).get("status") == "True" for step in required)
    missing = [s for s in required if stores.get(s, {}).get("status") != "True"]
    out.append({"type": "Ready", "status": "True" if ready else "False",
                "reason": "AllReady" if ready else "Pending",
                "message": "" if ready else f"waiting for: {', '.join(missing)}",
                "lastTransitionTime": _now()})  # fmt: skip
    before = {c["type"]: c for c in previous or []}
    for condition in out:
        old = before.get(condition["type"])
        if old and old.get("status") == condition["status"] and old.get("lastTransitionTime"):
            condition["lastTransitionTime"] = old["lastTransitionTime"]
    return out


def store_step(step: str, tenant: str) -> Any:
    """The sub-handler of one store (a stable id ``store-<step>`` is given at registration)."""

    def handler(patch: kopf.Patch, **_: Any) -> dict[str, str]:
        try:
            message = provision_step(_settings(), tenant, step)
        except Exception as err:  # a dependency not reachable (yet): retry later, say why
            patch.status.setdefault("stores", {})[step] = _store_state(
                False, "Unavailable", f"{type(err).__name__}: {err}"
            )
            raise kopf.TemporaryError(f"{step}: {err}", delay=RETRY_DELAY) from err
        patch.status.setdefault("stores", {})[step] = _store_state(True, "Provisioned", message)
        return {"message": message}

    return handler


def summarize(status: Any, patch: kopf.Patch, **_: Any) -> None:
    """The last sub-handler: the conditions list, from every store's state."""
    stores = {**dict(status.get("stores", {})), **dict(patch.status.get("stores", {}))}
    previous = list(status.get("conditions", []))
    patch.status["conditions"] = conditions(stores, _required(), previous)


def kubernetes_step(tenant: TenantSpec) -> Any:
    """Namespace, policies, quota, account, settings, Secret (with values), Data API: the
    Data API's environment is exactly ``tenant_environment`` (``alien tenant env``)."""

    def handler(patch: kopf.Patch, body: Any = None, **_: Any) -> dict[str, Any]:
        try:
            settings = _settings()
            env = tenant_environment(settings, tenant.tenant_id)
            template = _template(settings)
            pulls = [s["name"] for s in template.image_pull_secrets]
            objects = tenant_objects(
                tenant,
                template=template,
                config=env.config,
                secrets=env.secrets,
                dagster_storage=_dagster_storage(),
                pull_secrets=read_secrets(template.namespace, pulls) if pulls else [],
            )
            for obj in objects:
                if obj["kind"] == "Namespace" and body is not None:
                    kopf.adopt(obj, owner=body)  # deleting the Tenant takes the namespace along
            count = apply_kubernetes_objects(objects)
        except Exception as err:
            patch.status.setdefault("stores", {})["kubernetes"] = _store_state(
                False, "ApplyFailed", f"{type(err).__name__}: {err}"
            )
            raise kopf.TemporaryError(f"kubernetes objects: {err}", delay=RETRY_DELAY) from err
        message = f"{count} objects applied in {tenant.namespace()}"
        patch.status.setdefault("stores", {})["kubernetes"] = _store_state(True, "Applied", message)
        return {"message": message}

    return handler


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def reconcile(spec: Any, patch: kopf.Patch, **_: Any) -> dict[str, str]:
    tenant = _spec(spec)
    for step in STEPS:
        kopf.register(store_step(step, tenant.tenant_id), id=f"store-{step}")
    if _settings().kube_apply:  # off outside a cluster (tests, `alien tenant create`)
        kopf.register(kubernetes_step(tenant), id="kubernetes")
    kopf.register(summarize, id="summarize")
    patch.status["namespace"] = tenant.namespace()
    return {"tenant": tenant.tenant_id}


@kopf.timer(GROUP, VERSION, PLURAL, interval=DRIFT_INTERVAL, idle=60, id="drift")
def drift(
    spec: Any, status: Any, patch: kopf.Patch, logger: Any, body: Any = None, **_: Any
) -> dict[str, Any]:
    """Re-check every store; recreate and report what is missing; make the vector spaces of
    datasets' own models. In a cluster, re-apply the tenant's objects too: the same objects
    change nothing, except the Secret once its Qdrant JWT enters the second half of its life
    (the token is fixed per half-lifetime window) or names a new collection."""
    tenant = _spec(spec).tenant_id
    settings = _settings()
    repaired = []
    stores = dict(status.get("stores", {}))
    for step, present in check_tenant(settings, tenant).items():
        if present:
            continue
        logger.warning(f"tenant {tenant}: {step} is missing; recreating it")
        try:
            provision_step(settings, tenant, step)
        except Exception as err:
            stores[step] = _store_state(False, "DriftRepairFailed", str(err))
            continue
        stores[step] = _store_state(True, "Recreated", f"{step} was missing and was recreated")
        repaired.append(step)
    # A dataset's own model, set through the tenant's Data API: its collection, which the
    # Secret re-applied below then names (the Secret's new digest rolls the pods onto it).
    spaces: list[str] = []
    try:
        spaces = prepare_dataset_spaces(settings, tenant)
    except Exception as err:  # a store that is not there: its own state says so
        logger.warning(f"tenant {tenant}: datasets' vector spaces not made: {err}")
    for made in spaces:
        logger.info(f"tenant {tenant}: made the vector space of dataset {made}")
    if settings.kube_apply:
        with contextlib.suppress(kopf.TemporaryError):  # reported in status by the step
            kubernetes_step(_spec(spec))(patch=patch, body=body)
        stores.update(patch.status.get("stores", {}))
    patch.status["stores"] = stores
    patch.status["conditions"] = conditions(stores, _required(), list(status.get("conditions", [])))
    return {"repaired": repaired, "dataset_spaces": spaces}


@kopf.on.delete(GROUP, VERSION, PLURAL)
def retire(spec: Any, logger: Any, patch: kopf.Patch | None = None, **_: Any) -> dict[str, str]:
    """Behind kopf's finalizer: the object goes only once this has succeeded."""
    tenant = _spec(spec)
    if patch is not None:
        patch.status["retirement"] = {"phase": "Retiring", "retention": tenant.retention,
                                      "since": _now()}  # fmt: skip
    try:
        message, _ = retire_tenant(_settings(), tenant.tenant_id, tenant.retention)
    except Exception as err:
        if patch is not None:
            patch.status["retirement"] = {"phase": "Failed", "message": str(err)[:500]}
        raise kopf.TemporaryError(f"retiring {tenant.tenant_id}: {err}", delay=RETRY_DELAY) from err
    logger.info(f"tenant {tenant.tenant_id}: {message}")
    if patch is not None:
        patch.status["retirement"] = {"phase": "Retired", "message": message, "at": _now()}
    return {"message": message}
