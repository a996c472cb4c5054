"""Asset checks: cross-store consistency and quality, per tenant partition. Each is one of
``alien.checks``'s functions (what `alien check` runs), attached to the asset it judges."""

import warnings
from collections.abc import Callable, Sequence

import dagster as dg

from alien import checks
from alien_assets.assets import (
    chunks,
    embeddings,
    keyword_index,
    ocr_output,
    raw_documents,
    vector_index,
)
from alien_assets.partitions import tenant_partitions
from resources.dagster_resources import AlienStoresResource
from resources.stores import TenantStores

# Partitioned asset checks are a preview feature in Dagster 1.13; they are what lets a check
# report on one tenant, so the warning is expected.
warnings.filterwarnings(
    "ignore", category=dg.PreviewWarning, message=".*partitions_def on an AssetCheckSpec"
)


def _tenant_check(
    check: Callable[[TenantStores], checks.CheckResult],
    asset: dg.AssetsDefinition,
    also: Sequence[dg.AssetsDefinition],
    description: str,
) -> dg.AssetChecksDefinition:
    """The asset check of ``check`` on ``asset`` (after ``also``), for one tenant partition."""

    def evaluate(
        context: dg.AssetCheckExecutionContext, stores: AlienStoresResource
    ) -> dg.AssetCheckResult:
        result = check(stores.for_tenant(context.partition_key))
        return dg.AssetCheckResult(
            passed=result.passed,
            metadata=result.metadata,
            description=result.description,
            severity=dg.AssetCheckSeverity.ERROR,
        )

    return dg.asset_check(
        asset=asset,
        name=check.__name__,
        additional_deps=list(also),
        partitions_def=tenant_partitions,
        description=description,
    )(evaluate)


PIPELINE_CHECKS = [
    _tenant_check(
        checks.chunk_counts_agree,
        keyword_index,
        [vector_index],
        "Chunks = vectors = keyword documents, per entry, for the tenant.",
    ),
    _tenant_check(
        checks.vectors_match_model,
        vector_index,
        [],
        "Every vector comes from the configured model, with its dimension.",
    ),
    _tenant_check(
        checks.indexed_entries_have_text,
        embeddings,
        [keyword_index],
        "No indexed entry without text.",
    ),
    _tenant_check(
        checks.indexes_match_catalog,
        keyword_index,
        [vector_index],
        "Vector and keyword rows per entry = what the catalog recorded, and no row of an entry "
        "the catalog lacks; `alien repair` (or the repair job) puts it right.",
    ),
    _tenant_check(
        checks.objects_match_catalog,
        raw_documents,
        [ocr_output, chunks, embeddings],
        "Every original and derived object the catalog records is stored, and no object "
        "belongs to an entry the catalog lacks; `alien repair` puts it right.",
    ),
]
