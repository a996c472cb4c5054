"""The Dagster code location: assets, checks, job, sensors and resources."""

import dagster as dg

from alien_assets.assets import PIPELINE_ASSETS
from alien_assets.checks import PIPELINE_CHECKS
from alien_assets.jobs import ingest_job, repair_job
from resources.dagster_resources import AlienStoresResource
from sensors.ingestion import ingestion_sensor
from sensors.metadata_sync import (
    metadata_change_sensor,
    metadata_sync_job,
    metadata_sync_schedule,
)

defs = dg.Definitions(
    assets=PIPELINE_ASSETS,
    asset_checks=PIPELINE_CHECKS,
    jobs=[ingest_job, repair_job, metadata_sync_job],
    schedules=[metadata_sync_schedule],
    sensors=[ingestion_sensor, metadata_change_sensor],
    # The code server's settings (ALIEN_HOME and the rest, read once when a run's resources
    # are built); in-process runs (`alien ingest`, the API worker) pass their own settings.
    resources={"stores": AlienStoresResource()},
)
