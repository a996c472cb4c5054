import re
from pathlib import Path

import pytest

from resources.extract import (
    PDF,
    ExtractionError,
    detect_media_type,
    extract_pages,
    html_to_text,
)
from resources.ocr import OcrError, TesseractOcr
from tests.conftest import PDFS, pdf_pages

needs_tesseract = pytest.mark.skipif(
    not TesseractOcr.available(), reason="needs Debian's tesseract-ocr (make install)"
)


def _extract(path: Path, media_type: str | None = None, ocr=None):
    media_type = media_type or detect_media_type(path.name, path.read_bytes()[:1024])
    return list(extract_pages(path, media_type, ocr=ocr or TesseractOcr()))


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def test_pdf_text_layer_page_by_page():
    pages = _extract(PDFS / "camlidl-manual.pdf")
    assert len(pages) == 26
    assert all(p.method == "text" for p in pages)
    assert "Forward declarations of structs" in pages[7].text


@needs_tesseract
def test_scanned_pdf_goes_through_ocr_and_matches_ground_truth():
    pages = _extract(PDFS / "camlidl-manual.p8-10.scanned.pdf")
    assert [p.method for p in pages] == ["ocr"] * 3
    truth = _words((PDFS / "camlidl-manual.p8-10.groundtruth.txt").read_text())
    seen = set(_words(" ".join(p.text for p in pages)))
    recall = sum(w in seen for w in truth) / len(truth)
    assert recall > 0.95


class _BrokenOcr:
    name = "broken"

    def read_image(self, image):
        raise OcrError("engine crashed")


def test_ocr_failure_is_a_clear_extraction_error():
    with pytest.raises(ExtractionError, match="page 1: engine crashed"):
        _extract(PDFS / "camlidl-manual.p8-10.scanned.pdf", ocr=_BrokenOcr())


def test_bad_inputs_have_clear_reasons(tmp_path):
    from tests.conftest import bad_documents

    for name, reason in bad_documents(tmp_path).items():
        with pytest.raises(ExtractionError, match=reason):
            _extract(tmp_path / name)


def test_binary_content_named_txt(tmp_path):
    path = tmp_path / "data.txt"
    path.write_bytes(b"\x00\x01\x02" * 100)
    with pytest.raises(ExtractionError, match="binary content"):
        _extract(path)


def test_encrypted_pdf_reason(tmp_path):
    path = tmp_path / "locked.pdf"
    path.write_bytes(pdf_pages(PDFS / "camlidl-manual.pdf", [0], password="pw"))
    with pytest.raises(ExtractionError, match="password"):
        _extract(path, PDF)


def test_html_markdown_and_text(tmp_path):
    html = tmp_path / "page.html"
    html.write_text(
        "<html><head><title>Wing tests</title><style>p{color:red}</style></head>"
        "<body><p>Lift &amp; drag</p><script>var x = 1;</script><ul><li>one</li></ul></body></html>"
    )
    text = _extract(html)[0].text
    assert "Wing tests" in text and "Lift & drag" in text and "one" in text
    assert "color" not in text and "var x" not in text
    md = tmp_path / "notes.md"
    md.write_text("# Title\n\nSome *markdown* text.")
    assert _extract(md)[0].text.startswith("# Title")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("cp1252"))
    assert _extract(latin)[0].text == "café"


def test_media_type_detection():
    assert detect_media_type("x.bin", b"%PDF-1.7 ...") == PDF
    assert detect_media_type("scan.jpg", b"\x89PNG\r\n\x1a\n....") == "image/png"
    assert detect_media_type("a.md", b"# hi") == "text/markdown"
    assert detect_media_type("a.weird", b"??") == "application/octet-stream"
    assert html_to_text("<p>a</p><p>b</p>") == "a\n\nb"


# The most one hostile document may add to a process reading it: Python with pdfium and
# Pillow loaded peaks near 100 MB here; the bomb below would take gigabytes if rendered.
PEAK_BOUND_MB = 300

# VmHWM is this process's own peak; getrusage's ru_maxrss would include the parent's
# (Linux carries it across fork and exec), which is the test runner holding a model.
_PEAK_SCRIPT = """
import sys
from pathlib import Path
from resources.extract import ExtractionError, extract_pages
from resources.ocr import TesseractOcr
try:
    list(extract_pages(Path(sys.argv[1]), sys.argv[2], ocr=TesseractOcr(), ocr_dpi=200))
    print("no error")
except ExtractionError as err:
    print(err)
status = Path("/proc/self/status").read_text()
print(next(int(l.split()[1]) for l in status.splitlines() if l.startswith("VmHWM:")) // 1024)
"""


@pytest.mark.parametrize(
    ("name", "media_type"), [("page-bomb.pdf", "application/pdf"), ("pixel-bomb.png", "image/png")]
)
def test_a_hostile_document_fails_on_its_cap_with_bounded_memory(
    tmp_path: Path, name: str, media_type: str
) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO, page_size_bomb, pixel_bomb_png

    path = tmp_path / name
    path.write_bytes(page_size_bomb(3) if name.endswith(".pdf") else pixel_bomb_png(12_000, 12_000))
    assert path.stat().st_size < 300_000  # a small file...
    run = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(path), media_type],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=True,
    )  # fmt: skip
    message, peak_mb = run.stdout.strip().rsplit("\n", 1)
    assert "ALIEN_MAX_PAGE_PIXELS" in message
    assert int(peak_mb) < PEAK_BOUND_MB, f"peak RSS {peak_mb} MB"  # ...that stays small


def test_more_pages_than_the_cap_fail_before_any_is_read(tmp_path: Path) -> None:
    from resources.extract import DocumentLimits

    path = tmp_path / "many.pdf"
    path.write_bytes(pdf_pages(PDFS / "camlidl-manual.pdf", [0] * 30))
    with pytest.raises(ExtractionError, match=r"30 pages, over the cap of 20 .*PAGES_PER_ENTRY"):
        list(extract_pages(path, "application/pdf", ocr=TesseractOcr(),
                           limits=DocumentLimits(max_pages=20)))  # fmt: skip
