"""The pipeline at 1,000, 10,000 and 100,000 entries in one tenant: does cost stay linear?

    .venv/bin/python bench/scale.py [--sizes 1000 10000 100000] [--json]

Each size gets a fresh ALIEN_HOME (embedded stores) and a tenant of generated text entries of
realistic length: 3 to 8 Cranfield abstracts each (about 2 to 8 KB, 5 chunks on average),
drawn with a fixed seed. Every entry goes through the doors and steps users' files do: registration
(hash, original stored, catalog row), the `ingest` Dagster job in process (extraction in its
child process, chunking with the model's tokenizer, embeddings, both indexes, the checks).

**The embedding model is replaced by a deterministic stand-in** (feature hashing of the
chunk's tokens into 384 dimensions, normalised): this measures the pipeline, not the model,
whose cost per chunk is fixed (see `bench/ingest_throughput.py` for the model).

A first, unreported run of 200 entries pays the process's one-time costs (imports, Dagster's
first run, the tokenizer). Printed per size: registration and run time per entry, the no-op
re-run, the ingestion sensor's tick (median of 5), the cross-store checks, peak resident
memory of this process after registration and the run, and at the end (the searches hold
every vector in memory), and of its children (the extraction worker), and search latency
per mode (median of 20 queries). Peaks are the process's so far: sizes run in order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CORPUS = REPO.parent / "shared" / "data" / "cranfield" / "corpus.jsonl"
QUERIES = REPO.parent / "shared" / "data" / "cranfield" / "queries.jsonl"
TENANT = "scale"
DIM = 384


def _standin_vectors(texts: list[str]) -> np.ndarray:
    """Feature hashing: each token adds ±1 to one of 384 dimensions; then unit length."""
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for row, text in enumerate(texts):
        for token in text.lower().split():
            digest = hashlib.blake2b(token.encode(), digest_size=4).digest()
            value = int.from_bytes(digest, "little")
            out[row, value % DIM] += 1.0 if value & 1 << 31 else -1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-9)


def use_standin_embedder() -> None:
    from resources.embedder import Embedder

    Embedder._embed_batch = lambda self, texts: _standin_vectors(texts)  # type: ignore[method-assign]
    Embedder.preload = lambda self, **_: None  # type: ignore[method-assign]


def documents(count: int, seed: int = 7) -> Iterator[bytes]:
    """The generated entries, one at a time (the corpus is not held in memory)."""
    abstracts = [json.loads(line)["text"] for line in CORPUS.read_text().splitlines()]
    rng = random.Random(seed)
    for n in range(count):
        parts = rng.sample(abstracts, rng.randint(3, 8))
        yield f"Report {n}\n\n".encode() + "\n\n".join(parts).encode()


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def measure(size: int) -> dict:
    from alien import checks
    from alien.documents import register_bytes
    from alien.runner import dagster_instance, run_ingest
    from alien.search import search
    from resources.settings import AlienSettings
    from resources.stores import TenantRegistry

    with tempfile.TemporaryDirectory(prefix="alien-scale-") as tmp:
        home = Path(tmp) / "home"
        os.environ["ALIEN_HOME"] = str(home)
        os.environ["DAGSTER_HOME"] = str(home / "dagster")
        settings = AlienSettings(home=home)
        registry = TenantRegistry(settings)
        stores = registry.create(TENANT)
        docs = documents(size)
        started = time.perf_counter()
        for n, data in enumerate(docs):
            register_bytes(
                stores, data, dataset="default", source_uri=f"gen:{n}", source_name=f"r{n}.txt"
            )
        register_s = time.perf_counter() - started
        started = time.perf_counter()
        outcome = run_ingest(settings, TENANT)
        run_s = time.perf_counter() - started
        ingest_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if not outcome.success:
            raise SystemExit(f"ingest failed at {size}: {outcome.error}")
        chunks = outcome.report("chunks").chunks if outcome.report("chunks") else 0
        started = time.perf_counter()
        again = run_ingest(settings, TENANT)
        noop_s = time.perf_counter() - started
        assert again.success, again.error

        import dagster as dg

        import alien_assets  # noqa: F401 - the code location before the sensor's module
        from resources.dagster_resources import AlienStoresResource
        from sensors.ingestion import ingestion_sensor

        instance = dagster_instance(settings)
        ticks = []
        for _ in range(5):
            context = dg.build_sensor_context(
                instance=instance, resources={"stores": AlienStoresResource.for_settings(settings)}
            )
            t0 = time.perf_counter()
            ingestion_sensor(context)
            ticks.append(time.perf_counter() - t0)
        started = time.perf_counter()
        results = checks.run_checks(stores)
        checks_s = time.perf_counter() - started
        failed = [r.name for r in results if not r.passed]
        queries = [json.loads(line)["text"] for line in QUERIES.read_text().splitlines()][:20]
        latency = {}
        for mode in ("keyword", "vector", "hybrid"):
            search(stores, queries[0], mode=mode)  # warm: the index loads once per process
            times = []
            for query in queries:
                t0 = time.perf_counter()
                search(stores, query, mode=mode)
                times.append(time.perf_counter() - t0)
            latency[mode] = _ms(statistics.median(times))
        status = stores.catalog.status_counts()
        registry.forget(TENANT)
    self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "entries": size,
        "chunks": chunks,
        "indexed": status.get("indexed", 0),
        "register_ms_per_entry": _ms(register_s / size),
        "run_ms_per_entry": _ms(run_s / size),
        "total_ms_per_entry": _ms((register_s + run_s) / size),
        "noop_rerun_s": round(noop_s, 2),
        "sensor_tick_ms": _ms(statistics.median(ticks)),
        "checks_s": round(checks_s, 2),
        "checks_failed": failed,
        "peak_rss_after_ingest_mib": round(ingest_peak, 1),
        "peak_rss_mib": round(self_peak, 1),
        "peak_child_rss_mib": round(children_peak, 1),
        "search_ms": latency,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument(
        "--warmup", type=int, default=200, help="entries of an unreported first run (0: none)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    use_standin_embedder()
    if args.warmup:  # imports and first-use costs (Dagster, the tokenizer) are not per entry
        measure(args.warmup)
    rows = []
    for size in args.sizes:
        row = measure(size)
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(
                f"{row['entries']:>7} entries ({row['chunks']} chunks, {row['indexed']} indexed): "
                f"{row['total_ms_per_entry']} ms/entry (register {row['register_ms_per_entry']}, "
                f"run {row['run_ms_per_entry']}); no-op re-run {row['noop_rerun_s']} s; "
                f"sensor tick {row['sensor_tick_ms']} ms; checks {row['checks_s']} s "
                f"{'(all pass)' if not row['checks_failed'] else row['checks_failed']}; "
                f"peak RSS after ingest {row['peak_rss_after_ingest_mib']} MiB, at the end "
                f"{row['peak_rss_mib']} MiB (children {row['peak_child_rss_mib']}); "
                f"search ms {row['search_ms']}",
                flush=True,
            )
    if len(rows) > 1 and not args.json:
        growth = rows[-1]["total_ms_per_entry"] / rows[0]["total_ms_per_entry"] - 1
        print(f"cost per entry, {rows[0]['entries']:,} -> {rows[-1]['entries']:,}: {growth:+.0%}")
    print("(embedding by a deterministic stand-in: this measures the pipeline, not the model)")


if __name__ == "__main__":
    main()
