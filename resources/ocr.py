"""Local OCR with Tesseract (Debian's ``tesseract-ocr``), one page image at a time.

Tesseract reads clean pages almost perfectly, but a poor scan (150 dpi, turned a few degrees,
grainy) loses a quarter of its words or more, at times all: its page segmentation takes the
grain for text, and its letters are small and frayed. ``prepare_page`` undoes what it can
first, with Pillow and NumPy only, in a tenth of the OCR's own time.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class OcrError(RuntimeError):
    """OCR could not read a page (engine missing, crashed or timed out)."""


class OcrEngine(Protocol):
    name: str

    def read_image(self, image: Any) -> str: ...

    def in_languages(self, languages: str) -> OcrEngine:
        """The same engine reading ``languages`` (``eng+deu``: a dataset's own)."""
        ...


class TesseractOcr:
    """Runs the ``tesseract`` binary on a PIL image; one thread per call (it is faster here).
    Each page goes through ``prepare_page`` first unless ``prepare`` is off (benchmarks)."""

    name = "tesseract"

    def __init__(
        self, languages: str = "eng", timeout_s: float = 180.0, prepare: bool = True
    ) -> None:
        self.languages = languages
        self.timeout_s = timeout_s
        self.prepare = prepare

    @staticmethod
    def available() -> bool:
        return shutil.which("tesseract") is not None

    def in_languages(self, languages: str) -> TesseractOcr:
        return TesseractOcr(languages, self.timeout_s, self.prepare)

    def read_image(self, image: Any) -> str:
        if not self.available():
            raise OcrError("OCR engine not installed: the 'tesseract' binary is not on PATH")
        if self.prepare:
            image = prepare_page(image).image
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        env = dict(os.environ, OMP_THREAD_LIMIT="1")
        try:
            proc = subprocess.run(
                ["tesseract", "stdin", "stdout", "-l", self.languages, "--psm", "3"],
                input=buf.getvalue(),
                capture_output=True,
                timeout=self.timeout_s,
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise OcrError(f"OCR timed out after {self.timeout_s:.0f} s") from None
        if proc.returncode < 0:  # killed: out of memory under a cap is the usual cause
            raise OcrError(f"tesseract died (signal {-proc.returncode}){_memory_cap()}")
        if proc.returncode != 0:
            stderr = proc.stderr.decode("utf-8", "replace")
            if "Failed loading language" in stderr:
                raise OcrError(
                    f"OCR languages {self.languages!r} are not all installed (Tesseract's "
                    "language data: Debian's tesseract-ocr-<code> packages)"
                )
            detail = stderr.strip().splitlines()[-1:]
            raise OcrError(f"tesseract failed: {' '.join(detail) or proc.returncode}")
        return proc.stdout.decode("utf-8", "replace")


def _memory_cap() -> str:
    """Names the memory cap this process (and so Tesseract) runs under, if any."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return ""
    return (
        f", under its memory cap of {soft // 1024**2:,} MB (ALIEN_EXTRACT_MEMORY_MB): the page "
        "needs more memory than the cap"
    )


# What Tesseract reads best: body text at about 300 dpi (a 10-point letter's x-height near
# 20 pixels). A grainy page under 80 % of it is enlarged to it once despeckled (recall 0.96 to
# 0.99 on the 150-dpi tuning scans, 0.91 to 0.96 unenlarged); a clean page only under
# _SMALL_DPI, as a clean 150-dpi page reads as well as it is (0.99 to 1.00) and enlarged costs
# Tesseract 30 to 60 % more time. Never more than 4x, nor past as many pixels as an A2 sheet
# at 300 dpi (the reader's memory).
TARGET_DPI = 300
_SMALL_DPI = 130
_MAX_UPSCALE = 4.0
_MAX_PREPARED_PIXELS = 36_000_000
# Resolution in a file's metadata is believed in this range: below it is a screen's default
# (72, 96), written by tools that know nothing of the scan.
_METADATA_DPI = (100.0, 1200.0)
# Body text is set about 12 points from baseline to baseline (10-point type, or 11 point set
# solid); the line pitch in pixels so gives the resolution when nothing states it.
_LEADING_PT = 12.0
_MAX_SKEW = 5.0  # degrees each way; more is a page put in sideways, not a skewed one
_MIN_SKEW = 0.1  # degrees: less is not worth a resampling
# Grey-level spread of the blank paper over which a page is despeckled and binarized: clean
# scans and renders measure 0 to 0.2 here, grain of 5 grey levels with 1 % specks 4.5 to 6
# (Tesseract alone then loses up to 6 % of the words, and 17 % once the page is turned back
# without despeckling), grain of 20 levels 18 to 19.
_NOISY = 4.0
_ANALYSIS_SIDE = 1400  # longest side of the reduced copy the page is measured on


@dataclass(frozen=True)
class PreparedPage:
    """A page image made ready for Tesseract, with what was measured and done to it."""

    image: Any  # PIL image, mode "L"
    dpi: float | None  # of ``image``: stated or estimated, times ``scale``; None if unknown
    skew: float  # degrees the page was turned back by (counter-clockwise positive)
    noise: float  # grey-level spread of the blank paper
    scale: float  # enlargement applied (1.0: none)
    cleaned: bool  # despeckled and binarized


def prepare_page(image: Any, dpi: float | None = None) -> PreparedPage:
    """The page straightened (±5°), and when grainy despeckled (3x3 median), evened against
    uneven lighting, enlarged to about ``TARGET_DPI`` and binarized (Otsu); a clean page is
    enlarged only when its text is very small. Each step runs only where it is measured to be
    needed, so a clean, straight page goes to Tesseract as it came. ``dpi`` is the image's
    resolution when the caller knows it; else its metadata, else its text line pitch, tell."""
    from PIL import Image, ImageFilter

    gray = image if image.mode == "L" else image.convert("L")
    if dpi is None:
        dpi = _metadata_dpi(image)
    noise = _paper_noise(gray)
    cleaned = noise > _NOISY
    if cleaned:
        gray = Image.fromarray(_flatten(_median3(np.asarray(gray))))
    reduce = max(1, round(max(gray.size) / _ANALYSIS_SIDE))
    small = np.asarray(gray.reduce(reduce) if reduce > 1 else gray)
    skew, pitch = _skew_and_line_pitch(small <= _otsu(np.bincount(small.ravel(), minlength=256)))
    if dpi is None and pitch is not None:
        dpi = pitch * reduce * 72 / _LEADING_PT
    scale = 1.0
    if dpi is not None and dpi < (0.8 * TARGET_DPI if cleaned else _SMALL_DPI):
        room = (_MAX_PREPARED_PIXELS / (gray.width * gray.height)) ** 0.5
        scale = max(1.0, min(TARGET_DPI / dpi, _MAX_UPSCALE, room))
    if abs(skew) >= _MIN_SKEW:  # turned back before it is enlarged: fewer pixels to turn
        paper = int(np.median(small))
        gray = gray.rotate(-skew, resample=Image.Resampling.BICUBIC, fillcolor=paper)
    if scale > 1.0:
        size = (round(gray.width * scale), round(gray.height * scale))
        gray = gray.resize(size, Image.Resampling.BICUBIC)
    if cleaned:  # grain left on the strokes' edges would fray them at the threshold
        gray = gray.filter(ImageFilter.BoxBlur(1))
        threshold = _otsu(np.asarray(gray.histogram()))
        gray = gray.point([0] * (threshold + 1) + [255] * (255 - threshold))
    return PreparedPage(
        image=gray,
        dpi=dpi * scale if dpi is not None else None,
        skew=skew,
        noise=noise,
        scale=scale,
        cleaned=cleaned,
    )


def _metadata_dpi(image: Any) -> float | None:
    """The resolution a PNG, JPEG or TIFF states, if it is plausibly a scanner's."""
    stated = image.info.get("dpi")
    try:
        value = float(stated[0])
    except (TypeError, ValueError, IndexError):
        return None
    low, high = _METADATA_DPI
    return value if low <= value <= high else None


def _otsu(histogram: np.ndarray) -> int:
    """Otsu's threshold of a 256-bin histogram: the grey level that best splits ink from paper."""
    counts = histogram.astype(np.float64)
    levels = np.arange(counts.size)
    below = np.cumsum(counts)
    above = below[-1] - below
    mass = np.cumsum(counts * levels)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mass[-1] * below / below[-1] - mass) ** 2 / (below * above)
    return int(np.argmax(np.nan_to_num(between)))


def _median3(pixels: np.ndarray) -> np.ndarray:
    """A 3x3 median, taken along rows then columns (separable): removes one-pixel specks as the
    true median does, at a few array operations instead of Pillow's sort per pixel."""

    def median(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        return np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))

    padded = np.pad(pixels, 1, mode="edge")
    rows = median(padded[:, :-2], padded[:, 1:-1], padded[:, 2:])
    return median(rows[:-2], rows[1:-1], rows[2:])


def _flatten(pixels: np.ndarray, blocks: int = 160) -> np.ndarray:
    """The page divided by its paper's own grey, so that one threshold splits ink from paper
    across uneven lighting: the paper is the lightest pixel of each block (about 1/160 of the
    page's longer side), spread over neighbouring blocks and smoothed."""
    from PIL import Image, ImageFilter

    size = max(1, max(pixels.shape) // blocks)
    rows, cols = -(-pixels.shape[0] // size), -(-pixels.shape[1] // size)
    padded = np.pad(
        pixels, ((0, rows * size - pixels.shape[0]), (0, cols * size - pixels.shape[1])), "edge"
    )
    lightest = padded.reshape(rows, size, cols, size).max(axis=(1, 3))
    paper = Image.fromarray(lightest).filter(ImageFilter.MaxFilter(5))
    paper = paper.filter(ImageFilter.GaussianBlur(2))
    paper = paper.resize((pixels.shape[1], pixels.shape[0]), Image.Resampling.BILINEAR)
    level = np.maximum(np.asarray(paper), 1)
    flat = np.empty_like(pixels)
    for top in range(0, pixels.shape[0], 512):  # in bands: floats of a whole page are large
        band = slice(top, top + 512)
        flat[band] = np.minimum(pixels[band] * (255.0 / level[band]), 255.0)
    return flat


def _paper_noise(gray: Any, side: int = 768, block: int = 4) -> float:
    """Grey-level spread of the blank paper in the page's middle: the median standard
    deviation of its lightest quarter of 4x4 blocks (blocks small enough to fit between the
    lines and letters of dense text). A scanner's grain, whatever the text and the resolution."""
    width, height = gray.size
    left, top = max(0, (width - side) // 2), max(0, (height - side) // 2)
    crop = np.asarray(gray.crop((left, top, min(width, left + side), min(height, top + side))))
    rows, cols = crop.shape[0] // block, crop.shape[1] // block
    if not rows or not cols:
        return 0.0
    blocks = crop[: rows * block, : cols * block].reshape(rows, block, cols, block)
    blocks = blocks.swapaxes(1, 2).reshape(-1, block * block).astype(np.float32)
    means = blocks.mean(axis=1)
    return float(np.median(blocks[means >= np.percentile(means, 75)].std(axis=1)))


def _skew_and_line_pitch(ink: np.ndarray) -> tuple[float, float | None]:
    """The angle (degrees) that makes the ink's row profile sharpest, and the text line pitch
    (pixels) at that angle. Text lines turned by the skew's angle fall into as few rows as
    they can when projected at it; the profile's autocorrelation then peaks at the pitch."""
    ys, xs = np.nonzero(ink)
    if ys.size < 500:  # a blank page: nothing to measure
        return 0.0, None
    step = max(1, ys.size // 60_000)  # a sample is as sharp and much cheaper
    y = ys[::step].astype(np.float64)
    x = xs[::step].astype(np.float64)
    x -= x.mean()

    def profile(angle: float) -> np.ndarray:
        turn = np.radians(angle)
        rows = y * np.cos(turn) + x * np.sin(turn)
        return np.bincount((rows - rows.min()).astype(np.int64))

    def sharpness(angle: float) -> float:
        counts = profile(angle).astype(np.float64)
        return float(counts @ counts)

    best = max(np.arange(-_MAX_SKEW, _MAX_SKEW + 1e-9, 0.25), key=sharpness)
    best = round(max(np.arange(best - 0.25, best + 0.25 + 1e-9, 0.05), key=sharpness), 2)
    counts = profile(best).astype(np.float64)
    counts -= counts.mean()
    spectrum = np.fft.rfft(counts, 2 * counts.size)
    correlation = np.fft.irfft(spectrum * np.conj(spectrum))[: counts.size // 2]
    rising = np.nonzero(np.diff(correlation) > 0)[0]
    if rising.size == 0:  # no repeating lines: a picture, or a single line
        return float(best), None
    first = int(rising[0])  # past the first trough: the next peak is one line pitch away
    return float(best), float(first + np.argmax(correlation[first:]))
