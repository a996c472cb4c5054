"""The ingest job: every pipeline asset (and its checks) for one tenant partition.

Partitioning (tenants) is inferred from the selected assets."""

import dagster as dg

from alien_assets.assets import GROUP

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
