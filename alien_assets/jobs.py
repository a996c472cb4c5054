"""The ingest job: every pipeline asset (and its checks) for one tenant partition."""

import dagster as dg

from alien_assets.assets import GROUP
from alien_assets.partitions import tenant_partitions

# In-process: the embedding model loads once per run instead of once per step process.
ingest_job = dg.define_asset_job(
    "ingest",
    selection=dg.AssetSelection.groups(GROUP),
    partitions_def=tenant_partitions,
    executor_def=dg.in_process_executor,
    description="Bring a tenant's indexes up to date with its entries (incremental).",
)
