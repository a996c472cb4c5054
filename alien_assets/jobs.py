"""The ingest job: every pipeline asset (and its checks) for one tenant partition; the repair
job: consistency repair of one tenant.

The ingest job's partitioning (tenants) is inferred from the selected assets."""

import dagster as dg

from alien.repair import repair
from alien_assets.assets import GROUP
from alien_assets.partitions import tenant_partitions
from resources.dagster_resources import AlienStoresResource

# In-process: the embedding model loads once per run instead of once per step process.
ingest_job = dg.define_asset_job(
    "ingest",
    selection=dg.AssetSelection.groups(GROUP),
    executor_def=dg.in_process_executor,
    description="Bring a tenant's indexes up to date with its entries (incremental).",
    # Every event is in the run's event log (the UI); the console (`make dev`'s terminal)
    # gets warnings only, not a DEBUG line per event. Editable per run in the launchpad.
    config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
)


@dg.op(
    description="Compare the tenant's catalog with its object store and indexes; remove what "
    "the catalog does not know, and mark what a store lost for the next ingest run (which the "
    "ingestion sensor launches) to make again."
)
def repair_stores(context: dg.OpExecutionContext, stores: AlienStoresResource) -> None:
    report = repair(stores.for_tenant(context.partition_key))
    context.add_output_metadata(
        {
            "found": report.before,
            "entries_to_redo": report.entries_to_redo,
            "originals_missing": report.originals_missing,
            "rows_removed": report.rows_removed,
            "objects_removed": report.objects_removed,
            "deletions_finished": report.deletions_finished,
        }
    )
    context.log.info(f"repair of {context.partition_key}: {report}")


@dg.job(
    name="repair",
    partitions_def=tenant_partitions,
    description="Consistency repair of one tenant (`alien repair --tenant T` does the same, "
    "then runs ingest itself).",
)
def repair_job() -> None:
    repair_stores()
