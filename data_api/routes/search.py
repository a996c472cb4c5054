"""Search over the caller's tenant: bounded results, bounded snippets."""

from __future__ import annotations

import json

from fastapi import APIRouter

from alien.search import search as run_search
from alien.search import snippet
from data_api.deps import Searcher, Settings
from data_api.errors import ApiError, error_responses, not_found
from data_api.schemas import SearchHit, SearchRequest, SearchResponse

router = APIRouter(prefix="/v1", tags=["search"])


@router.post("/search", responses=error_responses(404))
def search(body: SearchRequest, ctx: Searcher, settings: Settings) -> SearchResponse:
    """Hybrid (default), vector or keyword search; results carry snippets, not documents."""
    if body.top_k > settings.api_max_top_k:
        raise ApiError(422, "top_k_too_large", f"top_k is at most {settings.api_max_top_k}")
    catalog = ctx.stores.catalog
    if body.dataset is not None and catalog.dataset(body.dataset) is None:
        raise not_found("dataset", body.dataset, dataset=body.dataset)
    entries = (
        catalog.entry_ids(dataset=body.dataset, metadata=body.metadata) if body.metadata else None
    )
    results = run_search(
        ctx.stores,
        body.query,
        mode=body.mode,
        top_k=body.top_k,
        dataset=body.dataset,
        entries=entries,
    )
    hits = [
        SearchHit(
            entry_id=r.entry_id,
            source_name=r.source_name,
            dataset=r.dataset,
            chunk_id=r.chunk_id,
            page=r.page,
            score=r.score,
            snippet=snippet(r.text, body.query, settings.api_snippet_chars),
        )
        for r in results
    ]
    ctx.charge_egress(sum(len(h.snippet.encode()) for h in hits), "search", dataset=body.dataset)
    # Which entries were disclosed, not only how many: the audit can say who saw what.
    detail = {
        "query": body.query[:200],
        "mode": body.mode,
        "top_k": body.top_k,
        "results": len(hits),
        "entries": sorted({h.entry_id for h in hits}),
    }
    ctx.audit("search", dataset=body.dataset, detail=json.dumps(detail, ensure_ascii=False))
    return SearchResponse(mode=body.mode, results=hits)
