"""Metadata-only sync to the platform: a job, a schedule, and a sensor on change.

The job queues each tenant's dataset summaries in the outbox (when they changed) and drains
the outbox to ``ALIEN_PLATFORM_URL``. The schedule runs it every 15 minutes whatever happened,
so a platform that was down catches up; the sensor runs it as soon as a tenant's aggregates
change (its cursor keeps one fingerprint per tenant).
"""

import hashlib
import json

import dagster as dg

from alien.sync import sync_tenants
from resources.dagster_resources import AlienStoresResource


@dg.op(description="Queue changed dataset summaries and push the outbox to the platform.")
def push_metadata(context: dg.OpExecutionContext, stores: AlienStoresResource) -> None:
    registry = stores.registry()
    tenants = [registry.open(t) for t in registry.list()]
    report = sync_tenants(registry.settings, tenants)
    context.log.info(f"metadata sync: sent {report.sent}, pending {report.pending}")
    if report.error:
        # The messages stay in the outbox; the next tick or schedule tries again.
        raise dg.Failure(f"platform unreachable: {report.error}", allow_retries=True)


@dg.job(description="Push per-dataset metadata (never content) to the platform.")
def metadata_sync_job() -> None:
    push_metadata()


metadata_sync_schedule = dg.ScheduleDefinition(
    job=metadata_sync_job,
    cron_schedule="*/15 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Catch-up push of every tenant's dataset metadata.",
)


def stats_fingerprint(stores: object) -> str:
    stats = stores.catalog.entry_stats()  # type: ignore[attr-defined]
    datasets = [(d.name, d.updated_at.isoformat()) for d in stores.catalog.datasets()]  # type: ignore[attr-defined]
    raw = json.dumps([sorted(map(str, stats)), datasets])
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


@dg.sensor(
    job=metadata_sync_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Pushes metadata as soon as a tenant's datasets or entry counts change.",
)
def metadata_change_sensor(
    context: dg.SensorEvaluationContext, stores: AlienStoresResource
) -> dg.SensorResult | dg.SkipReason:
    cursor: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    registry = stores.registry()
    now = {str(t): stats_fingerprint(registry.open(t)) for t in registry.list()}
    changed = sorted(t for t, f in now.items() if cursor.get(t) != f)
    if not changed and set(cursor) == set(now):
        return dg.SkipReason(f"no change in {len(now)} tenant(s)")
    key = hashlib.sha256(json.dumps(now, sort_keys=True).encode()).hexdigest()[:20]
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"metadata:{key}", tags={"alien/changed": ",".join(changed)[:200]}
            )
        ],
        cursor=json.dumps(now, sort_keys=True),
    )
