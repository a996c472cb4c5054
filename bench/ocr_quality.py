"""OCR word recall and cost per page, with and without the page preparation before Tesseract.

    .venv/bin/python bench/ocr_quality.py [--pages camlidl-manual.pdf:12 gri-manual.pdf:30 ...]
                                          [--json]

Read through ``extract_pages`` as the pipeline reads them, twice: "before", as before the
preparation (a scanned PDF page rendered at ``ocr_dpi``, 300, and ``TesseractOcr(prepare=
False)``), and "prepared" (rendered at the scan's own resolution when lower, ``prepare_page``
first):

- the clean scan in ../shared/data/pdfs (camlidl manual pages 8-10 at 200 dpi, rendered at
  300) against its ground-truth text;
- each of ``--pages`` as a clean 150-dpi image, and as a poor scan (tests/scans.py: 150 dpi,
  turned 2.5 degrees, one way or the other, blurred, grainy, specked, JPEG-compressed) both as
  a JPEG file and as a PDF wrapped around it, against the page's text layer.

Recall is the share of ground-truth words found (tests/resources/test_extract.py's measure);
seconds are wall time per page (rendering, preparation and OCR; the clean scan's three pages
on two OCR threads); prep ms is ``prepare_page`` alone, so the cost the preparation adds
besides Tesseract's own time on the image it makes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PDFS = REPO.parent / "shared" / "data" / "pdfs"
# Held out: none of these was looked at while the preparation was tuned (camlidl 5 and 12,
# gri 30 and 90 were).
PAGES = (
    "camlidl-manual.pdf:16",
    "camlidl-manual.pdf:22",
    "gri-manual.pdf:44",
    "gri-manual.pdf:121",
)


def _recording_ocr(prepare: bool) -> Any:
    from resources.ocr import TesseractOcr

    class Recording(TesseractOcr):
        """Tesseract that keeps the images it was given, to time their preparation after."""

        def __init__(self) -> None:
            super().__init__(prepare=prepare)
            self.seen: list[Any] = []

        def read_image(self, image: Any) -> str:
            self.seen.append(image.copy())
            return super().read_image(image)

    return Recording()


def measure(path: Path, media_type: str, truth: str, prepare: bool) -> dict:
    """Recall, wall seconds per page and preparation ms per page of one file read one way."""
    from unittest import mock

    from resources import extract
    from resources.ocr import prepare_page
    from tests.scans import word_recall

    ocr = _recording_ocr(prepare)
    # Before: every scanned PDF page rendered at ocr_dpi, whatever the scan's resolution.
    before = mock.patch.object(extract, "_scan_dpi", lambda images, ocr_dpi: ocr_dpi)
    started = time.perf_counter()
    with before if not prepare else contextlib.nullcontext():
        pages = list(extract.extract_pages(path, media_type, ocr=ocr))
    seconds = time.perf_counter() - started
    row: dict = {
        "recall": round(word_recall(truth, [p.text for p in pages]), 4),
        "s_per_page": round(seconds / len(pages), 2),
    }
    if prepare:  # what the preparation added: the median of three runs on each page's image
        runs: list[float] = []
        for image in ocr.seen:
            times = []
            for _ in range(3):
                begun = time.perf_counter()
                prepared = prepare_page(image)
                times.append(time.perf_counter() - begun)
            runs.append(sorted(times)[1])
        row["prep_ms_per_page"] = round(1000 * sum(runs) / len(runs))
        row["done"] = (
            f"skew {prepared.skew:+.2f}°, x{prepared.scale:.2f}, noise {prepared.noise:.1f}"
            + (", cleaned" if prepared.cleaned else "")
        )
    return row


def main() -> None:
    from resources.extract import PDF
    from tests.scans import Degradation, degraded_scan, page_text, save_scan

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", nargs="+", default=list(PAGES), help="FILE.pdf:INDEX (0-based)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    rows: list[dict] = []

    def run(label: str, path: Path, media_type: str, truth: str) -> None:
        for prepare in (False, True):
            row = {"case": label, "prepare": prepare, **measure(path, media_type, truth, prepare)}
            rows.append(row)
            if not args.json:
                done = f"  prep {row['prep_ms_per_page']:3d} ms ({row['done']})" if prepare else ""
                print(
                    f"{label:34s} {'prepared' if prepare else 'before':8s} "
                    f"recall {row['recall']:.3f}  {row['s_per_page']:5.2f} s/page{done}",
                    flush=True,
                )

    clean = PDFS / "camlidl-manual.p8-10.scanned.pdf"
    truth = (PDFS / "camlidl-manual.p8-10.groundtruth.txt").read_text()
    run("clean scan camlidl p8-10 (PDF)", clean, PDF, truth)
    with tempfile.TemporaryDirectory() as tmp:
        for number, spec in enumerate(args.pages):
            name, index = spec.rsplit(":", 1)
            pdf, page = PDFS / name, int(index)
            truth = page_text(pdf, page)
            short = f"{name.split('-')[0]} p{page + 1}"
            flat = Degradation(angle=0, blur=0, noise=0, specks=0, jpeg_quality=95, paper=255,
                               ink=0, shade=0)  # fmt: skip
            image = degraded_scan(pdf, page, flat, seed=page)
            run(f"clean 150 dpi {short} (JPEG)", save_scan(image, Path(tmp) / "c.jpg"),
                "image/jpeg", truth)  # fmt: skip
            how = replace(Degradation(), angle=Degradation().angle * (-1) ** number)
            image = degraded_scan(pdf, page, how, seed=page)
            run(f"poor scan {short} {how.angle:+.1f}° (JPEG)",
                save_scan(image, Path(tmp) / "p.jpg"), "image/jpeg", truth)  # fmt: skip
            run(f"poor scan {short} {how.angle:+.1f}° (PDF)",
                save_scan(image, Path(tmp) / "p.pdf", dpi=how.dpi), PDF, truth)  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print()
    for kind in ("clean scan", "clean 150 dpi", "poor scan"):
        for prepare in (False, True):
            picked = [r for r in rows if r["case"].startswith(kind) and r["prepare"] == prepare]
            if not picked:
                continue
            recall = min(r["recall"] for r in picked)
            mean = sum(r["recall"] for r in picked) / len(picked)
            seconds = sum(r["s_per_page"] for r in picked) / len(picked)
            prep = (
                f"  prep {sum(r['prep_ms_per_page'] for r in picked) / len(picked):.0f} ms/page"
                if prepare
                else ""
            )
            print(
                f"{kind:14s} {'prepared' if prepare else 'before':8s} recall mean {mean:.3f} "
                f"min {recall:.3f}  {seconds:.2f} s/page{prep}"
            )


if __name__ == "__main__":
    main()
