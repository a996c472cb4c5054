"""`alien search` from a cold process, as a user runs it: hybrid against keyword (which loads
no model), and hybrid's top 10 through the torch-free query engine against the torch path's.

    .venv/bin/python bench/cold_search.py [--source PDF ...] [--runs 3] [--json]

1. The sources (default: the Debian Live manual and the camlidl manual) are ingested into a
   scratch ALIEN_HOME with the default model; that run also writes the model's ONNX export
   that queries use.
2. Each query runs as a fresh `alien search Q --tenant T --mode M --json` process, `--runs`
   times per mode: keyword; hybrid (query embedded by ONNX Runtime, no torch); hybrid with
   `ALIEN_EMBEDDING_QUERY_ENGINE=false` (the query goes to the model, torch and all).
3. It prints the median wall time per mode, hybrid's ratio to keyword, and for how many
   queries hybrid's top 10 (chunk ids, in order) is the same both ways.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PDFS = REPO.parent / "shared" / "data" / "pdfs"
ALIEN = str(Path(sys.executable).with_name("alien"))
TENANT = "bench"
QUERIES = [
    "how do I build a live image with a custom package list",
    "boot parameters for persistence",
    "customizing the contents of the live system",
    "declare a pointer that may be null in IDL",
    "how are Caml exceptions raised from C errors",
    "mapping of IDL arrays to Caml arrays",
    "where does the build put the resulting ISO",
    "union types and their discriminant",
]


def run(args: list[str], env: dict[str, str]) -> tuple[str, float]:
    started = time.perf_counter()
    proc = subprocess.run(
        [ALIEN, *args], env=env, capture_output=True, text=True, check=True, cwd=REPO
    )
    return proc.stdout, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        type=Path,
        nargs="*",
        default=[PDFS / "live-manual.en.pdf", PDFS / "camlidl-manual.pdf"],
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="alien-bench-search-") as tmp:
        home = Path(tmp)
        env = dict(os.environ, ALIEN_HOME=str(home), DAGSTER_HOME=str(home / "dagster"))
        env.pop("ALIEN_EMBEDDING_QUERY_ENGINE", None)
        docs = home / "docs"
        docs.mkdir()
        for source in args.source:
            (docs / source.name).symlink_to(source.resolve())
        _, ingest_s = run(["ingest", str(docs), "--tenant", TENANT, "--json"], env)
        torch_env = dict(env, ALIEN_EMBEDDING_QUERY_ENGINE="false")
        modes = {
            "keyword": (["--mode", "keyword"], env),
            "hybrid": (["--mode", "hybrid"], env),
            "hybrid (torch)": (["--mode", "hybrid"], torch_env),
        }
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        tops: dict[str, dict[str, list[str]]] = {mode: {} for mode in modes}
        for query in QUERIES:
            for _ in range(args.runs):
                for mode, (flags, mode_env) in modes.items():
                    out, seconds = run(
                        ["search", query, "--tenant", TENANT, "--json", "-k", "10", *flags],
                        mode_env,
                    )
                    times[mode].append(seconds)
                    tops[mode][query] = [hit["chunk_id"] for hit in json.loads(out)["results"]]
    medians = {mode: round(statistics.median(values), 3) for mode, values in times.items()}
    same = sum(tops["hybrid"][q] == tops["hybrid (torch)"][q] for q in QUERIES)
    summary = {
        "ingest_s": round(ingest_s, 1),
        "queries": len(QUERIES),
        "runs_per_query": args.runs,
        "median_s": medians,
        "hybrid_over_keyword": round(medians["hybrid"] / medians["keyword"], 2),
        "torch_hybrid_over_keyword": round(medians["hybrid (torch)"] / medians["keyword"], 2),
        "same_top10": f"{same}/{len(QUERIES)}",
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{len(QUERIES)} queries × {args.runs} runs, each a fresh `alien search` process")
    for mode, value in medians.items():
        print(f"  {mode:<15} median {value:.3f} s")
    print(f"  hybrid / keyword: {summary['hybrid_over_keyword']} "
          f"(torch path: {summary['torch_hybrid_over_keyword']})")  # fmt: skip
    print(f"  hybrid top 10 equal to the torch path's: {summary['same_top10']} queries")


if __name__ == "__main__":
    main()
