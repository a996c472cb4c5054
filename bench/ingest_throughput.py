"""Ingestion throughput: the whole `alien ingest` against the model alone, and the no-op re-run.

    .venv/bin/python bench/ingest_throughput.py [--source DIR ...] [--embedder SPEC]
                                                [--cold-only] [--json]
    .venv/bin/python bench/ingest_throughput.py --compare SPEC,SPEC [--rounds N]

By default it runs two corpora: every file of ../shared/data/pdfs (443 pages, 3 of them
scanned and read by OCR), and the text-layer PDFs alone (the "manual density" case).

1. cold: `alien ingest SOURCE` in a fresh ALIEN_HOME (a new process: imports, model load,
   extraction, OCR, chunking, embedding, both indexes, Dagster run records), wall clock,
   and the Dagster run inside it alone;
2. model-only, two ways: the same chunk texts embedded by the same model and batch size
   (a) in a process whose model is loaded already (the strict figure: the cold run pays for
   the import and load that this one does not), and (b) cold, as a fresh process that
   imports sentence-transformers, loads the model and embeds them (like for like with 1);
3. no-op: the same ingest again (nothing changed), and a forced Dagster run with nothing to do;
4. warm: the same files through the same Dagster job into a new tenant, in a process whose
   model is already loaded (as in `alien serve`'s worker): the pipeline without the fixed
   cost of starting Python, importing torch and loading the model.

`--embedder MODEL@VARIANT` runs it all with that embedding variant (its derived files are
made in a first, untimed ingest of one page); `--cold-only` stops after the cold and no-op
ingests. `--compare SPEC,SPEC,... [--rounds N]` compares variants end to end: cold ingests
of the text-layer PDFs (or the first `--source`), each spec in turn, N rounds, with each
round's speed-up against the first spec (the machine's drift between rounds cancels out).
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
sys.path.insert(0, str(REPO))
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "pdfs"
ALIEN = str(Path(sys.executable).with_name("alien"))
TENANT = "bench"


def ingest(home: Path, source: Path, tenant: str = TENANT) -> tuple[dict, float]:
    env = dict(os.environ, ALIEN_HOME=str(home), DAGSTER_HOME=str(home / "dagster"))
    started = time.perf_counter()
    proc = subprocess.run(
        [ALIEN, "ingest", str(source), "--tenant", tenant, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout), time.perf_counter() - started


def prepare_variant(home: Path) -> None:
    """Make the configured variant's derived files (untimed), with a one-page ingest."""
    page = home / "warm-up"
    page.mkdir()
    (page / "page.txt").write_text("A page that makes the embedding variant's files.\n")
    ingest(home, page, tenant="warm-up")


def measure(source: Path, cold_only: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="alien-bench-") as tmp:
        home = Path(tmp)
        models = Path(tmp) / "models"
        os.environ["ALIEN_MODELS_DIR"] = str(models)
        prepare_variant(home)
        cold, cold_s = ingest(home, source)
        noop, noop_s = ingest(home, source)
        if cold_only:
            return {
                "source": str(source),
                "embedder": os.environ.get("ALIEN_EMBEDDING_MODEL", "all-MiniLM-L6-v2"),
                "entries": cold["entries"],
                "pages": cold["pages"],
                "chunks": cold["chunks"],
                "cold_seconds": round(cold_s, 2),
                "pages_per_second": round(cold["pages"] / cold_s, 2),
                "run_seconds": cold["run_seconds"],
                "noop_ingest_seconds": round(noop_s, 3),
                "step_seconds": {s: m["seconds"] for s, m in cold["steps"].items()},
            }

        os.environ["ALIEN_HOME"] = str(home)
        from alien.pipeline import read_chunks
        from alien.runner import run_ingest
        from resources.settings import AlienSettings
        from resources.stores import TenantRegistry

        settings = AlienSettings(home=home)
        stores = TenantRegistry(settings).open(TENANT)
        texts = [
            c.text
            for e in stores.catalog.entries(status="indexed")
            for c in read_chunks(stores, e.id)
        ]
        model_cold_s = model_only_cold(texts, settings.embedding_batch_size, Path(tmp))
        stores.embedder.embed(texts[:64])  # load the model and warm up outside the timing
        started = time.perf_counter()
        stores.embedder.embed(texts)
        model_s = time.perf_counter() - started
        forced = run_ingest(settings, TENANT)
        stores.close()
        warm = ingest_warm(settings, source)

    pages, chunks = cold["pages"], cold["chunks"]
    pipeline_rate = chunks / cold_s
    model_rate = len(texts) / model_s
    return {
        "source": str(source),
        "entries": cold["entries"],
        "pages": pages,
        "ocr_pages": cold["ocr_pages"],
        "chunks": chunks,
        "cold_seconds": round(cold_s, 2),
        "pages_per_second": round(pages / cold_s, 2),
        "pipeline_chunks_per_second": round(pipeline_rate, 2),
        "model_only_chunks_per_second": round(model_rate, 2),
        "pipeline_to_model_ratio": round(pipeline_rate / model_rate, 3),
        # like for like: a fresh process that loads the model and embeds the same chunks
        "model_only_cold_seconds": round(model_cold_s, 2),
        "pipeline_to_model_cold_ratio": round(model_cold_s / cold_s, 3),
        # The Dagster run alone: without interpreter start, imports and registration.
        "run_seconds": cold["run_seconds"],
        "run_chunks_per_second": round(chunks / cold["run_seconds"], 2),
        "run_to_model_ratio": round(chunks / cold["run_seconds"] / model_rate, 3),
        "noop_ingest_seconds": round(noop_s, 3),
        "noop_ingest_fraction_of_cold": round(noop_s / cold_s, 4),
        "noop_entries": noop["entries"],
        "forced_noop_dagster_run_seconds": round(forced.seconds, 3),
        "forced_noop_fraction_of_cold": round(forced.seconds / cold_s, 4),
        "step_seconds": {s: m["seconds"] for s, m in cold["steps"].items()},
        "warm_run_seconds": round(warm.seconds, 2),
        "warm_chunks_per_second": round(chunks / warm.seconds, 2),
        "warm_to_model_ratio": round(chunks / warm.seconds / model_rate, 3),
    }


MODEL_ONLY = """
import json, os, sys
from pathlib import Path
from resources.embedder import Embedder
texts = json.load(open(sys.argv[1]))
Embedder(os.environ.get("ALIEN_EMBEDDING_MODEL", "all-MiniLM-L6-v2"), batch_size=int(sys.argv[2]),
         worker=False, models_dir=Path(os.environ["ALIEN_MODELS_DIR"])).embed(texts)
"""


def model_only_cold(texts: list[str], batch_size: int, tmp: Path) -> float:
    """Seconds for a new process to load the model and embed ``texts`` (nothing else)."""
    path = tmp / "texts.json"
    path.write_text(json.dumps(texts))
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", MODEL_ONLY, str(path), str(batch_size)], cwd=REPO, check=True
    )
    return time.perf_counter() - started


def ingest_warm(settings, source: Path):
    """The Dagster run for ``source`` in this process, whose model is loaded already."""
    from alien.documents import register_source
    from alien.runner import run_ingest
    from alien.sources import local_files
    from resources.stores import TenantRegistry

    stores = TenantRegistry(settings).create(TENANT + "-warm")
    for file in local_files(source):
        register_source(
            stores, dataset="default", source_uri=file.uri, source_name=file.name,
            open_stream=file.open, size=file.size, mtime_ns=file.mtime_ns,
        )  # fmt: skip
    run = run_ingest(settings, stores.tenant)
    assert run.success, run.error
    return run


def text_pdfs(tmp: Path) -> Path:
    """A folder linking the PDFs of the default corpus that have a text layer."""
    folder = tmp / "text-pdfs"
    folder.mkdir()
    for pdf in sorted(DEFAULT_SOURCE.glob("*.pdf")):
        if "scanned" not in pdf.name:
            (folder / pdf.name).symlink_to(pdf)
    return folder


def compare(source: Path, specs: list[str], rounds: int) -> dict:
    """Cold ingests of ``source`` with each spec in turn, ``rounds`` times (this machine's
    speed drifts by a third over minutes: only runs taken in turn compare). Each ingest has a
    fresh ALIEN_HOME; the variants' derived files are made once, before the first round."""
    with tempfile.TemporaryDirectory(prefix="alien-bench-") as tmp:
        os.environ["ALIEN_MODELS_DIR"] = str(Path(tmp) / "models")
        for n, spec in enumerate(specs):
            os.environ["ALIEN_EMBEDDING_MODEL"] = spec
            home = Path(tmp) / f"prepare-{n}"
            home.mkdir()
            prepare_variant(home)
        runs: dict[str, list[dict]] = {spec: [] for spec in specs}
        for r in range(rounds):
            for n, spec in enumerate(specs):
                os.environ["ALIEN_EMBEDDING_MODEL"] = spec
                report, seconds = ingest(Path(tmp) / f"round-{r}-{n}", source)
                runs[spec].append(
                    {
                        "seconds": seconds,
                        "pages": report["pages"],
                        "embedding_step": report["steps"]["embeddings"]["seconds"],
                    }
                )
    base = runs[specs[0]]
    out = {"source": str(source), "rounds": rounds, "pages": base[0]["pages"], "specs": {}}
    for spec, taken in runs.items():
        seconds = [t["seconds"] for t in taken]
        # each round's own ratio: the drift between rounds cancels out
        speedups = [b["seconds"] / t["seconds"] for b, t in zip(base, taken, strict=True)]
        out["specs"][spec] = {
            "cold_seconds": [round(s, 2) for s in seconds],
            "pages_per_second_median": round(taken[0]["pages"] / statistics.median(seconds), 2),
            "embedding_step_seconds_median": round(
                statistics.median(t["embedding_step"] for t in taken), 2
            ),
            "speedup_per_round": [round(x, 2) for x in speedups],
            "speedup_median": round(statistics.median(speedups), 2),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, action="append", default=None)
    parser.add_argument("--embedder", default=None, metavar="SPEC")
    parser.add_argument("--cold-only", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--compare",
        metavar="SPEC,SPEC",
        help="cold ingests only, of each spec in turn; speed-ups against the first",
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --compare (default 3)")
    args = parser.parse_args()
    if args.compare:
        specs = args.compare.split(",")
        with tempfile.TemporaryDirectory(prefix="alien-bench-src-") as tmp:
            source = args.source[0] if args.source else text_pdfs(Path(tmp))
            report = compare(source, specs, args.rounds)
        if args.json:
            print(json.dumps(report, indent=2))
            return
        print(f"{report['source']}: {report['pages']} pages, {report['rounds']} rounds in turn")
        width = max(map(len, specs))
        print(f"{'spec':<{width}}  pages/s  embedding s  speed-up (median; each round)")
        for spec, row in report["specs"].items():
            rounds = ", ".join(f"{x:.2f}" for x in row["speedup_per_round"])
            print(
                f"{spec:<{width}}  {row['pages_per_second_median']:7.2f}  "
                f"{row['embedding_step_seconds_median']:11.2f}  "
                f"{row['speedup_median']:.2f}x ({rounds})"
            )
        return
    if args.embedder:
        os.environ["ALIEN_EMBEDDING_MODEL"] = args.embedder
    with tempfile.TemporaryDirectory(prefix="alien-bench-src-") as tmp:
        sources = args.source or [DEFAULT_SOURCE, text_pdfs(Path(tmp))]
        reports = [measure(source, args.cold_only) for source in sources]
    if args.json:
        print(json.dumps(reports, indent=2))
        return
    for report in reports:
        width = max(map(len, report))
        for key, value in report.items():
            print(f"{key:<{width}}  {value}")
        print()


if __name__ == "__main__":
    main()
