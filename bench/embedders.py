"""Every embedding variant on the same chunks: chunks/s, load time, and how near its vectors
are to the default's.

    .venv/bin/python bench/embedders.py [--variants torch,onnx,onnx-int8,onnx-int8-lean,static]
                                        [--chunks N] [--corpus DIR] [--model NAME] [--json]

The chunks are what ingestion embeds: the text-layer pages of ../shared/data/pdfs (technical
manuals), or with ``--corpus`` the documents of a BEIR collection (Cranfield's abstracts are
prose), cut by the pipeline's own chunker to the model's window (254 tokens), the first N of
them (default 512). Each variant runs in a fresh process, as ingestion's model worker does:
the figure is the steady rate after a warm-up batch, at the configured batch size, on every
core. Rounds (``--rounds``, default 3) run every variant once each, in turn, and the median
is reported: this machine's speed drifts by a third over minutes, which a variant measured
alone would take as its own. Derived files (ONNX exports, the static table) are made first,
outside the timing, under a scratch models directory. Retrieval quality per variant:
`alien eval DIR --embedder SPEC`.

On a GPU machine the torch variant runs there in float16 (``--device cuda``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PDFS = REPO.parent / "shared" / "data" / "pdfs"

MEASURE = """
import json, sys, time
from pathlib import Path
import numpy as np
t0 = time.perf_counter()
from resources.embedder import Embedder
spec, models, chunks, out, device, batch = sys.argv[1:7]
texts = json.loads(Path(chunks).read_text())
e = Embedder(spec, worker=False, models_dir=Path(models), device=device, batch_size=int(batch))
e.embed(texts[:8])  # load and warm up
loaded = time.perf_counter() - t0
t1 = time.perf_counter()
vectors = e.embed(texts)
seconds = time.perf_counter() - t1
np.save(out, vectors)
print(json.dumps({"load_s": loaded, "embed_s": seconds, "torch": "torch" in sys.modules}))
"""


def chunk_texts(limit: int, model: str, corpus: Path | None = None) -> list[str]:
    from alien.evaluation import load_beir
    from resources.chunking import chunk_pages
    from resources.embedder import Embedder
    from resources.extract import PDF, PageText, extract_pages
    from resources.ocr import TesseractOcr

    tokenizer_of = Embedder(model, worker=False)
    if corpus is not None:
        documents = load_beir(corpus).corpus.items()
        sources = ((name, [PageText(1, text, "text")]) for name, text in documents)
    else:
        pdfs = (pdf for pdf in sorted(PDFS.glob("*.pdf")) if "scanned" not in pdf.name)
        sources = (
            (pdf.name, [p for p in extract_pages(pdf, PDF, ocr=TesseractOcr()) if p.text.strip()])
            for pdf in pdfs
        )
    texts: list[str] = []
    for name, pages in sources:
        chunks = chunk_pages(name, pages, tokenizer_of.tokenizer, tokenizer_of.max_content_tokens)
        texts.extend(c.text for c in chunks)
        if len(texts) >= limit:
            break
    return texts[:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="torch,onnx,onnx-int8,onnx-int8-lean,static")
    parser.add_argument("--chunks", type=int, default=512)
    parser.add_argument("--corpus", type=Path, help="a BEIR collection's documents instead")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    texts = chunk_texts(args.chunks, args.model, args.corpus)
    variants = args.variants.split(",")
    results = []
    with tempfile.TemporaryDirectory(prefix="alien-bench-embedders-") as tmp:
        scratch = Path(tmp)
        models = scratch / "models"
        chunks = scratch / "chunks.json"
        chunks.write_text(json.dumps(texts))
        from resources.embedder import resolve_model_path
        from resources.embedding_backends import EmbedderSpec, prepare

        for variant in variants:  # derived files first, outside the timings
            if variant != "torch":
                t0 = time.perf_counter()
                prepare(resolve_model_path(args.model), variant, models)
                print(f"prepared {variant} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        reference = None
        runs: dict[str, list[dict]] = {variant: [] for variant in variants}
        for _ in range(args.rounds):
            for variant in variants:
                spec = str(EmbedderSpec(args.model, variant))
                out = scratch / f"{variant}.npy"
                proc = subprocess.run(
                    [sys.executable, "-c", MEASURE, spec, str(models), str(chunks), str(out),
                     args.device, str(args.batch_size)],
                    cwd=REPO, capture_output=True, text=True, check=True,
                )  # fmt: skip
                runs[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        for variant in variants:
            vectors = np.load(scratch / f"{variant}.npy")
            if reference is None and variant == "torch":
                reference = vectors
            rates = [len(texts) / r["embed_s"] for r in runs[variant]]
            row = {
                "variant": variant,
                "spec": str(EmbedderSpec(args.model, variant)),
                "chunks": len(texts),
                "dimension": int(vectors.shape[1]),
                "load_s": statistics.median(r["load_s"] for r in runs[variant]),
                "torch": any(r["torch"] for r in runs[variant]),
                "chunks_per_s": round(statistics.median(rates), 1),
                "chunks_per_s_runs": [round(rate, 1) for rate in rates],
            }
            if reference is not None and vectors.shape == reference.shape:
                cosine = (vectors * reference).sum(axis=1)
                row["cosine_to_torch_mean"] = round(float(cosine.mean()), 4)
                row["cosine_to_torch_min"] = round(float(cosine.min()), 4)
            results.append(row)
    base = next((r["chunks_per_s"] for r in results if r["variant"] == "torch"), None)
    for row in results:
        if base:
            row["speedup"] = round(row["chunks_per_s"] / base, 2)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    source = args.corpus or PDFS
    print(f"{len(texts)} chunks of up to 254 tokens from {source}, median of {args.rounds} rounds")
    print(f"{'variant':<14} {'dim':>4} {'load s':>7} {'chunks/s':>9} {'speedup':>8} "
          f"{'cos mean':>9} {'cos min':>8} torch")  # fmt: skip
    for r in results:
        print(
            f"{r['variant']:<14} {r['dimension']:>4} {r['load_s']:>7.2f} {r['chunks_per_s']:>9.1f} "
            f"{r.get('speedup', 0):>8.2f} {r.get('cosine_to_torch_mean', float('nan')):>9.4f} "
            f"{r.get('cosine_to_torch_min', float('nan')):>8.4f} {'yes' if r['torch'] else 'no'}"
            f"  runs: {', '.join(str(x) for x in r['chunks_per_s_runs'])}"
        )


if __name__ == "__main__":
    main()
