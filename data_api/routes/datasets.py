"""Datasets: named groups of a tenant's entries, each with its configuration."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from alien.documents import delete_entry
from alien.pipeline import processing_fingerprint
from data_api.deps import MAX_OFFSET, Reader, Settings, Writer, page_size
from data_api.door import RequestContext
from data_api.errors import ApiError, error_responses, not_found
from data_api.schemas import (
    DatasetCreate,
    DatasetList,
    DatasetName,
    DatasetPublic,
    DatasetUpdate,
)
from resources.catalog import DEFAULT_DATASET

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
NamePath = Annotated[DatasetName, Path(description="Dataset name")]


@router.get("", responses=error_responses())
def list_datasets(
    ctx: Reader,
    settings: Settings,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> DatasetList:
    """The tenant's datasets, by name, a page at a time."""
    limit = page_size(limit, settings)
    rows = ctx.stores.catalog.datasets(limit=limit + 1, offset=offset)
    ctx.audit("list_datasets", detail=f"{min(len(rows), limit)} datasets")
    return DatasetList(
        datasets=[DatasetPublic.of(d) for d in rows[:limit]],
        limit=limit,
        offset=offset,
        next_offset=offset + limit if len(rows) > limit else None,
    )


@router.post("", status_code=201, responses=error_responses(409))
def create_dataset(body: DatasetCreate, ctx: Writer) -> DatasetPublic:
    """Create a dataset with its configuration."""
    created = ctx.stores.catalog.create_dataset(body.name, body.config.model_dump())
    if created is None:
        raise ApiError(409, "dataset_exists", f"dataset {body.name!r} exists", dataset=body.name)
    ctx.audit("create_dataset", dataset=body.name, status_code=201)
    return DatasetPublic.of(created)


@router.get("/{name}", responses=error_responses(404))
def get_dataset(name: NamePath, ctx: Reader) -> DatasetPublic:
    dataset = ctx.stores.catalog.dataset(name)
    if dataset is None:
        raise not_found("dataset", name, dataset=name)
    ctx.audit("get_dataset", dataset=name)
    return DatasetPublic.of(dataset)


@router.patch("/{name}", responses=error_responses(404))
def update_dataset(
    name: NamePath, body: DatasetUpdate, ctx: Writer, request: Request
) -> DatasetPublic:
    """Replace the dataset's configuration. A change of its processing settings (language,
    chunk window, OCR) reprocesses what it concerns in the tenant's next run, which the
    service's worker starts at once (under Dagster, the ingestion sensor's next tick)."""
    before = ctx.stores.catalog.dataset(name)
    dataset = ctx.stores.catalog.update_dataset(name, body.config.model_dump())
    if dataset is None or before is None:
        raise not_found("dataset", name, dataset=name)
    ctx.audit("update_dataset", dataset=name)
    worker = request.app.state.worker
    changed = processing_fingerprint([(name, before.config)]) != processing_fingerprint(
        [(name, dataset.config)]
    )
    if worker is not None and changed:
        worker.notify(ctx.stores.tenant)
    return DatasetPublic.of(dataset)


@router.delete("/{name}", status_code=204, responses=error_responses(404, 409))
def delete_dataset(name: NamePath, ctx: Writer) -> Response:
    """Delete the dataset and every entry in it, from every store."""
    if name == DEFAULT_DATASET:
        raise ApiError(409, "dataset_protected", "the default dataset cannot be deleted")
    removed = _delete_dataset(ctx, name)
    if removed is None:
        raise not_found("dataset", name, dataset=name)
    ctx.audit("delete_dataset", dataset=name, status_code=204, detail=f"{removed} entries")
    return Response(status_code=204)


def _delete_dataset(ctx: RequestContext, name: str) -> int | None:
    catalog = ctx.stores.catalog
    if catalog.dataset(name) is None:
        return None
    entries = catalog.entries(dataset=name)
    for entry in entries:
        delete_entry(ctx.stores, entry.id)
    catalog.delete_dataset(name)
    return len(entries)
