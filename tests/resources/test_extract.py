import re
from pathlib import Path

import pytest

from resources.extract import (
    PDF,
    ExtractionError,
    decode_text,
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


# Sentences written for these tests, one per language, each long enough to be a paragraph.
PARAGRAPHS = {
    "ja": "東京の大学で航空工学を学ぶ学生たちは、風洞実験で翼の周りの境界層の遷移を観察した。"
    "実験の結果は、理論的な予測とよく一致していた。",
    "zh": "研究人员在风洞中测量了机翼周围的边界层转捩，并将实验结果与理论预测进行了比较。"
    "结果表明两者基本一致。",
    "zh-Hant": "研究人員在風洞中測量了機翼周圍的邊界層轉捩，並將實驗結果與理論預測進行了比較。"
    "結果表明兩者基本一致。",
    "ko": "연구자들은 풍동에서 날개 주위의 경계층 천이를 측정하고 실험 결과를 이론적 예측과 "
    "비교하였다. 결과는 대체로 일치하였다.",
    "de": "Die Grenzschicht an einem gepfeilten Flügel strömt zur Flügelspitze hin; größere "
    "Pfeilung verzögert den Überschallwiderstand.",
    "fr": "La couche limite sur une aile en flèche s'écoule vers l'extrémité ; une flèche plus "
    "forte retarde la traînée d'onde.",
    "ru": "Пограничный слой на стреловидном крыле течёт к концу крыла; большая стреловидность "
    "задерживает волновое сопротивление.",
}
LEGACY = [
    ("ja", "shift_jis"), ("ja", "euc_jp"), ("zh", "gb18030"), ("zh-Hant", "big5"),
    ("ko", "euc_kr"), ("de", "latin-1"), ("fr", "latin-1"), ("fr", "cp1252"),
    ("ru", "cp1251"), ("ru", "koi8_r"), ("de", "utf-16"), ("ja", "utf-8-sig"),
]  # fmt: skip


@pytest.mark.parametrize(("language", "encoding"), LEGACY)
def test_text_in_a_legacy_encoding_is_decoded_exactly(tmp_path, language, encoding):
    text = PARAGRAPHS[language]
    data = text.encode(encoding)
    assert decode_text(data)[0] == text
    path = tmp_path / "notes.txt"
    path.write_bytes(data)
    assert _extract(path)[0].text == text


@pytest.mark.parametrize("word", ["naïve", "Straße", "café crème", "Æbleskiver"])
def test_a_few_accented_letters_without_language_evidence_read_as_cp1252(word):
    assert decode_text(word.encode("cp1252")) == (word, "cp1252")


def test_a_byte_order_mark_with_invalid_bytes_after_it_is_a_clear_error():
    with pytest.raises(ExtractionError, match="not valid utf-8-sig after its byte-order mark"):
        decode_text(b"\xef\xbb\xbfok \xff\xfe\xfd")


def test_media_type_detection():
    assert detect_media_type("x.bin", b"%PDF-1.7 ...") == PDF
    assert detect_media_type("scan.jpg", b"\x89PNG\r\n\x1a\n....") == "image/png"
    assert detect_media_type("a.md", b"# hi") == "text/markdown"
    assert detect_media_type("a.weird", b"??") == "application/octet-stream"
    assert html_to_text("<p>a</p><p>b</p>") == "a\n\nb"


# The most one hostile document may cost: the server (the process that hands documents to the
# reader) stays near its own size, and the reader child, Python with pdfium and Pillow, peaks
# near 100 MB here. Unbounded, the page bomb took 1.55 GB here and Tesseract 3.1 GB more; the
# stream bomb took pdfium to 3.2 GB.
PEAK_BOUND_MB = 300

# VmHWM is this process's own peak; RUSAGE_CHILDREN is the largest peak of its reaped children
# (the reader, and the Tesseract processes it started).
_PEAK_SCRIPT = """
import resource, sys
from pathlib import Path
from resources.extract import DocumentLimits, ExtractionError
from resources.extract_worker import BoundedExtractor, ExtractionJob
from resources.ocr import TesseractOcr
job = ExtractionJob(TesseractOcr(), 200, 32 * 1024 * 1024, DocumentLimits())
with BoundedExtractor(job, memory_mb=2048, seconds=120) as reader:
    try:
        reader.extract(Path(sys.argv[1]), sys.argv[2])
        print("no error")
    except ExtractionError as err:
        print(err)
status = Path("/proc/self/status").read_text()
print(next(int(l.split()[1]) for l in status.splitlines() if l.startswith("VmHWM:")) // 1024)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
"""


@pytest.mark.parametrize(
    ("name", "media_type", "cap"),
    [
        ("page-bomb.pdf", PDF, "ALIEN_MAX_PAGE_PIXELS"),
        ("pixel-bomb.png", "image/png", "ALIEN_MAX_PAGE_PIXELS"),
        ("stream-bomb.pdf", PDF, "ALIEN_MAX_DECOMPRESSED_BYTES"),
        ("many-pages.pdf", PDF, "ALIEN_MAX_PAGES_PER_ENTRY"),
    ],
)
def test_a_hostile_document_fails_on_its_cap_with_bounded_memory(
    tmp_path: Path, name: str, media_type: str, cap: str
) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO, bad_documents

    bad_documents(tmp_path)
    path = tmp_path / name
    assert path.stat().st_size < 3_000_000  # a small file...
    run = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(path), media_type],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=True,
    )  # fmt: skip
    message, server_mb, reader_mb = run.stdout.strip().rsplit("\n", 2)
    assert cap in message
    assert int(server_mb) < PEAK_BOUND_MB, f"server peak RSS {server_mb} MB"  # ...that stays
    assert int(reader_mb) < PEAK_BOUND_MB, f"reader peak RSS {reader_mb} MB"  # small


def _reader(memory_mb: int = 2048, seconds: float = 120.0, **limits: int):
    from resources.extract import DocumentLimits
    from resources.extract_worker import BoundedExtractor, ExtractionJob

    job = ExtractionJob(TesseractOcr(), 200, 32 * 1024 * 1024, DocumentLimits(**limits))
    return BoundedExtractor(job, memory_mb=memory_mb, seconds=seconds)


def test_a_document_over_the_memory_cap_fails_and_the_next_is_read(tmp_path: Path) -> None:
    from tests.conftest import page_size_bomb

    bomb = tmp_path / "bomb.pdf"
    bomb.write_bytes(page_size_bomb(1))
    # With the pixel cap lifted, the page would render to 1.6 billion pixels: the reader's
    # address-space limit stops it instead.
    with _reader(memory_mb=512, max_page_pixels=10**11) as reader:
        with pytest.raises(ExtractionError, match=r"more than the cap of 512 MB .*MEMORY_MB"):
            reader.extract(bomb, PDF)
        assert reader.restarts == 1
        pages = reader.extract(PDFS / "camlidl-manual.pdf", PDF)
    assert pages[0].text.startswith("Camlidl user")


@needs_tesseract
def test_a_document_over_the_time_cap_fails_and_the_next_is_read() -> None:
    scanned = PDFS / "camlidl-manual.p8-10.scanned.pdf"  # three pages of OCR: over 10 s
    # The cap leaves the 26 text pages of the next document (about 0.3 s with the search for
    # tables, and a new reader process to start) room on a loaded machine.
    with _reader(seconds=2.0) as reader:
        with pytest.raises(ExtractionError, match=r"cap of 2 s per entry .*SECONDS_PER_ENTRY"):
            reader.extract(scanned, PDF)
        assert reader.restarts == 1
        assert reader.extract(PDFS / "camlidl-manual.pdf", PDF)[0].text.startswith("Camlidl")


@needs_tesseract
def test_a_submitted_document_is_read_while_the_caller_works_within_its_cap() -> None:
    """``submit`` starts the reading and returns (the pipeline records the previous document
    meanwhile); the time cap counts from ``submit``, the caller's own time included; one
    document at a time."""
    import time

    with _reader(seconds=2.0) as reader:
        reader.submit(PDFS / "camlidl-manual.pdf", PDF)
        with pytest.raises(RuntimeError, match="take its result first"):
            reader.submit(PDFS / "camlidl-manual.pdf", PDF)
        assert reader.result()[0].text.startswith("Camlidl user")
        with pytest.raises(RuntimeError, match="no document is being read"):
            reader.result()
        reader.submit(PDFS / "camlidl-manual.p8-10.scanned.pdf", PDF)  # OCR: over 2 s
        time.sleep(2.2)  # the caller's work, past the cap
        started = time.monotonic()
        with pytest.raises(ExtractionError, match=r"cap of 2 s per entry"):
            reader.result()
        assert time.monotonic() - started < 1.0  # it did not wait a cap of its own
        assert reader.restarts == 1
        reader.submit(PDFS / "camlidl-manual.pdf", PDF)
        assert reader.result()[0].text.startswith("Camlidl user")


@needs_tesseract
def test_closing_the_reader_mid_document_kills_it_and_what_it_started(tmp_path: Path) -> None:
    """A run cancelled, or failed on a store, while the next document is read: the reader and
    its Tesseract processes go at once (their file is let go only then)."""
    import time

    def group(pgid: int) -> list[int]:
        found = []
        for proc in Path("/proc").iterdir():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                found.append(int(proc.name))
        return found

    from tests.conftest import pdf_pages

    scan = tmp_path / "scan.pdf"  # 12 pages of OCR: longer than closing may wait for
    scan.write_bytes(pdf_pages(PDFS / "camlidl-manual.p8-10.scanned.pdf", [0, 1, 2] * 4))
    reader = _reader()
    reader.submit(scan, PDF)
    child = reader._proc
    assert child is not None
    deadline = time.monotonic() + 30
    while len(group(child.pid)) < 2:  # the reader and a Tesseract at work
        assert time.monotonic() < deadline, "no Tesseract started"
        time.sleep(0.05)
    closing = time.monotonic()
    reader.close()
    assert time.monotonic() - closing < 2.0  # killed, not waited for (reap waits 5 s)
    assert child.poll() is not None
    deadline = time.monotonic() + 1.0  # a SIGKILLed Tesseract takes a moment to go
    while group(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert group(child.pid) == []


@needs_tesseract
def test_a_reader_that_dies_fails_its_document_only() -> None:
    import os
    import signal
    import threading

    with _reader() as reader:
        reader.extract(PDFS / "camlidl-manual.pdf", PDF)  # the child is up
        child = reader._proc
        assert child is not None
        # As a parser crash would, while it reads three pages of OCR.
        threading.Timer(0.5, os.kill, (child.pid, signal.SIGSEGV)).start()
        with pytest.raises(ExtractionError, match=r"reader died \(signal SIGSEGV\)"):
            reader.extract(PDFS / "camlidl-manual.p8-10.scanned.pdf", PDF)
        reader.extract(PDFS / "camlidl-manual.pdf", PDF)  # a new reader
        child = reader._proc
        assert child is not None
        child.kill()  # between documents, from outside
        child.wait()
        assert len(reader.extract(PDFS / "camlidl-manual.pdf", PDF)) == 26  # a new reader


@pytest.mark.parametrize(
    "filters",
    [
        ("FlateDecode",),
        ("FlateDecode", "FlateDecode"),  # deflated twice: 10 MiB of spaces in a few hundred bytes
        ("ASCIIHexDecode", "FlateDecode"),
        ("ASCII85Decode", "FlateDecode"),
        ("LZWDecode",),
        ("ASCIIHexDecode", "LZWDecode"),
    ],
)
def test_decoded_stream_size_is_counted_through_the_filter_chain(
    tmp_path: Path, filters: tuple[str, ...]
) -> None:
    from resources.pdf_streams import largest_decoded_stream
    from tests.conftest import inflating_stream_pdf

    path = tmp_path / "s.pdf"
    path.write_bytes(inflating_stream_pdf(10 * 1024**2 + 7, filters))
    assert largest_decoded_stream(path, stop_after=1 << 40) == 10 * 1024**2 + 7
    assert 1024**2 < largest_decoded_stream(path, stop_after=1024**2) <= 3 * 1024**2  # stops
    with pytest.raises(ExtractionError, match="decodes to more than 1,048,576 bytes"):
        from resources.extract import DocumentLimits

        DocumentLimits(max_decompressed_bytes=1024**2).check_decompressed(path)


def test_real_pdfs_pass_the_stream_check() -> None:
    from resources.pdf_streams import largest_decoded_stream

    for pdf in sorted(PDFS.glob("*.pdf")):
        largest = largest_decoded_stream(pdf, stop_after=1 << 40)
        assert 0 < largest < 50 * 1024**2, pdf.name


def test_more_pages_than_the_cap_fail_before_any_is_read(tmp_path: Path) -> None:
    from resources.extract import DocumentLimits

    path = tmp_path / "many.pdf"
    path.write_bytes(pdf_pages(PDFS / "camlidl-manual.pdf", [0] * 30))
    with pytest.raises(ExtractionError, match=r"30 pages, over the cap of 20 .*PAGES_PER_ENTRY"):
        list(extract_pages(path, "application/pdf", ocr=TesseractOcr(),
                           limits=DocumentLimits(max_pages=20)))  # fmt: skip


def test_the_reader_holds_none_of_the_services_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process that parses untrusted files gets PATH and the like, no credential."""
    from pathlib import Path as P

    monkeypatch.setenv("ALIEN_POSTGRES_PASSWORD", "s3cret-password")
    monkeypatch.setenv("MISTRAL_API_KEY", "s3cret-key")
    with _reader() as reader:
        reader.extract(PDFS / "camlidl-manual.pdf", PDF)
        assert reader._proc is not None
        environ = P(f"/proc/{reader._proc.pid}/environ").read_bytes()
    assert b"PATH=" in environ
    assert b"s3cret" not in environ and b"ALIEN_" not in environ
