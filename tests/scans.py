"""Poor scans made from real pages, with their text layer as ground truth (tests and bench).

A page of a real PDF is rendered at a scanner's low resolution, turned a little, blurred,
given sensor noise and specks, and JPEG-compressed: the usual faults of an office scan, made
the same way on every run (seeded), so OCR recall can be measured against what the page says.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter


@dataclass(frozen=True)
class Degradation:
    dpi: int = 150
    angle: float = 2.5  # degrees, counter-clockwise
    blur: float = 0.7  # Gaussian radius in pixels
    noise: float = 20.0  # standard deviation of Gaussian noise, in grey levels
    specks: float = 0.01  # fraction of pixels turned black or white
    jpeg_quality: int = 55
    paper: int = 225  # grey level of the blank page
    ink: int = 40  # grey level of the print
    shade: float = 0.1  # darkening from the left to the right edge (uneven lighting)


def page_text(pdf: Path, index: int) -> str:
    """The text layer of one page (0-based): the ground truth of its scan."""
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(str(pdf))
    try:
        page = doc[index]
        textpage = page.get_textpage()
        text = textpage.get_text_range()
        textpage.close()
        page.close()
        return text
    finally:
        doc.close()


def degraded_scan(pdf: Path, index: int, how: Degradation, seed: int = 0) -> Image.Image:
    """Page ``index`` (0-based) of ``pdf`` as a poor scan: a JPEG-compressed greyscale image
    at ``how.dpi``, carrying no resolution in its metadata (as many scanners' files)."""
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(str(pdf))
    try:
        page = doc[index]
        image = page.render(scale=how.dpi / 72, grayscale=True).to_pil().convert("L")
        page.close()
    finally:
        doc.close()
    image = image.rotate(how.angle, resample=Image.Resampling.BICUBIC, fillcolor=255)
    if how.blur:
        image = image.filter(ImageFilter.GaussianBlur(how.blur))
    rng = np.random.default_rng(seed)
    pixels = np.asarray(image, dtype=np.float32) / 255 * (how.paper - how.ink) + how.ink
    pixels *= np.linspace(1.0, 1.0 - how.shade, pixels.shape[1], dtype=np.float32)
    pixels = pixels + rng.normal(0.0, how.noise, pixels.shape)
    specks = rng.random(pixels.shape)
    pixels[specks < how.specks / 2] = 0
    pixels[specks > 1 - how.specks / 2] = 255
    noisy = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    noisy.save(buf, format="JPEG", quality=how.jpeg_quality)
    buf.seek(0)
    scanned = Image.open(buf)
    scanned.load()
    return scanned


def save_scan(image: Image.Image, path: Path, dpi: int | None = None) -> Path:
    """The scan as a file: JPEG (its pixels as they are) or PDF (one page, the image filling
    it at ``dpi``, no text layer). ``dpi`` goes into the JPEG's metadata only when given."""
    if path.suffix.lower() == ".pdf":
        image.save(path, format="PDF", resolution=float(dpi or 150))
    elif dpi:
        image.save(path, format="JPEG", quality=95, dpi=(dpi, dpi))
    else:
        image.save(path, format="JPEG", quality=95)
    return path


def words(text: str) -> list[str]:
    """Lowercased word tokens, as tests/resources/test_extract.py counts them."""
    return re.findall(r"\w+", text.lower())


def word_recall(truth: str, pages: Iterable[str]) -> float:
    """Share of the ground truth's words (each occurrence) that the OCR output contains."""
    expected = words(truth)
    seen = set(words(" ".join(pages)))
    return sum(w in seen for w in expected) / len(expected)
