"""Metadata-only sync to the platform: a sensor on change, a job that sends, a catch-up
schedule; a run only when there is something to send, so Dagster's runs list shows ingestion.

The sensor watches each tenant's aggregates (its cursor keeps one fingerprint per tenant).
Without a platform (no ``ALIEN_PLATFORM_URL``) it queues the changed summaries in the outbox
itself, a local write, and launches nothing: the outbox is the record. With one, a change
launches the job, which queues and sends where it runs (a run pod has its own disk). The
schedule (every 15 minutes) launches the job only when something may wait: unsent messages
here, or a last sync that failed, so a platform that was down catches up.
"""

import hashlib
import json

import dagster as dg

from alien.sync import dataset_summaries, outbox_for, sync_tenants
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


@dg.job(
    description="Push per-dataset metadata (never content) to the platform.",
    config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
)
def metadata_sync_job() -> None:
    push_metadata()


def _catch_up(context: dg.ScheduleEvaluationContext, stores: AlienStoresResource) -> str | None:
    """Why a catch-up sync should run now, or None: no platform, or nothing waits."""
    settings = stores.registry().settings
    if not settings.platform_url:
        return None
    waiting = outbox_for(settings).counts()["pending"]
    if waiting:
        return f"{waiting} messages wait"
    last = context.instance.get_runs(dg.RunsFilter(job_name=metadata_sync_job.name), limit=1)
    if last and last[0].status == dg.DagsterRunStatus.FAILURE:
        return "the last sync failed"
    return None


@dg.schedule(
    job=metadata_sync_job,
    cron_schedule="*/15 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Catch-up push when messages wait or the last sync failed (a platform was down).",
)
def metadata_sync_schedule(
    context: dg.ScheduleEvaluationContext, stores: AlienStoresResource
) -> dg.RunRequest | dg.SkipReason:
    reason = _catch_up(context, stores)
    if reason is None:
        return dg.SkipReason("nothing waits to be sent")
    return dg.RunRequest(tags={"alien/catch-up": reason})


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
    opened = {str(t): registry.open(t) for t in registry.list()}
    now = {t: stats_fingerprint(s) for t, s in opened.items()}
    changed = sorted(t for t, f in now.items() if cursor.get(t) != f)
    if not changed and set(cursor) == set(now):
        return dg.SkipReason(f"no change in {len(now)} tenant(s)")
    cursor_now = json.dumps(now, sort_keys=True)
    if not registry.settings.platform_url:
        outbox = outbox_for(registry.settings)
        queued = sum(outbox.add(t, dataset_summaries(opened[t])) is not None for t in changed)
        return dg.SensorResult(
            skip_reason=f"{queued} summaries queued in the outbox (no platform to send to)",
            cursor=cursor_now,
        )
    key = hashlib.sha256(cursor_now.encode()).hexdigest()[:20]
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"metadata:{key}", tags={"alien/changed": ",".join(changed)[:200]}
            )
        ],
        cursor=cursor_now,
    )
