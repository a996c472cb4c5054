"""Search latency of one tenant's embedded stores at 20,000 and 100,000 chunks.

    .venv/bin/python bench/search_latency.py [--chunks 20000 100000] [--json]

Chunk texts are Cranfield abstracts (cycled); their vectors are random unit vectors of the
model's dimension (exact search costs the same whatever the values), so building 100,000
chunks takes seconds instead of hours of embedding. Queries are Cranfield's 225 queries,
embedded by the real model inside every timed search, as the CLI and the API do.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CRANFIELD = REPO.parent / "shared" / "data" / "cranfield"
PER_ENTRY = 100


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def build(stores, texts: list[str], total: int) -> float:
    from resources.keywords import KeywordDoc
    from resources.vectors import VectorPoint

    rng = np.random.default_rng(7)
    started = time.perf_counter()
    for e in range(total // PER_ENTRY):
        entry_id = stores.catalog.add_entry(
            dataset="default",
            source_uri=f"bench:{e}",
            source_name=f"doc-{e}.txt",
            media_type="text/plain",
            size=0,
            sha256="-",
            object_key="",
        ).id
        vectors = rng.normal(size=(PER_ENTRY, stores.vectors.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        points, docs = [], []
        for i in range(PER_ENTRY):
            n = e * PER_ENTRY + i
            text = texts[n % len(texts)]
            cid = f"{entry_id}-{i}"
            points.append(VectorPoint(cid, vectors[i], entry_id, "default", i, 1))
            docs.append(KeywordDoc(cid, entry_id, "default", i, 1, 0, len(text), text))
        stores.vectors.replace_entry(entry_id, points)
        stores.keywords.replace_entry(entry_id, docs)
        stores.catalog.update_entry(entry_id, status="indexed", pages=1, chunks=PER_ENTRY)
    return time.perf_counter() - started


def measure(total: int, queries: list[str], texts: list[str]) -> dict:
    from alien.search import search
    from resources.settings import AlienSettings
    from resources.stores import TenantRegistry

    with tempfile.TemporaryDirectory(prefix="alien-search-") as tmp:
        registry = TenantRegistry(AlienSettings(home=Path(tmp)))
        stores = registry.create("bench-search")
        build_s = build(stores, texts, total)
        stores.embedder.embed(["warm up"])
        started = time.perf_counter()
        search(stores, queries[0], mode="vector")  # loads the vectors into this process
        first_ms = (time.perf_counter() - started) * 1000
        report: dict = {
            "chunks": stores.vectors.count(),
            "build_seconds": round(build_s, 1),
            "first_search_ms_loads_vectors": round(first_ms, 1),
        }
        embed_ms = []
        for q in queries:
            t = time.perf_counter()
            stores.embedder.embed([q])
            embed_ms.append((time.perf_counter() - t) * 1000)
        report["query_embedding_ms_p50"] = round(statistics.median(embed_ms), 2)
        for mode in ("hybrid", "vector", "keyword"):
            latencies = []
            for q in queries:
                t = time.perf_counter()
                results = search(stores, q, mode=mode, top_k=10)
                latencies.append((time.perf_counter() - t) * 1000)
                assert results, f"no results for {q!r} in {mode}"
            report[mode] = {
                "p50_ms": round(percentile(latencies, 50), 2),
                "p95_ms": round(percentile(latencies, 95), 2),
                "p99_ms": round(percentile(latencies, 99), 2),
            }
        registry.drop("bench-search")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    texts = [
        f"{d['title']}\n\n{d['text']}"
        for d in map(json.loads, (CRANFIELD / "corpus.jsonl").read_text().splitlines())
    ]
    queries = [
        json.loads(line)["text"] for line in (CRANFIELD / "queries.jsonl").read_text().splitlines()
    ]
    reports = [measure(n, queries, texts) for n in args.chunks]
    if args.json:
        print(json.dumps(reports, indent=2))
        return
    for r in reports:
        print(
            f"{r['chunks']:>7} chunks (built in {r['build_seconds']} s; first search"
            f" {r['first_search_ms_loads_vectors']} ms; query embedding p50"
            f" {r['query_embedding_ms_p50']} ms)"
        )
        for mode in ("hybrid", "vector", "keyword"):
            m = r[mode]
            print(
                f"   {mode:<8} p50 {m['p50_ms']:>7} ms   p95 {m['p95_ms']:>7} ms"
                f"   p99 {m['p99_ms']:>7} ms"
            )


if __name__ == "__main__":
    main()
