"""Ingestion sensor: a run per tenant that has pending entries or files in its inbox.

Per tick it reads, for each tenant, one indexed aggregate over pending entries and a listing of
the inbox folder (which the pipeline drains), never the whole catalog. The fingerprint of that
work is the run key, so a tick that sees the same work launches nothing twice, and the cursor
keeps the last fingerprint per tenant.
"""

import hashlib
import json

import dagster as dg

from alien.layout import INBOX
from alien_assets.jobs import ingest_job
from alien_assets.partitions import TENANTS
from resources.dagster_resources import AlienStoresResource
from resources.stores import TenantStores


def work_fingerprint(stores: TenantStores) -> str | None:
    """A fingerprint of the tenant's waiting work, or None when nothing waits."""
    inbox = sorted((i.key, i.size, i.mtime_ns) for i in stores.objects.list(INBOX))
    pending = stores.catalog.pending_marker()
    if not inbox and pending is None:
        return None
    raw = json.dumps({"inbox": inbox, "pending": pending})
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


@dg.sensor(
    job=ingest_job,
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches an ingest run for each tenant with pending entries or inbox files.",
)
def ingestion_sensor(
    context: dg.SensorEvaluationContext, stores: AlienStoresResource
) -> dg.SensorResult | dg.SkipReason:
    cursor: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    registry = stores.registry()
    tenants = [str(t) for t in registry.list()]
    known = set(context.instance.get_dynamic_partitions(TENANTS))
    new_partitions = [t for t in tenants if t not in known]
    requests = []
    # Where each tenant's own Data API pod ingests, a run here would do the same work twice.
    for tenant in [] if registry.settings.ingest_in_data_plane else tenants:
        fingerprint = work_fingerprint(registry.open(tenant))
        if fingerprint is None:
            cursor.pop(tenant, None)
            continue
        if cursor.get(tenant) == fingerprint:
            continue
        cursor[tenant] = fingerprint
        requests.append(
            dg.RunRequest(
                run_key=f"{tenant}:{fingerprint}",
                partition_key=tenant,
                tags={"alien/trigger": "ingestion_sensor"},
            )
        )
    for gone in set(cursor) - set(tenants):
        cursor.pop(gone)
    if not requests and not new_partitions:
        return dg.SkipReason(f"no new work in {len(tenants)} tenant(s)")
    return dg.SensorResult(
        run_requests=requests,
        cursor=json.dumps(cursor, sort_keys=True),
        dynamic_partitions_requests=(
            [dg.AddDynamicPartitionsRequest(TENANTS, new_partitions)] if new_partitions else []
        ),
    )
