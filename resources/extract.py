"""Text extraction: PDF text layer (OCR for image-only pages), images, plain text, Markdown,
HTML, and the office, e-book and email formats of ``resources.formats``.

PDFs are read page by page through pdfium, which reads the file lazily: a large PDF is never
loaded whole into memory. Tables in a page's text layer are found by their layout and kept
as rows of cells (``resources.pdf_tables``). Every failure is an ``ExtractionError`` whose
message is the reason shown to the user.
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
from typing import TYPE_CHECKING, BinaryIO

from resources import formats
from resources.ocr import OcrEngine, OcrError
from resources.pdf_tables import read_glyphs, with_tables

if TYPE_CHECKING:
    from pypdfium2 import PdfImage

PDF = "application/pdf"
TEXT = "text/plain"
MARKDOWN = "text/markdown"
HTML = "text/html"
IMAGE_TYPES = ("image/png", "image/jpeg", "image/tiff")
SUPPORTED_TYPES = (PDF, TEXT, MARKDOWN, HTML, *IMAGE_TYPES, *formats.FORMAT_TYPES)
# Types whose reader decodes the bytes as text (any encoding; see ``decode_text``).
TEXT_TYPES = (TEXT, MARKDOWN, HTML, formats.CSV, formats.EML, formats.RTF)

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
    **formats.EXTENSIONS,
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
    """The media type the first bytes prove (PDF, images and RTF carry a signature), else
    None. ZIP and OLE containers need the whole file: see ``detect_media_type``."""
    if b"%PDF-" in head[:1024]:
        return PDF
    for magic, media_type in _MAGIC:
        if head.startswith(magic):
            return media_type
    if head.lstrip()[:5] == b"{\\rtf":
        return formats.RTF
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


def detect_media_type(name: str, head: bytes, stream: BinaryIO | None = None) -> str:
    """The media type of a file: what its bytes prove, else what its name says.

    A signature decides (PDF, images, RTF); a ZIP or OLE container is opened (``stream``,
    seekable) to tell DOCX from XLSX, an OpenDocument file, EPUB, an Outlook message, an
    encrypted or a legacy Office file. A container that proves nothing more keeps the type its
    name gives, so that a damaged DOCX fails as a corrupt DOCX. Text is what its name says,
    or an email when it starts with a mail header block."""
    sniffed = sniff_media_type(head)
    if sniffed is not None:
        return sniffed
    named = _named_type(name)
    if stream is not None:
        inside = formats.sniff_container(stream)
        if inside == formats.ENCRYPTED_OFFICE and named in formats.OOXML_TYPES:
            return named  # its reader says it is encrypted, naming its kind
        if inside in (formats.ZIP, formats.OLE) and named is not None:
            return named
        if inside is not None:
            return inside
    if named is not None:
        return named
    if looks_like_text(head) and formats.looks_like_email(head):
        return formats.EML
    guessed, _ = mimetypes.guess_type(name)
    return guessed or "application/octet-stream"


def _named_type(name: str) -> str | None:
    return _EXTENSIONS.get(Path(name).suffix.lower())


_GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
_SIGNED_TYPES = (PDF, *IMAGE_TYPES, formats.RTF)  # whose bytes always start with a signature
_SIGNED_NAMES = {
    PDF: "PDF",
    "image/png": "PNG image",
    "image/jpeg": "JPEG image",
    "image/tiff": "TIFF image",
    formats.RTF: "RTF document",
}
_ZIP_TYPES = (*formats.OOXML_TYPES, *formats.ODF_TYPES, formats.EPUB)


class Refused(Exception):
    """A file refused at the door, before anything is stored. ``kind`` is one of
    ``too_large``, ``empty``, ``unsupported``, ``mismatch``; ``str(err)`` is the reason."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


def admit(
    name: str,
    head: bytes,
    stream: BinaryIO | None,
    size: int,
    *,
    max_bytes: int,
    claimed: str | None = None,
) -> str:
    """The one admission policy of every door (CLI, inbox, S3 source, Data API): the media
    type a file is indexed as, or ``Refused`` with the reason.

    Refused: over ``max_bytes``; empty; a type no reader handles (legacy and encrypted Office
    files are named as such); bytes that contradict the type (a signature or a container of
    another type, a file named PDF without a PDF header, binary bytes named text); a
    ``claimed`` type (the API's part header) other than the one the bytes prove. Damage deeper
    than the first bytes (a truncated DOCX, a corrupt PDF) is found when the file is read, and
    its entry fails with the reason then."""
    if size > max_bytes:
        raise Refused("too_large", f"file too large ({size} bytes; the limit is {max_bytes})")
    if size == 0:
        raise Refused("empty", "empty file (0 bytes)")
    claimed = (claimed or "").split(";")[0].strip().lower()
    if claimed in _GENERIC_TYPES:
        media_type = detect_media_type(name, head, stream)
    else:
        if claimed not in SUPPORTED_TYPES:
            raise Refused("unsupported", unsupported_reason(claimed))
        proven = sniff_media_type(head)
        if proven is None and stream is not None:
            proven = formats.sniff_container(stream)
            if proven in (formats.ZIP, formats.OLE) or (
                proven == formats.ENCRYPTED_OFFICE and claimed in formats.OOXML_TYPES
            ):
                proven = None  # a container that proves no other type
        if proven is not None and proven != claimed:
            raise Refused(
                "mismatch", f"the file is claimed as {claimed!r} but its bytes are {proven!r}"
            )
        media_type = claimed
    if media_type not in SUPPORTED_TYPES:
        raise Refused("unsupported", unsupported_reason(media_type))
    if media_type in _SIGNED_TYPES and sniff_media_type(head) != media_type:
        kind = _SIGNED_NAMES.get(media_type, media_type)
        raise Refused("mismatch", f"not a {kind}: the bytes do not start with its signature")
    if media_type in _ZIP_TYPES and not head.startswith((b"PK\x03\x04", formats.OLE_MAGIC)):
        raise Refused("mismatch", f"the bytes are not a ZIP container, as {media_type} is")
    if media_type == formats.MSG and not head.startswith(formats.OLE_MAGIC):
        raise Refused("mismatch", "the bytes are not an OLE container, as an Outlook message is")
    if media_type in TEXT_TYPES and not looks_like_text(head):
        raise Refused("mismatch", f"binary bytes where {media_type} was expected")
    return media_type


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
    elif media_type in formats.FORMAT_TYPES:
        try:
            pages = formats.read_pages(
                path,
                media_type,
                max_decompressed_bytes=limits.max_decompressed_bytes,
                max_text_bytes=max_text_bytes,
            )
        except formats.FormatError as err:
            raise ExtractionError(str(err)) from None
        for page in pages:
            yield PageText(page.page, page.text, "text" if page.text.strip() else "empty")
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
        raise ExtractionError(unsupported_reason(media_type))


def unsupported_reason(media_type: str) -> str:
    """Why a file of ``media_type`` is not read, for the user."""
    return formats.unreadable_reason(media_type) or (
        f"unsupported media type {media_type!r}; supported: PDF, text, Markdown, HTML, CSV, "
        "PNG, JPEG, TIFF, DOCX, PPTX, XLSX, ODT, ODS, ODP, EPUB, RTF, email (.eml, .msg)"
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
                    text = textpage.get_text_range()
                    text = with_tables(text, read_glyphs(textpage, text))
                    text = text.replace("\r\n", "\n").replace("\r", "\n")
                    textpage.close()
                    item: str | Future[str] = text
                    images = (
                        [o for o in page.get_objects() if o.type == pdfium_c.FPDF_PAGEOBJ_IMAGE]
                        if len(text.strip()) < _MIN_TEXT_CHARS
                        else []
                    )
                    if images:
                        width, height = page.get_size()  # points: known before rendering
                        dpi = _scan_dpi(images, ocr_dpi)
                        scale = dpi / 72
                        limits.check_pixels(f"page {index + 1}", width * scale, height * scale, dpi)
                        for number, found in enumerate(images, 1):  # each decoded to draw it
                            limits.check_pixels(
                                f"image {number} on page {index + 1}", *found.get_px_size(), None
                            )
                        image = page.render(scale=scale, grayscale=True).to_pil()
                        image.info["dpi"] = (dpi, dpi)  # for the OCR's own enlargement
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


def _scan_dpi(images: list[PdfImage], ocr_dpi: int) -> int:
    """The resolution to render a scanned page at: ``ocr_dpi``, or the scan's own when lower
    (its largest image's pixels per inch on the page), if that is a scanner's (100 dpi or
    more: not a thumbnail, nor one pixel stretched over a page). Rendering a 150-dpi scan at
    300 dpi would enlarge its grain with it; the OCR removes the grain first, then enlarges."""
    import pypdfium2 as pdfium

    try:
        largest = max(images, key=lambda found: _area(found.get_bounds()))
        left, bottom, right, top = largest.get_bounds()
        px_width, px_height = largest.get_px_size()
    except pdfium.PdfiumError:  # no bounds to measure: rendered as before
        return ocr_dpi
    if right - left <= 0 or top - bottom <= 0:
        return ocr_dpi
    own = round(max(px_width / (right - left), px_height / (top - bottom)) * 72)
    return own if 100 <= own < ocr_dpi else ocr_dpi


def _area(bounds: tuple[float, float, float, float]) -> float:
    left, bottom, right, top = bounds
    return max(0.0, right - left) * max(0.0, top - bottom)


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
    def __init__(self, title: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0
        self._in_title = False
        self._title = title

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title" and self._title:
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


def html_to_text(html: str, *, title: bool = True) -> str:
    """Visible text of an HTML document, with block-level line breaks, and its title unless
    ``title`` is false (an e-book's chapter files often bear a file name there)."""
    parser = _HtmlText(title)
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()
