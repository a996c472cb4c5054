"""Text extraction: PDF text layer (OCR for image-only pages), images, plain text, Markdown, HTML.

PDFs are read page by page through pdfium, which reads the file lazily: a large PDF is never
loaded whole into memory. Every failure is an ``ExtractionError`` whose message is the reason
shown to the user.
"""

from __future__ import annotations

import codecs
import mimetypes
import os
import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from resources.ocr import OcrEngine, OcrError

PDF = "application/pdf"
TEXT = "text/plain"
MARKDOWN = "text/markdown"
HTML = "text/html"
IMAGE_TYPES = ("image/png", "image/jpeg", "image/tiff")
SUPPORTED_TYPES = (PDF, TEXT, MARKDOWN, HTML, *IMAGE_TYPES)

_EXTENSIONS = {
    ".pdf": PDF,
    ".txt": TEXT,
    ".text": TEXT,
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".html": HTML,
    ".htm": HTML,
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)
# A page with less text than this and an image on it is treated as scanned.
_MIN_TEXT_CHARS = 16


class ExtractionError(Exception):
    """The document cannot be turned into text; ``str(err)`` is the reason for the user."""


@dataclass(frozen=True)
class PageText:
    page: int  # 1-based
    text: str
    method: str  # "text" (text layer or file), "ocr", or "empty"


def sniff_media_type(head: bytes) -> str | None:
    """The media type the first bytes prove (PDF and images carry a signature), else None."""
    if b"%PDF-" in head[:1024]:
        return PDF
    for magic, media_type in _MAGIC:
        if head.startswith(magic):
            return media_type
    return None


# Byte-order marks, longest first (UTF-32 LE's starts with UTF-16 LE's).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Western European single-byte encodings: where a detector finds several equally likely
# (Latin-1 French reads as well in Central European cp1250), the most used one wins.
_WESTERN = ("cp1252", "latin_1", "iso8859_15")


def looks_like_text(head: bytes) -> bool:
    """Text has no NUL byte unless it starts with a UTF-16/32 byte-order mark (the text
    extraction applies the same; legacy single- and multi-byte encodings pass)."""
    return b"\x00" not in head or any(head.startswith(bom) for bom, _ in _BOMS)


def detect_media_type(name: str, head: bytes) -> str:
    """Media type from content magic, else from the file name's extension."""
    sniffed = sniff_media_type(head)
    if sniffed is not None:
        return sniffed
    suffix = Path(name).suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    guessed, _ = mimetypes.guess_type(name)
    return guessed or "application/octet-stream"


@dataclass(frozen=True)
class DocumentLimits:
    """What one document may cost before it is read: checked before anything is rendered or
    decoded, so a few hundred hostile bytes cannot take the memory of the whole server."""

    max_page_pixels: int = 80_000_000  # one page at the OCR resolution, or one image
    max_pages: int = 5_000
    max_decompressed_bytes: int = 512 * 1024**2  # one PDF stream, decoded

    def check_decompressed(self, path: Path) -> None:
        """Refuse a PDF with a stream that decodes past the cap, found by decoding its streams
        here piece by piece (bounded memory) before pdfium decodes any whole."""
        from resources.pdf_streams import largest_decoded_stream

        largest = largest_decoded_stream(path, stop_after=self.max_decompressed_bytes)
        if largest > self.max_decompressed_bytes:
            raise ExtractionError(
                f"a PDF stream decodes to more than {self.max_decompressed_bytes:,} bytes, the "
                "cap on one stream's decompressed size (ALIEN_MAX_DECOMPRESSED_BYTES)"
            )

    def check_pixels(self, what: str, width: float, height: float, dpi: int | None) -> None:
        if width * height > self.max_page_pixels:
            at = f" at {dpi} dpi" if dpi else ""
            raise ExtractionError(
                f"{what} would be {round(width)} x {round(height)} pixels{at}, over the cap of "
                f"{self.max_page_pixels:,} pixels per page (ALIEN_MAX_PAGE_PIXELS)"
            )


def extract_pages(
    path: Path,
    media_type: str,
    *,
    ocr: OcrEngine,
    ocr_dpi: int = 300,
    max_text_bytes: int = 32 * 1024 * 1024,
    limits: DocumentLimits | None = None,
) -> Iterator[PageText]:
    """Pages of text of the file at ``path``; raises ``ExtractionError`` with a reason."""
    limits = limits or DocumentLimits()
    size = path.stat().st_size
    if size == 0:
        raise ExtractionError("empty file (0 bytes)")
    if media_type == PDF:
        yield from _pdf_pages(path, ocr, ocr_dpi, limits)
    elif media_type in IMAGE_TYPES:
        yield _image_page(path, ocr, limits)
    elif media_type in (TEXT, MARKDOWN, HTML):
        if size > max_text_bytes:
            raise ExtractionError(
                f"text file too large ({size} bytes; the limit is {max_text_bytes})"
            )
        text = _decode_text(path.read_bytes())
        if media_type == HTML:
            text = html_to_text(text)
        yield PageText(page=1, text=text, method="text")
    else:
        raise ExtractionError(
            f"unsupported media type {media_type!r}; supported: {', '.join(SUPPORTED_TYPES)}"
        )


def decode_text(data: bytes) -> tuple[str, str]:
    """The text of a text file and the encoding it was read with: a byte-order mark's, else
    UTF-8 when the bytes are valid UTF-8, else the legacy encoding detected from the bytes
    (Shift-JIS, GB18030, Big5, EUC-KR, cp1251, Latin-1, …: charset-normalizer), else
    cp1252 with undecodable bytes replaced. Never guessed from the file name."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(codec), codec
            except UnicodeDecodeError as err:
                raise ExtractionError(f"not valid {codec} after its byte-order mark") from err
    if not looks_like_text(data[:8192]):
        raise ExtractionError("binary content where text was expected (NUL bytes)")
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    found = list(from_bytes(data))
    sample = data[:65536]
    sparse = sum(b >= 0x80 for b in sample) < len(sample) / 2
    if found and (found[0].coherence > 0 or not sparse):
        best = found[0]
        tied = [m for m in found if (m.chaos, m.coherence) == (best.chaos, best.coherence)]
        pick = next((m for m in tied if m.encoding in _WESTERN), best)
        return str(pick), pick.encoding
    # No language evidence (a short text) and mostly ASCII: a Western European text with a
    # few accented letters is by far the likeliest.
    return data.decode("cp1252", errors="replace"), "cp1252"


def _decode_text(data: bytes) -> str:
    return decode_text(data)[0]


def _pdf_pages(
    path: Path, ocr: OcrEngine, ocr_dpi: int, limits: DocumentLimits
) -> Iterator[PageText]:
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    with path.open("rb") as fh:
        head = fh.read(1024)
    if b"%PDF-" not in head:
        raise ExtractionError("not a PDF: the content has no %PDF- header")
    limits.check_decompressed(path)
    try:
        doc = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as err:
        message = str(err)
        if "password" in message.lower():
            raise ExtractionError("encrypted PDF: a password is required to open it") from None
        raise ExtractionError(f"corrupt PDF: {message}") from None
    workers = max(1, os.cpu_count() or 1)
    try:
        count = len(doc)
        if count == 0:
            raise ExtractionError("PDF has no pages")
        if count > limits.max_pages:
            raise ExtractionError(
                f"PDF has {count:,} pages, over the cap of {limits.max_pages:,} pages per entry "
                "(ALIEN_MAX_PAGES_PER_ENTRY)"
            )
        # pdfium is not thread-safe: pages are read and rendered here, in order, while up to
        # ``workers`` OCR subprocesses read earlier scanned pages in the background.
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ocr") as pool:
            window: deque[tuple[int, str | Future[str]]] = deque()
            for index in range(count):
                page = doc[index]
                try:
                    textpage = page.get_textpage()
                    text = textpage.get_text_range().replace("\r\n", "\n").replace("\r", "\n")
                    textpage.close()
                    item: str | Future[str] = text
                    images = (
                        [o for o in page.get_objects() if o.type == pdfium_c.FPDF_PAGEOBJ_IMAGE]
                        if len(text.strip()) < _MIN_TEXT_CHARS
                        else []
                    )
                    if images:
                        width, height = page.get_size()  # points: known before rendering
                        scale = ocr_dpi / 72
                        limits.check_pixels(
                            f"page {index + 1}", width * scale, height * scale, ocr_dpi
                        )
                        for number, found in enumerate(images, 1):  # each decoded to draw it
                            limits.check_pixels(
                                f"image {number} on page {index + 1}", *found.get_px_size(), None
                            )
                        image = page.render(scale=scale, grayscale=True).to_pil()
                        item = pool.submit(ocr.read_image, image)
                finally:
                    page.close()
                window.append((index + 1, item))
                while window and (len(window) > 2 * workers or isinstance(window[0][1], str)):
                    yield _resolve(*window.popleft())
            while window:
                yield _resolve(*window.popleft())
    except pdfium.PdfiumError as err:
        raise ExtractionError(f"corrupt PDF: {err}") from None
    finally:
        doc.close()


def _resolve(page: int, item: str | Future[str]) -> PageText:
    if isinstance(item, str):
        return PageText(page=page, text=item, method="text" if item.strip() else "empty")
    try:
        text = item.result()
    except OcrError as err:
        raise ExtractionError(f"page {page}: {err}") from None
    return PageText(page=page, text=text, method="ocr" if text.strip() else "empty")


def _image_page(path: Path, ocr: OcrEngine, limits: DocumentLimits) -> PageText:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # Pillow's bomb warning: the cap below is stricter
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)  # reads the header only: the size, not the pixels
        with opened as image:
            limits.check_pixels("the image", *image.size, None)
            image.load()
            text = ocr.read_image(image.convert("L"))
    except Image.DecompressionBombError:
        raise ExtractionError(
            f"the image is over the cap of {limits.max_page_pixels:,} pixels per page "
            "(ALIEN_MAX_PAGE_PIXELS)"
        ) from None
    except (UnidentifiedImageError, OSError) as err:
        raise ExtractionError(f"unreadable image: {err}") from None
    except OcrError as err:
        raise ExtractionError(str(err)) from None
    return PageText(page=1, text=text, method="ocr")


_SKIP_TAGS = {"script", "style", "noscript", "template", "svg", "head"}
_BLOCK_TAGS = {
    "p",
    "div",
    "br",
    "li",
    "ul",
    "ol",
    "tr",
    "td",
    "th",
    "table",
    "section",
    "article",
    "header",
    "footer",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "pre",
    "blockquote",
    "title",
    "hr",
}


class _HtmlText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in _SKIP_TAGS:
            self._skip += 1
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _SKIP_TAGS and self._skip:
            self._skip -= 1
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title or not self._skip:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """Visible text of an HTML document, with the title and block-level line breaks."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()
