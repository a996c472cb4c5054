"""OCR of poor scans: real pages at 150 dpi, turned, grainy and JPEG-compressed, read through
``extract_pages`` as image files and as PDFs, against the pages' own text layers; the clean
scan reads as well as before the preparation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from resources.extract import PDF, extract_pages
from resources.ocr import TesseractOcr, prepare_page
from tests.conftest import PDFS
from tests.scans import Degradation, degraded_scan, page_text, save_scan, word_recall

needs_tesseract = pytest.mark.skipif(
    not TesseractOcr.available(), reason="needs Debian's tesseract-ocr (make install)"
)

# Held out: the preparation was tuned on camlidl pages 6 and 13 and gri pages 31 and 91 only.
HELD_OUT = [
    ("camlidl-manual.pdf", 16, 2.5, ".jpg"),
    ("camlidl-manual.pdf", 22, -2.5, ".pdf"),
    ("gri-manual.pdf", 44, -2.5, ".jpg"),
    ("gri-manual.pdf", 121, 2.5, ".pdf"),
]
# The clean scan's recall before the preparation: 1,319 of its 1,329 words.
CLEAN_SCAN_RECALL = 1319 / 1329


def _scan(tmp_path: Path, name: str, index: int, angle: float, suffix: str) -> Path:
    image = degraded_scan(PDFS / name, index, Degradation(angle=angle), seed=index)
    return save_scan(image, tmp_path / f"scan{suffix}", dpi=150 if suffix == ".pdf" else None)


def _read(path: Path, ocr: Any = None) -> list[str]:
    media_type = PDF if path.suffix == ".pdf" else "image/jpeg"
    return [p.text for p in extract_pages(path, media_type, ocr=ocr or TesseractOcr())]


@needs_tesseract
@pytest.mark.parametrize(("name", "index", "angle", "suffix"), HELD_OUT)
def test_a_poor_scan_reads_with_word_recall_over_90_percent(
    tmp_path: Path, name: str, index: int, angle: float, suffix: str
) -> None:
    path = _scan(tmp_path, name, index, angle, suffix)
    recall = word_recall(page_text(PDFS / name, index), _read(path))
    assert recall >= 0.9, f"{name} page {index + 1} as {suffix}: recall {recall:.3f}"


@needs_tesseract
def test_the_same_poor_scan_unprepared_reads_badly(tmp_path: Path) -> None:
    """The scans above are as hard as the issue's: Tesseract alone loses most of the words."""
    name, index, angle, suffix = HELD_OUT[0]
    path = _scan(tmp_path, name, index, angle, suffix)
    recall = word_recall(page_text(PDFS / name, index), _read(path, TesseractOcr(prepare=False)))
    assert recall < 0.8


@needs_tesseract
def test_the_clean_scan_reads_as_well_as_before() -> None:
    pages = _read(PDFS / "camlidl-manual.p8-10.scanned.pdf")
    truth = (PDFS / "camlidl-manual.p8-10.groundtruth.txt").read_text()
    assert word_recall(truth, pages) >= CLEAN_SCAN_RECALL


@pytest.mark.parametrize("angle", [-3.0, -1.5, 2.0])
def test_skew_and_resolution_are_measured_from_the_page(angle: float) -> None:
    image = degraded_scan(PDFS / "gri-manual.pdf", 44, Degradation(angle=angle), seed=1)
    assert "dpi" not in image.info  # estimated from the pitch of the text lines
    prepared = prepare_page(image)
    assert prepared.skew == pytest.approx(angle, abs=0.1)
    assert prepared.dpi == pytest.approx(300, rel=0.15)
    assert prepared.cleaned and prepared.image.size[0] > 1.7 * image.size[0]


def test_a_resolution_in_the_metadata_is_believed(tmp_path: Path) -> None:
    from PIL import Image

    image = degraded_scan(PDFS / "camlidl-manual.pdf", 16, Degradation(), seed=1)
    with Image.open(save_scan(image, tmp_path / "scan.jpg", dpi=120)) as stated:
        prepared = prepare_page(stated)
    assert prepared.scale == pytest.approx(2.5) and prepared.dpi == pytest.approx(300)


def test_a_clean_page_at_300_dpi_goes_to_tesseract_as_it_came() -> None:
    clean = Degradation(dpi=300, angle=0, blur=0, noise=0, specks=0, jpeg_quality=95,
                        paper=255, ink=0, shade=0)  # fmt: skip
    image = degraded_scan(PDFS / "camlidl-manual.pdf", 16, clean)
    prepared = prepare_page(image)
    assert not prepared.cleaned and prepared.scale == 1.0 and prepared.skew == 0.0
    assert np.array_equal(np.asarray(prepared.image), np.asarray(image))


class _Recording:
    name = "recording"

    def __init__(self) -> None:
        self.images: list[Any] = []

    def read_image(self, image: Any) -> str:
        self.images.append(image)
        return "text"


def test_a_scanned_pdf_page_is_rendered_at_the_scans_own_resolution(tmp_path: Path) -> None:
    """Not enlarged by the renderer, grain and all: the OCR despeckles first, then enlarges."""
    path = _scan(tmp_path, "camlidl-manual.pdf", 16, 2.5, ".pdf")
    ocr = _Recording()
    list(extract_pages(path, PDF, ocr=ocr, ocr_dpi=300))
    (image,) = ocr.images
    assert image.info["dpi"] == (150, 150) and image.width == pytest.approx(1241, abs=2)
    ocr = _Recording()
    list(extract_pages(PDFS / "camlidl-manual.p8-10.scanned.pdf", PDF, ocr=ocr, ocr_dpi=150))
    assert [i.info["dpi"] for i in ocr.images] == [(150, 150)] * 3  # never over ocr_dpi
