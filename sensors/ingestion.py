"""Ingestion sensor: a run per tenant that has work waiting, and failed work relaunched.

Per tick and tenant it reads one indexed aggregate over waiting entries (pending ones, and
``processing`` ones whose run stopped renewing its claim), a listing of the inbox folder
(which the pipeline drains) and the tenant's latest run: never the whole catalog. The
fingerprint of the waiting work is the run key, so a tick that sees the same work launches
nothing twice. A change of a dataset's processing settings (its language, chunk window, OCR)
is work too: the cursor keeps a fingerprint of them per tenant, and a run is launched when it
changes. When the tenant's latest run failed (a store was down, its pod was lost) the
work is relaunched after a backoff that doubles per consecutive failure, with jitter, so an
outage is retried without a command and without a storm of runs.
"""

import hashlib
import json
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import dagster as dg

from alien.layout import INBOX
from alien.pipeline import processing_fingerprint
from alien.runner import backoff, run_ended
from alien_assets.jobs import ingest_job
from alien_assets.partitions import TENANTS
from resources.catalog import utcnow
from resources.dagster_resources import AlienStoresResource
from resources.settings import AlienSettings
from resources.stores import TenantStores

TOMBSTONE_GRACE = timedelta(seconds=30)
_ENDED_BADLY = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def work_fingerprint(
    stores: TenantStores, ended: Callable[[str], bool] | None = None
) -> str | None:
    """A fingerprint of the tenant's waiting work, or None when nothing waits: inbox files,
    pending entries, entries held by a run that ended (``ended``) or went silent, deletions
    a crash left unfinished (the run's first step finishes them), and a model change whose
    backfill has not switched searches over yet."""
    inbox = sorted((i.key, i.size, i.mtime_ns) for i in stores.objects.list(INBOX))
    stale = utcnow() - timedelta(seconds=stores.settings.claim_timeout_seconds)
    pending = stores.catalog.pending_marker(stale_before=stale)
    orphaned = sorted(c for c in stores.catalog.claims() if ended is not None and ended(c))
    # a deletion interrupted part-way (one in flight now is younger than this)
    tombstones = [e.id for e in stores.catalog.deleting(utcnow() - TOMBSTONE_GRACE, limit=1)]
    model = stores.model_work()  # a model change's backfill, or its re-chunking
    if not inbox and pending is None and not orphaned and not tombstones and model is None:
        return None
    raw = json.dumps(
        {"inbox": inbox, "pending": pending, "orphaned": orphaned, "tombstones": tombstones}
        | ({"model": model} if model else {})  # fingerprints of before a change stay the same
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def _state(value: Any) -> dict[str, Any]:
    """A tenant's cursor entry (a bare fingerprint in cursors from before relaunches)."""
    return dict(value) if isinstance(value, dict) else {"fp": value}


def _next_request(
    instance: dg.DagsterInstance,
    settings: AlienSettings,
    tenant: str,
    fingerprint: str,
    state: dict[str, Any],
) -> dg.RunRequest | None:
    """The run to launch for the tenant's waiting work now, if any; updates ``state``."""
    (latest,) = instance.get_run_records(
        dg.RunsFilter(tags={"dagster/partition": tenant}), limit=1
    ) or (None,)
    if latest is not None and latest.dagster_run.status in _ENDED_BADLY:
        if state.get("failed_run") != latest.dagster_run.run_id:  # a new failure: back off
            failures = int(state.get("failures", 0)) + 1
            ended = latest.end_time or time.time()
            state.update(
                failed_run=latest.dagster_run.run_id,
                failures=failures,
                retry_at=ended + backoff(settings, failures),
            )
        if state.get("retry_at") is None or time.time() < state["retry_at"]:
            return None  # relaunched already, or not yet time
        state.update(fp=fingerprint, retry_at=None)  # one relaunch per failure
        run_key = f"{tenant}:{fingerprint}:retry-{state['failures']}"
        trigger = "ingestion_sensor_retry"
    else:
        if latest is not None and latest.dagster_run.status == dg.DagsterRunStatus.SUCCESS:
            state.pop("failures", None)
            state.pop("failed_run", None)
            state.pop("retry_at", None)
        if state.get("fp") == fingerprint:
            return None
        state["fp"] = fingerprint
        run_key = f"{tenant}:{fingerprint}"
        trigger = "ingestion_sensor"
    return dg.RunRequest(run_key=run_key, partition_key=tenant, tags={"alien/trigger": trigger})


@dg.sensor(
    job=ingest_job,
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches an ingest run for each tenant with waiting work, and relaunches "
    "failed work with backoff.",
)
def ingestion_sensor(
    context: dg.SensorEvaluationContext, stores: AlienStoresResource
) -> dg.SensorResult | dg.SkipReason:
    cursor: dict[str, Any] = json.loads(context.cursor) if context.cursor else {}
    before = json.dumps(cursor, sort_keys=True)
    registry = stores.registry()
    tenants = [str(t) for t in registry.list()]
    known = set(context.instance.get_dynamic_partitions(TENANTS))
    new_partitions = [t for t in tenants if t not in known]
    requests = []
    ended = run_ended(context.instance)
    # Where each tenant's own Data API pod ingests, a run here would do the same work twice.
    for tenant in [] if registry.settings.ingest_in_data_plane else tenants:
        try:
            opened = registry.open(tenant)
            fingerprint = work_fingerprint(opened, ended)
            overrides = processing_fingerprint(
                (d.name, d.config) for d in opened.catalog.datasets()
            )
        except Exception as err:  # one tenant's broken state (or store) must not stop others
            context.log.warning(f"tenant {tenant}: no fingerprint ({type(err).__name__}: {err})")
            continue
        state = _state(cursor.get(tenant, {}))
        # A dataset's processing settings changed since the last run launched for them: the
        # run re-plans the entries they concern (the cursor keeps what was seen).
        changed = state.get("settings") != overrides
        if fingerprint is None and not changed:
            if overrides is None:
                cursor.pop(tenant, None)
            else:
                cursor[tenant] = {"settings": overrides}
            continue
        if changed:
            fingerprint = hashlib.sha256(f"{fingerprint}:{overrides}".encode()).hexdigest()[:20]
        request = _next_request(context.instance, registry.settings, tenant, fingerprint, state)
        if request is not None or not changed:
            state["settings"] = overrides
        if state.get("settings") is None:
            state.pop("settings", None)
        cursor[tenant] = state
        if request is not None:
            requests.append(request)
    for gone in set(cursor) - set(tenants):
        cursor.pop(gone)
    after = json.dumps(cursor, sort_keys=True)
    if not requests and not new_partitions and after == before:
        return dg.SkipReason(f"no new work in {len(tenants)} tenant(s)")
    return dg.SensorResult(
        run_requests=requests,
        skip_reason=None if requests else f"no run due in {len(tenants)} tenant(s)",
        cursor=after,
        dynamic_partitions_requests=(
            [dg.AddDynamicPartitionsRequest(TENANTS, new_partitions)] if new_partitions else []
        ),
    )
