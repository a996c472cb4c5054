"""Asset checks: cross-store consistency and quality, per tenant partition."""

import warnings

import dagster as dg

from alien import checks
from alien_assets.assets import embeddings, keyword_index, vector_index
from alien_assets.partitions import tenant_partitions
from resources.dagster_resources import AlienStoresResource

# Partitioned asset checks are a preview feature in Dagster 1.13; they are what lets a check
# report on one tenant, so the warning is expected.
warnings.filterwarnings(
    "ignore", category=dg.PreviewWarning, message=".*partitions_def on an AssetCheckSpec"
)


def _result(result: checks.CheckResult) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=result.passed,
        metadata=result.metadata,
        description=result.description,
        severity=dg.AssetCheckSeverity.ERROR,
    )


@dg.asset_check(
    asset=keyword_index,
    additional_deps=[vector_index],
    partitions_def=tenant_partitions,
    description="Chunks = vectors = keyword documents, per entry, for the tenant.",
)
def chunk_counts_agree(
    context: dg.AssetCheckExecutionContext, stores: AlienStoresResource
) -> dg.AssetCheckResult:
    return _result(checks.chunk_counts_agree(stores.for_tenant(context.partition_key)))


@dg.asset_check(
    asset=vector_index,
    partitions_def=tenant_partitions,
    description="Every vector comes from the configured model, with its dimension.",
)
def vectors_match_model(
    context: dg.AssetCheckExecutionContext, stores: AlienStoresResource
) -> dg.AssetCheckResult:
    return _result(checks.vectors_match_model(stores.for_tenant(context.partition_key)))


@dg.asset_check(
    asset=embeddings,
    additional_deps=[keyword_index],
    partitions_def=tenant_partitions,
    description="No indexed entry without text.",
)
def indexed_entries_have_text(
    context: dg.AssetCheckExecutionContext, stores: AlienStoresResource
) -> dg.AssetCheckResult:
    return _result(checks.indexed_entries_have_text(stores.for_tenant(context.partition_key)))


PIPELINE_CHECKS = [chunk_counts_agree, vectors_match_model, indexed_entries_have_text]
