"""A dataset's own embedding model, measured: what moving half a tenant into another space
costs, and what searching two spaces at once does to quality and latency.

    .venv/bin/python bench/dataset_spaces.py [--collection ../shared/data/cranfield]
        [--model all-MiniLM-L6-v2@onnx-int8] [--json]

1. The collection's documents go into one scratch tenant, alternately into datasets "first"
   and "second", and are indexed with the default model (one vector space).
2. Every query runs in hybrid and vector mode over the whole tenant: nDCG@10 and the median
   query latency (in-process, the query embedded by the query engine).
3. Dataset "second" is given ``--model``: the run that follows re-embeds that dataset only,
   into a space of its own, and switches it.
4. The same queries again, now reading two spaces with a query vector each, their rankings
   scaled and combined; and the latency of a search of "second" alone (its space only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alien.documents import register_bytes  # noqa: E402
from alien.evaluation import document_run, load_beir, score_run  # noqa: E402
from alien.pipeline import EMBEDDINGS, VECTORS, run_all  # noqa: E402
from alien.search import rank_chunks  # noqa: E402
from resources.settings import AlienSettings  # noqa: E402
from resources.stores import TenantRegistry, TenantStores  # noqa: E402


def quality(stores: TenantStores, collection, entry_to_doc) -> dict[str, float]:  # type: ignore[no-untyped-def]
    return {
        mode: score_run(collection.qrels, document_run(stores, collection, entry_to_doc, mode))[
            "ndcg@10"
        ]
        for mode in ("hybrid", "vector")
    }


def latency_ms(stores: TenantStores, queries: list[str], dataset: str | None = None) -> float:
    times = []
    for query in queries:
        started = time.perf_counter()
        rank_chunks(stores, query, mode="hybrid", top_k=10, dataset=dataset)
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", type=Path, default=REPO.parent / "shared/data/cranfield")
    parser.add_argument("--model", default="all-MiniLM-L6-v2@onnx-int8")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    collection = load_beir(args.collection)
    queries = list(collection.queries.values())
    with tempfile.TemporaryDirectory(prefix="alien-bench-spaces-") as home:
        stores = TenantRegistry(AlienSettings(home=Path(home))).create("bench")
        entry_to_doc: dict[str, list[str]] = {}
        for n, (doc_id, text) in enumerate(collection.corpus.items()):
            dataset = "second" if n % 2 else "first"
            stores.catalog.ensure_dataset(dataset)
            name, uri = f"{doc_id}.txt", f"beir:{doc_id}"
            entry = register_bytes(stores, text.encode(), dataset=dataset, source_uri=uri,
                                   source_name=name).entry  # fmt: skip
            entry_to_doc.setdefault(entry.id, []).append(doc_id)
        started = time.perf_counter()
        run_all(stores)
        first_run = time.perf_counter() - started
        rank_chunks(stores, queries[0])  # the query engine loaded
        one = {"ndcg@10": quality(stores, collection, entry_to_doc),
               "hybrid_ms": latency_ms(stores, queries)}  # fmt: skip

        stores.catalog.update_dataset("second", {"embedding_model": args.model})
        started = time.perf_counter()
        reports = {r.step: r for r in run_all(stores)}
        switch_run = time.perf_counter() - started
        rank_chunks(stores, queries[0], dataset="second")
        two = {
            "ndcg@10": quality(stores, collection, entry_to_doc),
            "hybrid_ms": latency_ms(stores, queries),
            "hybrid_ms_second_only": latency_ms(stores, queries, dataset="second"),
        }
        out = {
            "collection": str(args.collection),
            "documents": len(collection.corpus),
            "queries": len(queries),
            "second_dataset_model": args.model,
            "first_run_s": round(first_run, 1),
            "switch_run_s": round(switch_run, 1),
            "entries_re_embedded": reports[EMBEDDINGS].processed,
            "switched": reports[VECTORS].details.get("datasets_switched", {}),
            "one_space": one,
            "two_spaces": two,
        }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{out['documents']} documents in two datasets, {out['queries']} queries")
    print(f"first run (one space): {out['first_run_s']} s")
    print(f"second dataset -> {args.model}: {out['entries_re_embedded']} entries re-embedded "
          f"in {out['switch_run_s']} s, switched {out['switched']}")  # fmt: skip
    for label, figures in (("one space", one), ("two spaces", two)):
        print(f"{label:>10}: nDCG@10 hybrid {figures['ndcg@10']['hybrid']:.4f} "
              f"vector {figures['ndcg@10']['vector']:.4f}; hybrid query {figures['hybrid_ms']} ms "
              "median")  # fmt: skip
    print(f"search of the second dataset alone: {two['hybrid_ms_second_only']} ms median")


if __name__ == "__main__":
    main()
