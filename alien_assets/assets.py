"""Software-defined assets of the document pipeline, partitioned by tenant.

Each asset is a thin wrapper: it opens the partition's tenant stores and calls the step in
``alien.pipeline``, which does the incremental work and keeps large outputs in the tenant's
object store. Dagster's run storage gets only counts and timings.
"""

import contextlib
from collections.abc import Callable

import dagster as dg

from alien import pipeline
from alien.pipeline import StepReport
from alien.runner import PROCESS_TAG, process_id, run_ended
from alien_assets.partitions import tenant_partitions
from resources.dagster_resources import AlienStoresResource
from resources.outages import classify
from resources.stores import TenantStores

FULL_REFRESH_TAG = "alien/full_refresh"
GROUP = "documents"
# A busy SQLite file or a server that does not answer: retried with exponential backoff and
# jitter (about 2, 4 and 8 s), so runs of many tenants do not retry in step.
STORE_RETRY = dg.RetryPolicy(
    max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


def _full_refresh(context: dg.AssetExecutionContext) -> bool:
    return context.run.tags.get(FULL_REFRESH_TAG, "").lower() in ("1", "true", "yes")


def _progress(context: dg.AssetExecutionContext) -> pipeline.Progress:
    last = {"logged": 0}

    def report(step: str, done: int, total: int) -> None:
        listener = pipeline.progress_listener()
        if listener is not None:
            listener(step, done, total)
        if done == total or done - last["logged"] >= max(1, total // 10):
            last["logged"] = done
            context.log.info(f"{step}: {done}/{total}")

    return report


def _materialize(
    context: dg.AssetExecutionContext,
    stores: AlienStoresResource,
    step: Callable[[TenantStores, dg.AssetExecutionContext], StepReport],
) -> dg.MaterializeResult:
    tenant_stores: TenantStores | None = None
    if PROCESS_TAG not in context.run.tags:  # launched by the daemon: say which process runs it
        process = process_id()
        if process:
            context.instance.add_run_tags(context.run.run_id, {PROCESS_TAG: process})
    try:
        tenant_stores = stores.for_tenant(context.partition_key)
        with pipeline.claiming(tenant_stores, context.run.run_id):
            report = step(tenant_stores, context)
    except pipeline.RunCancelled as err:  # asked to stop: no retry, the next run resumes
        assert tenant_stores is not None
        released = pipeline.release(tenant_stores, context.run.run_id)
        raise dg.Failure(
            description=f"{err}; {released} entries are pending again", allow_retries=False
        ) from None
    except Exception as err:
        outage = classify(err)
        if outage is None:
            raise
        # Not the documents' fault: retried with backoff (STORE_RETRY), and after the last
        # try the entries wait, pending, for the next run (the sensor relaunches it).
        if tenant_stores is not None:
            with contextlib.suppress(Exception):  # the catalog may be the store that is down
                pipeline.release(tenant_stores, context.run.run_id)
        raise dg.Failure(
            description=f"{outage}; the entries stay pending for the next run",
            metadata={"store": outage.store},
        ) from err
    pipeline.record_report(report)
    context.log.info(f"{report.step} for {context.partition_key}: {report.metadata()}")
    return dg.MaterializeResult(metadata={"tenant": context.partition_key, **report.metadata()})


_ASSET = dict(
    partitions_def=tenant_partitions,
    retry_policy=STORE_RETRY,
    group_name=GROUP,
)


@dg.asset(
    description="Originals of the tenant's entries (inbox drained into the catalog).", **_ASSET
)
def raw_documents(
    context: dg.AssetExecutionContext, stores: AlienStoresResource
) -> dg.MaterializeResult:
    return _materialize(
        context,
        stores,
        lambda s, ctx: pipeline.run_raw_documents(
            s, _full_refresh(ctx), _progress(ctx), run_ended=run_ended(ctx.instance)
        ),
    )


@dg.asset(
    deps=[raw_documents],
    description="Page text of each entry: PDF text layer, OCR for scanned pages.",
    kinds={"ocr"},
    **_ASSET,
)
def ocr_output(
    context: dg.AssetExecutionContext, stores: AlienStoresResource
) -> dg.MaterializeResult:
    return _materialize(
        context,
        stores,
        lambda s, ctx: pipeline.run_ocr_output(s, _full_refresh(ctx), _progress(ctx)),
    )


@dg.asset(
    deps=[ocr_output],
    description="Token-bounded chunks with page and character offsets.",
    **_ASSET,
)
def chunks(context: dg.AssetExecutionContext, stores: AlienStoresResource) -> dg.MaterializeResult:
    return _materialize(
        context, stores, lambda s, ctx: pipeline.run_chunks(s, _full_refresh(ctx), _progress(ctx))
    )


@dg.asset(
    deps=[chunks],
    description="One vector per chunk from the configured sentence-transformers model.",
    kinds={"pytorch"},
    **_ASSET,
)
def embeddings(
    context: dg.AssetExecutionContext, stores: AlienStoresResource
) -> dg.MaterializeResult:
    return _materialize(
        context,
        stores,
        lambda s, ctx: pipeline.run_embeddings(s, _full_refresh(ctx), _progress(ctx)),
    )


@dg.asset(
    deps=[embeddings],
    description="The tenant's vector collection (deterministic point ids).",
    **_ASSET,
)
def vector_index(
    context: dg.AssetExecutionContext, stores: AlienStoresResource
) -> dg.MaterializeResult:
    return _materialize(
        context,
        stores,
        lambda s, ctx: pipeline.run_vector_index(s, _full_refresh(ctx), _progress(ctx)),
    )


@dg.asset(
    deps=[chunks],
    description="The tenant's BM25 keyword index with typo tolerance.",
    **_ASSET,
)
def keyword_index(
    context: dg.AssetExecutionContext, stores: AlienStoresResource
) -> dg.MaterializeResult:
    return _materialize(
        context,
        stores,
        lambda s, ctx: pipeline.run_keyword_index(s, _full_refresh(ctx), _progress(ctx)),
    )


PIPELINE_ASSETS = [raw_documents, ocr_output, chunks, embeddings, vector_index, keyword_index]
