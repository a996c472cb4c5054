"""Searches embed their query without torch (the model's ONNX export, made when the model
first loads) and rank exactly as with the model itself."""

from __future__ import annotations

from alien.documents import register_path
from alien.pipeline import run_all
from alien.search import rank_chunks
from tests.conftest import PDFS

QUERIES = [
    "declare a pointer that may be null",
    "how are exceptions raised from C errors",
    "mapping of arrays between IDL and Caml",
    "union types and their discriminant",
    "what does camlidl generate for a header file",
]


def test_hybrid_and_vector_search_rank_the_same_through_the_query_engine(tenant) -> None:
    register_path(tenant, PDFS / "camlidl-manual.pdf", dataset="default")
    run_all(tenant)  # loads the model (in its worker), which writes the ONNX export
    embedder = tenant.embedder
    assert embedder.query_engine() is not None
    engine = embedder.embed_query(QUERIES)  # in this process, by ONNX Runtime
    model = embedder.embed(QUERIES)  # by the model itself, in its worker
    for query, by_engine, by_model in zip(QUERIES, engine, model, strict=True):
        for mode in ("hybrid", "vector"):
            ranked = [
                [c.chunk_id for c in rank_chunks(tenant, query, mode=mode, query_vector=v)]
                for v in (by_engine, by_model)
            ]
            assert ranked[0] == ranked[1], (query, mode)
            assert len(ranked[0]) == 10
