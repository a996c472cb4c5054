"""Retrieval evaluation on a BEIR-layout collection, with trec_eval's measures."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from alien.documents import register_bytes
from alien.search import MODES, Mode, rank_chunks
from resources.stores import TenantRegistry, TenantStores

MEASURES = {"ndcg_cut.10": "ndcg@10", "recall.100": "recall@100"}
DEPTH = 100


@dataclass(frozen=True)
class Collection:
    corpus: dict[str, str]  # doc id -> text
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    fingerprint: str


def load_beir(directory: Path) -> Collection:
    """Read ``corpus.jsonl``, ``queries.jsonl`` and ``qrels.tsv`` (or ``qrels/test.tsv``)."""
    directory = Path(directory)
    corpus_path = directory / "corpus.jsonl"
    qrels_path = directory / "qrels.tsv"
    if not qrels_path.is_file():
        qrels_path = directory / "qrels" / "test.tsv"
    for path in (corpus_path, directory / "queries.jsonl", qrels_path):
        if not path.is_file():
            raise FileNotFoundError(f"BEIR collection is missing {path}")
    digest = hashlib.sha256()
    corpus: dict[str, str] = {}
    with corpus_path.open("rb") as fh:
        for line in fh:
            digest.update(line)
            if not line.strip():
                continue
            doc = json.loads(line)
            title, text = (doc.get("title") or "").strip(), (doc.get("text") or "").strip()
            # BEIR's convention: a document is its title followed by its text.
            corpus[str(doc["_id"])] = f"{title}\n\n{text}" if title else text
    queries = {}
    for line in (directory / "queries.jsonl").read_text().splitlines():
        if line.strip():
            q = json.loads(line)
            queries[str(q["_id"])] = q["text"]
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open() as fh:
        reader = csv.reader(fh, delimiter="\t")
        for row in reader:
            if not row or row[0] == "query-id":
                continue
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    return Collection(corpus, queries, qrels, digest.hexdigest()[:12])


def ingest_collection(
    registry: TenantRegistry,
    collection: Collection,
    tenant: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[TenantStores, dict[str, list[str]]]:
    """Register the corpus as entries of a scratch tenant; returns entry id -> doc ids.

    Byte-identical documents (Cranfield has some) are one entry, by the rule every door
    follows: a hit on that entry retrieves each of them."""
    stores = registry.create(tenant or f"eval-{collection.fingerprint}")
    entry_to_doc: dict[str, list[str]] = {}
    total = len(collection.corpus)
    for n, (doc_id, text) in enumerate(collection.corpus.items(), 1):
        reg = register_bytes(
            stores,
            text.encode("utf-8"),
            dataset="default",
            source_uri=f"beir:{doc_id}",
            source_name=f"{doc_id}.txt",
        )
        entry_to_doc.setdefault(reg.entry.id, []).append(doc_id)
        if progress and (n % 50 == 0 or n == total):
            progress(n, total)
    return stores, entry_to_doc


def document_run(
    stores: TenantStores,
    collection: Collection,
    entry_to_doc: dict[str, list[str]],
    mode: Mode,
    query_vectors: dict[str, object] | None = None,
    depth: int = DEPTH,
) -> dict[str, dict[str, float]]:
    """query id -> {doc id: score}, the ``depth`` best documents (best chunk per document)."""
    run: dict[str, dict[str, float]] = {}
    for qid, text in collection.queries.items():
        ranked = rank_chunks(
            stores,
            text,
            mode=mode,
            top_k=depth * 2,
            query_vector=None if query_vectors is None else query_vectors[qid],
        )
        docs: dict[str, float] = {}
        score = float(len(ranked) * 2)
        for item in ranked:
            for doc in entry_to_doc.get(item.entry_id, []):
                if doc in docs or len(docs) == depth:
                    continue
                # trec_eval orders by score: make scores strictly follow our rank order.
                docs[doc] = score
                score -= 1
        run[qid] = docs
    return run


def score_run(
    qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]
) -> dict[str, float]:
    """Mean nDCG@10 and recall@100 over the judged queries (trec_eval conventions)."""
    import pytrec_eval

    evaluator = pytrec_eval.RelevanceEvaluator(qrels, set(MEASURES))
    per_query = evaluator.evaluate({q: run.get(q, {}) for q in qrels})
    out = {}
    for measure, label in MEASURES.items():
        key = measure.replace(".", "_")
        values = [scores[key] for scores in per_query.values()]
        out[label] = round(sum(values) / len(values), 4) if values else 0.0
    out["queries"] = len(per_query)
    return out


def write_trec_run(path: Path, run: dict[str, dict[str, float]], tag: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for qid in sorted(run, key=lambda q: (len(q), q)):
            ranked = sorted(run[qid].items(), key=lambda kv: -kv[1])
            for rank, (doc, score) in enumerate(ranked, 1):
                fh.write(f"{qid} Q0 {doc} {rank} {score:.6f} {tag}\n")


def evaluate(
    stores: TenantStores,
    collection: Collection,
    entry_to_doc: dict[str, list[str]],
    modes: Sequence[Mode] = MODES,
    run_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Score every mode; write ``<run_dir>/<mode>.run`` when asked."""
    qids = list(collection.queries)
    _, embedder = stores.search_vectors()  # the model of the vectors searched
    vectors = embedder.embed_query([collection.queries[q] for q in qids])
    query_vectors = dict(zip(qids, vectors, strict=True))
    results = {}
    for mode in modes:
        if progress:
            progress(mode)
        run = document_run(stores, collection, entry_to_doc, mode, query_vectors)
        results[mode] = score_run(collection.qrels, run)
        if run_dir is not None:
            write_trec_run(Path(run_dir) / f"{mode}.run", run, f"alien-{mode}")
    return results
