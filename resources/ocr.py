"""Local OCR with Tesseract (Debian's ``tesseract-ocr``), one page image at a time."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from typing import Any, Protocol


class OcrError(RuntimeError):
    """OCR could not read a page (engine missing, crashed or timed out)."""


class OcrEngine(Protocol):
    name: str

    def read_image(self, image: Any) -> str: ...


class TesseractOcr:
    """Runs the ``tesseract`` binary on a PIL image; one thread per call (it is faster here)."""

    name = "tesseract"

    def __init__(self, languages: str = "eng", timeout_s: float = 180.0) -> None:
        self.languages = languages
        self.timeout_s = timeout_s

    @staticmethod
    def available() -> bool:
        return shutil.which("tesseract") is not None

    def read_image(self, image: Any) -> str:
        if not self.available():
            raise OcrError("OCR engine not installed: the 'tesseract' binary is not on PATH")
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
            detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
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
