"""Search over one tenant: keyword (BM25), vector (cosine) and their fusion (hybrid)."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from resources.settings import AlienSettings
from resources.stores import TenantStores

Mode = Literal["hybrid", "vector", "keyword"]
MODES: tuple[Mode, ...] = ("hybrid", "vector", "keyword")


@dataclass(frozen=True)
class SearchResult:
    entry_id: str
    source_name: str
    chunk_id: str
    page: int | None
    score: float
    text: str
    dataset: str
    chunk_index: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RankedChunk:
    chunk_id: str
    score: float
    entry_id: str


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[RankedChunk]], k: int = 60
) -> list[RankedChunk]:
    """Fuse rankings: each item scores sum(1 / (k + rank)) over the rankings it appears in."""
    scores: dict[str, float] = {}
    entries: dict[str, str] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            scores[item.chunk_id] = scores.get(item.chunk_id, 0.0) + 1.0 / (k + rank)
            entries[item.chunk_id] = item.entry_id
    return _best_first(scores, entries)


#: Decimal places a score is ranked by: closer scores are a tie, ordered by chunk id.
SCORE_PLACES = 6


def rank_key(score: float, chunk_id: str) -> tuple[float, str]:
    """Best first, ties by chunk id. Scores come from float32 vectors: the same query
    embedded by two engines of one model (ONNX Runtime and torch, or one CPU and another)
    differs by about 1e-7, which reordered chunks of (nearly) the same text, e.g. a page
    header repeated in two documents; a difference under 1e-6 means nothing, so it is
    ranked as a tie (two such scores either side of a rounding step still rank by score,
    which is rare: the noise is a tenth of the step)."""
    return (-round(score, SCORE_PLACES), chunk_id)


def _best_first(scores: dict[str, float], entries: dict[str, str]) -> list[RankedChunk]:
    fused = sorted(scores.items(), key=lambda kv: rank_key(kv[1], kv[0]))
    return [RankedChunk(cid, score, entries[cid]) for cid, score in fused]


def convex_combination(
    rankings: Sequence[Sequence[RankedChunk]], weights: Sequence[float]
) -> list[RankedChunk]:
    """Fuse scored rankings: the weighted sum of each ranking's min-max normalised scores.

    An item missing from a ranking gets 0 from it. Unlike rank fusion this keeps how far
    apart the scores are, which is why it usually ranks better (Bruch et al., "An Analysis
    of Fusion Functions for Hybrid Retrieval", TOIS 2023).
    """
    scores: dict[str, float] = {}
    entries: dict[str, str] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        if not ranking:
            continue
        values = [item.score for item in ranking]
        low, high = min(values), max(values)
        span = high - low
        for item in ranking:
            norm = (item.score - low) / span if span > 0 else 1.0
            scores[item.chunk_id] = scores.get(item.chunk_id, 0.0) + weight * norm
            entries[item.chunk_id] = item.entry_id
    return _best_first(scores, entries)


def fuse(
    keyword: Sequence[RankedChunk], vector: Sequence[RankedChunk], settings: AlienSettings
) -> list[RankedChunk]:
    if settings.fusion == "rrf":
        return reciprocal_rank_fusion([keyword, vector], k=settings.fusion_k)
    weight = settings.fusion_keyword_weight
    return convex_combination([keyword, vector], [weight, 1.0 - weight])


def rank_chunks(
    stores: TenantStores,
    query: str,
    *,
    mode: Mode = "hybrid",
    top_k: int = 10,
    dataset: str | None = None,
    entries: Collection[str] | None = None,
    query_vector: np.ndarray | None = None,
) -> list[RankedChunk]:
    """Chunk ids and scores, best first (no text: see ``search`` for full results).

    ``dataset`` and ``entries`` (a set of entry ids, e.g. those matching a metadata filter)
    restrict the candidates before ranking, so a filter never empties the top ``top_k``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown search mode {mode!r}; use one of {', '.join(MODES)}")
    settings = stores.settings
    depth = top_k if mode != "hybrid" else max(top_k, settings.fusion_depth)
    keyword: list[RankedChunk] = []
    vector: list[RankedChunk] = []
    if mode in ("hybrid", "keyword"):
        keyword = [
            RankedChunk(h.id, h.score, h.entry_id)
            for h in stores.keywords.search(query, depth, dataset=dataset, entries=entries)
        ]
    if mode in ("hybrid", "vector"):
        vector = _vector_ranking(stores, query, depth, dataset, entries, query_vector)
    if mode == "keyword":
        return keyword[:top_k]
    if mode == "vector":
        return vector[:top_k]
    return fuse(keyword, vector, settings)[:top_k]


def _vector_ranking(
    stores: TenantStores,
    query: str,
    depth: int,
    dataset: str | None,
    entries: Collection[str] | None,
    query_vector: np.ndarray | None,
) -> list[RankedChunk]:
    """The nearest chunks in every space the query reads, each space with its own model's
    query vector (``query_vector``, when given, serves the space of its dimension)."""
    # The active spaces, each with its model: during a model change, the old one until the
    # new one is complete (``alien.pipeline.run_vector_index``). A switch between reading
    # the pointers and searching leaves the old space whole, or, once dropped, fails the
    # search: then the new one is read.
    for attempt in range(2):
        rankings, families = [], set()
        spaces = stores.search_spaces(dataset)
        try:
            for index, embedder, only, exclude in spaces:
                families.add(embedder.spec.family)
                given = query_vector is not None and len(query_vector) == index.dim
                vector = query_vector if given else embedder.embed_query([query])[0]
                hits = index.search(
                    vector, depth, dataset=only, entries=entries, exclude_datasets=exclude
                )
                rankings.append([RankedChunk(h.id, h.score, h.entry_id) for h in hits])
            break
        except Exception:
            # an outage, not a switch: the spaces searched are still those
            if attempt or [s.index for s in stores.search_spaces(dataset)] == [
                s.index for s in spaces
            ]:
                raise
    if len(rankings) == 1:
        return sorted(rankings[0], key=lambda item: rank_key(item.score, item.chunk_id))
    if len(families) == 1:  # one model's weights (variants): its cosines compare as they are
        merged = sorted((item for ranking in rankings for item in ranking),
                        key=lambda item: rank_key(item.score, item.chunk_id))  # fmt: skip
        return merged[:depth]
    # Scores of different models are not comparable: each space's are scaled to [0, 1]
    return convex_combination(rankings, [1.0] * len(rankings))[:depth]


def search(
    stores: TenantStores,
    query: str,
    *,
    mode: Mode = "hybrid",
    top_k: int = 10,
    dataset: str | None = None,
    entries: Collection[str] | None = None,
    query_vector: np.ndarray | None = None,
) -> list[SearchResult]:
    """Ranked chunks of the tenant's entries matching ``query``, with text and provenance."""
    ranked = rank_chunks(
        stores,
        query,
        mode=mode,
        top_k=top_k,
        dataset=dataset,
        entries=entries,
        query_vector=query_vector,
    )
    docs = stores.keywords.get_docs([r.chunk_id for r in ranked])
    names = {
        e.id: e.source_name
        for e in stores.catalog.entries(ids=sorted({r.entry_id for r in ranked}))
    }
    results = []
    for r in ranked:
        doc = docs.get(r.chunk_id)
        if doc is None or r.entry_id not in names:
            continue  # removed between ranking and hydration
        results.append(
            SearchResult(
                entry_id=r.entry_id,
                source_name=names[r.entry_id],
                chunk_id=r.chunk_id,
                page=doc.page,
                score=round(r.score, 6),
                text=doc.text,
                dataset=doc.dataset,
                chunk_index=doc.chunk_index,
            )
        )
    return results


_WORD = re.compile(r"\w{3,}")


def snippet(text: str, query: str, limit: int) -> str:
    """At most ``limit`` characters of ``text``, around the first query word it contains."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    lowered = text.lower()
    hits = [i for w in _WORD.findall(query.lower()) if (i := lowered.find(w)) >= 0]
    center = min(hits) if hits else 0
    start = max(0, min(center - limit // 3, len(text) - limit))
    if start > 0:
        space = text.find(" ", start, start + 40)
        start = space + 1 if space >= 0 else start
    window = text[start : start + limit - 2 * (start > 0)]
    if start + len(window) < len(text):
        cut = window.rfind(" ", len(window) - 40)
        window = window[: cut if cut > 0 else len(window) - 1].rstrip() + "…"
    return ("…" if start > 0 else "") + window
