"""Office documents, e-books, RTF, CSV and email: each read through a well-kept library.

Pages follow what a reader of the format sees: a slide, a sheet or a chapter is a page; a
word-processing document starts a new page at each page break its author's program recorded
(explicit breaks, and the page breaks Word and LibreOffice write where they last laid the page
out), else it is one page. Tables keep their structure: a table in a document becomes one line
per row with its cells between ``|``, the header row first; a spreadsheet or CSV row becomes
one line of ``header: value`` pairs, so that every row carries its own column names into
whichever chunk it lands in.

Containers are checked before any library opens them: a ZIP whose members would inflate past
the cap on decompressed bytes is refused by its declared sizes (which Python's zipfile then
enforces while reading), and an OOXML file that is in fact an OLE file is an encrypted one.
Every failure is an ``ExtractionError`` whose message is the reason shown to the user.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path, PurePosixPath
from typing import Any
from xml.etree import ElementTree

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
ODT = "application/vnd.oasis.opendocument.text"
ODS = "application/vnd.oasis.opendocument.spreadsheet"
ODP = "application/vnd.oasis.opendocument.presentation"
EPUB = "application/epub+zip"
RTF = "application/rtf"
CSV = "text/csv"
EML = "message/rfc822"
MSG = "application/vnd.ms-outlook"
# Not readable, but named precisely so that the reason says what to do.
ENCRYPTED_OFFICE = "application/x-encrypted-office"
LEGACY_OFFICE = ("application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint")
ZIP = "application/zip"
OLE = "application/x-ole-storage"

OOXML_TYPES = (DOCX, PPTX, XLSX)
ODF_TYPES = (ODT, ODS, ODP)
EMAIL_TYPES = (EML, MSG)
FORMAT_TYPES = (*OOXML_TYPES, *ODF_TYPES, EPUB, RTF, CSV, *EMAIL_TYPES)

EXTENSIONS = {
    ".docx": DOCX,
    ".pptx": PPTX,
    ".xlsx": XLSX,
    ".odt": ODT,
    ".ods": ODS,
    ".odp": ODP,
    ".epub": EPUB,
    ".rtf": RTF,
    ".csv": CSV,
    ".tsv": CSV,
    ".eml": EML,
    ".msg": MSG,
    ".doc": LEGACY_OFFICE[0],
    ".xls": LEGACY_OFFICE[1],
    ".ppt": LEGACY_OFFICE[2],
}
_KIND = {
    DOCX: "Word document",
    PPTX: "PowerPoint presentation",
    XLSX: "Excel workbook",
    ODT: "OpenDocument text",
    ODS: "OpenDocument spreadsheet",
    ODP: "OpenDocument presentation",
    EPUB: "EPUB book",
    RTF: "RTF document",
    CSV: "CSV file",
    EML: "email",
    MSG: "Outlook message",
}
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_ZIP_MEMBERS = 20_000
_MAX_ATTACHMENTS = 200
# A spreadsheet may declare a million repeated empty rows or columns: never expanded.
_MAX_REPEAT = 1_000


class FormatError(Exception):
    """The file cannot be read as its format; ``str(err)`` is the reason for the user."""


@dataclass(frozen=True)
class Page:
    page: int  # 1-based
    text: str


@dataclass(frozen=True)
class Attachment:
    name: str
    data: bytes


# -- sniffing ---------------------------------------------------------------------------------
def sniff_container(stream: io.BufferedIOBase | Any) -> str | None:
    """The media type a ZIP or OLE file's inside proves (OOXML, OpenDocument, EPUB, Outlook
    message, encrypted or legacy Office), ``ZIP``/``OLE`` for another, None for neither.
    ``stream`` is a seekable binary file; it is read from the start and left anywhere."""
    stream.seek(0)
    head = stream.read(8)
    stream.seek(0)
    if head.startswith(_ZIP_MAGIC):
        return _sniff_zip(stream)
    if head == OLE_MAGIC:
        return _sniff_ole(stream)
    return None


def _sniff_zip(stream: Any) -> str:
    try:
        with zipfile.ZipFile(stream) as zf:
            names = set(zf.namelist())
            if "mimetype" in names:
                info = zf.getinfo("mimetype")
                if info.file_size < 200:
                    declared = zf.read(info).decode("ascii", "replace").strip()
                    if declared in (*ODF_TYPES, EPUB):
                        return declared
            if "[Content_Types].xml" in names:
                for part, media_type in (
                    ("word/document.xml", DOCX),
                    ("ppt/presentation.xml", PPTX),
                    ("xl/workbook.xml", XLSX),
                ):
                    if part in names:
                        return media_type
    except (zipfile.BadZipFile, OSError, ValueError):
        return ZIP  # starts like a ZIP; the reader of its claimed type says what is wrong
    return ZIP


def _sniff_ole(stream: Any) -> str:
    import olefile

    try:
        ole = olefile.OleFileIO(stream)
    except (OSError, ValueError):
        return OLE
    try:
        if ole.exists("EncryptedPackage"):
            return ENCRYPTED_OFFICE
        if ole.exists("__properties_version1.0") or ole.exists("__substg1.0_0037001F"):
            return MSG
        for stream_name, media_type in (
            ("WordDocument", LEGACY_OFFICE[0]),
            ("Workbook", LEGACY_OFFICE[1]),
            ("Book", LEGACY_OFFICE[1]),
            ("PowerPoint Document", LEGACY_OFFICE[2]),
        ):
            if ole.exists(stream_name):
                return media_type
        return OLE
    finally:
        ole.close()


def looks_like_email(head: bytes) -> bool:
    """Whether a text file starts with an RFC 5322 header block naming a sender and one of
    a date, subject or MIME version (how mail programs save a message)."""
    text = head[:4096].decode("latin-1")
    block = text.replace("\r\n", "\n").split("\n\n", 1)[0]
    names = set()
    for line in block.split("\n"):
        if not line or line[0] in " \t":
            continue
        name, colon, _ = line.partition(":")
        if not colon or not name or " " in name or not name.isascii():
            if not line.startswith("From "):  # an mbox separator line
                return False
            continue
        names.add(name.lower())
    return "from" in names and bool(names & {"date", "subject", "mime-version"})


def unreadable_reason(media_type: str) -> str | None:
    """Why a type the sniffer can name is not read, for the user; None when it is read."""
    if media_type == ENCRYPTED_OFFICE:
        return "encrypted Office document: a password is required to open it"
    if media_type in LEGACY_OFFICE:
        return (
            f"legacy Office 97-2003 file ({media_type}) is not supported: save it as "
            ".docx, .xlsx or .pptx"
        )
    return None


# -- reading ----------------------------------------------------------------------------------
def read_pages(
    path: Path, media_type: str, *, max_decompressed_bytes: int, max_text_bytes: int
) -> list[Page]:
    """The pages of text of a file of one of ``FORMAT_TYPES``."""
    kind = _KIND.get(media_type, media_type)
    with path.open("rb") as fh:
        head = fh.read(8)
    if media_type in (*OOXML_TYPES, *ODF_TYPES, EPUB):
        if head == OLE_MAGIC:
            raise FormatError(f"encrypted {kind}: a password is required to open it")
        if not head.startswith(_ZIP_MAGIC):
            raise FormatError(f"corrupt {kind}: the file is not a ZIP container")
        _check_zip(path, kind, max_decompressed_bytes)
    if media_type == MSG and head != OLE_MAGIC:
        raise FormatError("corrupt Outlook message: the file is not an OLE container")
    reader = _READERS[media_type]
    budget = _TextBudget(max_text_bytes, kind)
    try:
        pages = [Page(n, budget.take(text)) for n, text in reader(path)]
    except FormatError:
        raise
    except zipfile.BadZipFile as err:
        raise FormatError(f"corrupt {kind}: {err}") from None
    except (KeyError, ValueError, ElementTree.ParseError, OSError, IndexError) as err:
        raise FormatError(f"corrupt {kind}: {type(err).__name__}: {err}") from None
    except Exception as err:  # the libraries raise their own kinds on damaged files
        if type(err).__module__.split(".")[0] in _LIBRARIES:
            raise FormatError(f"corrupt {kind}: {type(err).__name__}: {err}") from None
        raise
    if not pages:
        raise FormatError(f"{kind} has no pages, slides or sheets")
    return pages


_LIBRARIES = {"docx", "pptx", "openpyxl", "odf", "striprtf", "olefile", "lxml", "xml"}


class _TextBudget:
    """Caps the text one document may yield, as for a plain text file (a spreadsheet of a
    few MB can expand to far more text than it holds bytes)."""

    def __init__(self, max_bytes: int, kind: str) -> None:
        self.left = max_bytes
        self.max_bytes = max_bytes
        self.kind = kind

    def take(self, text: str) -> str:
        self.left -= len(text)
        if self.left < 0:
            raise FormatError(
                f"{self.kind} holds more than {self.max_bytes:,} characters of text, over the "
                "cap on extracted text (ALIEN_MAX_TEXT_BYTES)"
            )
        return text


def _check_zip(path: Path, kind: str, max_bytes: int) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile as err:
        raise FormatError(f"corrupt {kind}: {err}") from None
    if len(infos) > _MAX_ZIP_MEMBERS:
        raise FormatError(f"{kind} has {len(infos):,} parts, over the cap of {_MAX_ZIP_MEMBERS:,}")
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        biggest = max(infos, key=lambda i: i.file_size)
        raise FormatError(
            f"{kind} would decompress to {total:,} bytes ({biggest.filename}: "
            f"{biggest.file_size:,}), over the cap of {max_bytes:,} "
            "(ALIEN_MAX_DECOMPRESSED_BYTES)"
        )
    if any(i.flag_bits & 0x1 for i in infos) or _odf_encrypted(path, infos):
        raise FormatError(f"encrypted {kind}: a password is required to open it")


def _odf_encrypted(path: Path, infos: list[zipfile.ZipInfo]) -> bool:
    """Whether an OpenDocument file's manifest says its parts are encrypted (a password)."""
    manifest = next((i for i in infos if i.filename == "META-INF/manifest.xml"), None)
    if manifest is None or manifest.file_size > 4 * 1024 * 1024:
        return False
    with zipfile.ZipFile(path) as zf:
        return b"encryption-data" in zf.read(manifest)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds").removesuffix(" 00:00:00")
    if isinstance(value, (date, time)):
        return value.isoformat()
    return " ".join(str(value).split())


def table_lines(rows: Iterable[Sequence[str]]) -> list[str]:
    """A table as text: one line per row, cells between ``|``; the first row (the header)
    is followed by a rule, as in Markdown, so that readers and models see the header."""
    lines = []
    for n, row in enumerate(rows):
        cells = [" ".join(c.split()) for c in row]
        while cells and not cells[-1]:
            cells.pop()
        if not cells:
            continue
        lines.append("| " + " | ".join(cells) + " |")
        if n == 0:
            lines.append("|" + "---|" * len(cells))
    return lines


def record_lines(rows: Iterable[Sequence[Any]]) -> Iterator[str]:
    """Spreadsheet rows as text: the first non-empty row names the columns, each later row
    is one line of ``column: value`` pairs (empty cells left out)."""
    header: list[str] | None = None
    for row in rows:
        cells = [_cell(v) for v in row]
        if not any(cells):
            continue
        if header is None:
            header = cells
            yield " | ".join(c for c in header if c)
            continue
        pairs = []
        for i, value in enumerate(cells):
            if not value:
                continue
            name = header[i] if i < len(header) and header[i] else _column_name(i)
            pairs.append(f"{name}: {value}")
        yield "; ".join(pairs)


def _column_name(index: int) -> str:
    name = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = chr(65 + rest) + name
    return name


# -- Word -------------------------------------------------------------------------------------
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def _docx(path: Path) -> Iterator[tuple[int, str]]:
    import docx

    body = docx.Document(str(path)).element.body
    page, lines = 1, []
    for block in body.iterchildren():
        if block.tag == _W + "p":
            for piece in _docx_paragraph(block):
                if piece is None:  # a page break inside the paragraph
                    if "".join(lines).strip():
                        yield page, "\n".join(lines).strip()
                        page, lines = page + 1, []
                else:
                    lines.append(piece)
        elif block.tag == _W + "tbl":
            lines.extend(table_lines(_docx_rows(block)))
    if page == 1 or "".join(lines).strip():
        yield page, "\n".join(lines).strip()


def _docx_paragraph(p: Any) -> Iterator[str | None]:
    """The paragraph's text, with None where the page breaks (Word's explicit breaks and the
    breaks it recorded at its last layout)."""
    text: list[str] = []
    for node in p.iter(_W + "t", _W + "tab", _W + "br", _W + "cr", _W + "lastRenderedPageBreak"):
        tag = node.tag
        if tag == _W + "t":
            text.append(node.text or "")
        elif tag == _W + "tab":
            text.append("\t")
        elif tag == _W + "cr" or (tag == _W + "br" and node.get(_W + "type") != "page"):
            text.append("\n")
        else:  # a page break: an empty page between two breaks is not counted
            yield "".join(text)
            text = []
            yield None
    yield "".join(text)


def _docx_rows(tbl: Any) -> Iterator[list[str]]:
    for tr in tbl.iterchildren(_W + "tr"):
        yield [
            " ".join("".join(t.text or "" for t in p.iter(_W + "t")) for p in tc.iter(_W + "p"))
            for tc in tr.iterchildren(_W + "tc")
        ]


# -- PowerPoint -------------------------------------------------------------------------------
def _pptx(path: Path) -> Iterator[tuple[int, str]]:
    import pptx

    for number, slide in enumerate(pptx.Presentation(str(path)).slides, 1):
        lines = list(_pptx_shapes(slide.shapes))
        if slide.has_notes_slide:
            notes = slide.notes_slide.notes_text_frame
            if notes is not None and notes.text.strip():
                lines.append("Notes: " + notes.text.strip())
        yield number, "\n".join(lines)


def _pptx_shapes(shapes: Iterable[Any]) -> Iterator[str]:
    for shape in shapes:
        if shape.shape_type is not None and shape.shape_type == 6:  # a group: its members
            yield from _pptx_shapes(shape.shapes)
        elif getattr(shape, "has_table", False) and shape.has_table:
            rows = ([cell.text for cell in row.cells] for row in shape.table.rows)
            yield from table_lines(rows)
        elif shape.has_text_frame and shape.text_frame.text.strip():
            yield shape.text_frame.text.strip()


# -- Excel and CSV ----------------------------------------------------------------------------
def _xlsx(path: Path) -> Iterator[tuple[int, str]]:
    import defusedxml  # noqa: F401  (openpyxl parses with it when it is importable)
    import openpyxl

    # An open file, not the path: openpyxl refuses a path without an Excel extension (the
    # object store keeps originals under their entry id).
    with path.open("rb") as fh:
        yield from _xlsx_sheets(openpyxl.load_workbook(fh, read_only=True, data_only=True))


def _xlsx_sheets(book: Any) -> Iterator[tuple[int, str]]:
    try:
        for number, sheet in enumerate(book.worksheets, 1):
            rows = sheet.iter_rows(values_only=True) if hasattr(sheet, "iter_rows") else ()
            lines = list(record_lines(rows))
            title = f"Sheet: {sheet.title}"
            yield number, "\n".join([title, *lines]) if lines else ""
    finally:
        book.close()


def _csv(path: Path) -> Iterator[tuple[int, str]]:
    from resources.extract import decode_text

    text, _ = decode_text(path.read_bytes())
    sample = text[:65536]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel_tab if path.suffix.lower() == ".tsv" else csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    try:
        yield 1, "\n".join(record_lines(reader))
    except csv.Error as err:
        raise FormatError(f"malformed CSV: {err}") from None


# -- OpenDocument -----------------------------------------------------------------------------
def _odf(path: Path) -> Iterator[tuple[int, str]]:
    from odf import opendocument

    doc = opendocument.load(str(path))
    if doc.mimetype == ODS:
        yield from _ods(doc)
    elif doc.mimetype == ODP:
        yield from _odp(doc)
    else:
        yield from _odt(doc)


def _qname(element: Any) -> str:
    return getattr(element, "qname", ("", ""))[1]


def _odf_text(element: Any) -> str:
    """The text of an element, with its spaces, tabs and line breaks (odfpy's teletype)."""
    from odf import teletype

    return str(teletype.extractText(element))


def _odt(doc: Any) -> Iterator[tuple[int, str]]:
    before, after = _page_break_styles(doc)
    page, lines = 1, []

    def walk(element: Any) -> Iterator[None]:
        """Collects lines; yields where the page breaks: a break LibreOffice recorded at its
        last layout, or a paragraph style that breaks the page before or after it."""
        for child in element.childNodes:
            name = _qname(child)
            if name == "soft-page-break":
                yield None
            elif name in ("p", "h"):
                style = child.getAttribute("stylename")
                if style in before or any(_qname(c) == "soft-page-break" for c in child.childNodes):
                    yield None
                lines.append(_odf_text(child))
                if style in after:
                    yield None
            elif name == "table":
                lines.extend(table_lines(_odf_rows(child)))
            elif name in ("list", "list-item", "section", "list-header"):
                yield from walk(child)

    for _ in walk(doc.text):
        if "".join(lines).strip():
            yield page, "\n".join(lines).strip()
            page, lines = page + 1, []
    if page == 1 or "".join(lines).strip():
        yield page, "\n".join(lines).strip()


def _page_break_styles(doc: Any) -> tuple[set[str], set[str]]:
    """Names of the paragraph styles that break the page before, and after, a paragraph."""
    before: set[str] = set()
    after: set[str] = set()
    for styles in (doc.automaticstyles, doc.styles):
        for style in styles.childNodes:
            if _qname(style) != "style":
                continue
            for props in style.childNodes:
                if _qname(props) != "paragraph-properties":
                    continue
                if props.getAttribute("breakbefore") == "page":
                    before.add(style.getAttribute("name"))
                if props.getAttribute("breakafter") == "page":
                    after.add(style.getAttribute("name"))
    return before, after


def _odf_paragraphs(element: Any) -> Iterator[str]:
    """The text of every paragraph and heading inside ``element``, lists included."""
    for child in getattr(element, "childNodes", ()):
        name = _qname(child)
        if name in ("p", "h"):
            yield _odf_text(child)
        elif name in ("list", "list-item", "list-header", "section"):
            yield from _odf_paragraphs(child)


def _odf_rows(table: Any) -> Iterator[list[str]]:
    """Rows of an OpenDocument table; repeated rows and cells are expanded only when they
    hold something (an empty trailing range may declare a million of them)."""
    for row in _descend(table, "table-row"):
        cells: list[str] = []
        for cell in row.childNodes:
            if _qname(cell) not in ("table-cell", "covered-table-cell"):
                continue
            text = " ".join(_odf_text(p) for p in cell.childNodes if _qname(p) == "p")
            repeat = int(cell.getAttribute("numbercolumnsrepeated") or 1)
            cells.extend([text] * (min(repeat, _MAX_REPEAT) if text else min(repeat, 1)))
        times = int(row.getAttribute("numberrowsrepeated") or 1)
        for _ in range(min(times, _MAX_REPEAT) if any(cells) else 1):
            yield cells


def _descend(element: Any, name: str) -> Iterator[Any]:
    for child in element.childNodes:
        if _qname(child) == name:
            yield child
        elif _qname(child) in ("table-header-rows", "table-rows", "table-row-group"):
            yield from _descend(child, name)


def _ods(doc: Any) -> Iterator[tuple[int, str]]:
    tables = [t for t in doc.spreadsheet.childNodes if _qname(t) == "table"]
    for number, table in enumerate(tables, 1):
        lines = list(record_lines(_odf_rows(table)))
        title = f"Sheet: {table.getAttribute('name')}"
        yield number, "\n".join([title, *lines]) if lines else ""


def _odp(doc: Any) -> Iterator[tuple[int, str]]:
    slides = [p for p in doc.presentation.childNodes if _qname(p) == "page"]
    for number, slide in enumerate(slides, 1):
        lines, notes = [], []
        for child in slide.childNodes:
            if _qname(child) == "notes":
                notes.extend(_odp_frames(child))
            else:
                lines.extend(_odp_frames(child))
        if notes:
            lines.append("Notes: " + "\n".join(notes))
        yield number, "\n".join(lines)


_ODP_FURNITURE = ("page-number", "date-time", "footer", "header", "page")


def _odp_frames(element: Any) -> Iterator[str]:
    name = _qname(element)
    if name == "table":
        yield from table_lines(_odf_rows(element))
        return
    if name == "frame" and element.getAttribute("class") in _ODP_FURNITURE:
        return  # a placeholder the program fills in (slide number, date, footer)
    if name == "text-box":
        text = "\n".join(_odf_paragraphs(element))
        if text.strip():
            yield text.strip()
        return
    for child in getattr(element, "childNodes", ()):
        yield from _odp_frames(child)


# -- EPUB -------------------------------------------------------------------------------------
_CONTAINER = "{urn:oasis:names:tc:opendocument:xmlns:container}"
_OPF = "{http://www.idpf.org/2007/opf}"


def _epub(path: Path) -> Iterator[tuple[int, str]]:
    """One page per document of the book's reading order (its OPF spine), as XHTML text.

    Read with the standard library's ZIP and XML modules: the container and package files
    are two small, fixed XML documents, and the EPUB libraries of Python are AGPL-licensed."""
    from resources.extract import decode_text, html_to_text

    with zipfile.ZipFile(path) as zf:
        container = ElementTree.fromstring(zf.read("META-INF/container.xml"))
        rootfile = container.find(f".//{_CONTAINER}rootfile")
        if rootfile is None or not rootfile.get("full-path"):
            raise FormatError("corrupt EPUB book: its container names no package file")
        opf_path = PurePosixPath(rootfile.get("full-path", ""))
        package = ElementTree.fromstring(zf.read(str(opf_path)))
        items = {
            item.get("id"): item.get("href", "")
            for item in package.iter(f"{_OPF}item")
            if item.get("id")
        }
        names = set(zf.namelist())
        spine = package.find(f"{_OPF}spine")
        refs = [] if spine is None else spine.findall(f"{_OPF}itemref")
        for number, ref in enumerate(refs, 1):
            href = items.get(ref.get("idref"), "").split("#")[0]
            member = _join(opf_path.parent, href)
            if not href or member not in names:
                yield number, ""
                continue
            yield number, html_to_text(decode_text(zf.read(member))[0], title=False)


def _join(base: PurePosixPath, href: str) -> str:
    from urllib.parse import unquote

    parts: list[str] = []
    for part in (base / unquote(href)).parts:
        if part == "..":
            if parts:
                parts.pop()
        elif part not in (".", ""):
            parts.append(part)
    return "/".join(parts)


# -- RTF --------------------------------------------------------------------------------------
def _rtf(path: Path) -> Iterator[tuple[int, str]]:
    from striprtf.striprtf import rtf_to_text

    raw = path.read_bytes()
    if not raw.lstrip().startswith(b"{\\rtf"):
        raise FormatError("corrupt RTF document: it does not start with {\\rtf")
    codepage = _rtf_codepage(raw[:4096])
    text = rtf_to_text(raw.decode("latin-1"), encoding=codepage, errors="replace")
    lines = []
    for line in text.splitlines():
        if line.count("|") >= 1 and line.rstrip().endswith("|"):  # a table row: its cells
            cells = line.rstrip().rstrip("|").split("|")
            lines.append("| " + " | ".join(c.strip() for c in cells) + " |")
        else:
            lines.append(line.rstrip())
    yield 1, "\n".join(lines).strip()


def _rtf_codepage(head: bytes) -> str:
    import codecs
    import re

    found = re.search(rb"\\ansicpg(\d+)", head)
    name = f"cp{int(found.group(1))}" if found else "cp1252"
    try:
        codecs.lookup(name)
    except LookupError:
        return "cp1252"
    return name


# -- email ------------------------------------------------------------------------------------
def _eml(path: Path) -> Iterator[tuple[int, str]]:
    message = _parse_eml(path.read_bytes())
    yield 1, _eml_text(message)


def _parse_eml(data: bytes) -> Any:
    from email import policy
    from email.parser import BytesParser

    return BytesParser(policy=policy.default).parsebytes(data)


def _eml_text(message: Any) -> str:
    from resources.extract import html_to_text

    lines = [
        f"{name}: {message[name]}"
        for name in ("From", "To", "Cc", "Date", "Subject")
        if message[name] is not None
    ]
    body = message.get_body(preferencelist=("plain", "html"))
    text = ""
    if body is not None:
        try:
            content = body.get_content()
        except (LookupError, ValueError):  # an unknown charset: read as Latin-1
            content = (body.get_payload(decode=True) or b"").decode("latin-1")
        text = html_to_text(content) if body.get_content_subtype() == "html" else str(content)
    names = [n for n, _ in _eml_parts(message)]
    if names:
        lines.append("Attachments: " + ", ".join(names))
    return "\n".join(lines) + "\n\n" + text.strip()


def _eml_parts(message: Any) -> Iterator[tuple[str, Any]]:
    """(file name, part) of the message's attachments: parts with a file name or an
    ``attachment`` disposition, not inline pictures of the body."""
    for n, part in enumerate(message.iter_attachments(), 1):
        disposition = part.get_content_disposition()
        name = part.get_filename()
        if disposition == "inline" and part.get_content_maintype() == "image":
            continue
        if name is None and disposition != "attachment" and part.get_content_type() != EML:
            continue
        yield _clean_name(name, n, part.get_content_type()), part


def _clean_name(name: str | None, n: int, content_type: str) -> str:
    import mimetypes

    name = PurePosixPath((name or "").replace("\\", "/")).name.strip()
    if not name:
        extension = ".eml" if content_type == EML else mimetypes.guess_extension(content_type)
        name = f"attachment-{n}{extension or '.bin'}"
    return name[:200]


def _eml_attachments(path: Path) -> Iterator[Attachment]:
    message = _parse_eml(path.read_bytes())
    for name, part in _eml_parts(message):
        if part.get_content_type() == EML:
            inner = part.get_content()
            data = inner.as_bytes() if hasattr(inner, "as_bytes") else bytes(inner)
        else:
            data = part.get_payload(decode=True) or b""
        yield Attachment(name, data)


# Outlook .msg: an OLE file whose MAPI properties are streams named by tag ([MS-OXMSG]);
# olefile reads the container. Strings are UTF-16 (type 001F) or 8-bit (001E).
_MSG_FIELDS = (("From", "0C1A"), ("From", "0C1F"), ("To", "0E04"), ("Cc", "0E03"))


def _msg_string(ole: Any, tag: str, prefix: str = "") -> str | None:
    for suffix, codec in (("001F", "utf-16-le"), ("001E", "cp1252")):
        name = f"{prefix}__substg1.0_{tag}{suffix}"
        if ole.exists(name):
            return ole.openstream(name).read().decode(codec, "replace").rstrip("\x00")
    return None


def _msg(path: Path) -> Iterator[tuple[int, str]]:
    import olefile

    from resources.extract import html_to_text

    with olefile.OleFileIO(str(path)) as ole:
        lines, seen = [], set()
        for field, tag in _MSG_FIELDS:
            value = _msg_string(ole, tag)
            if value and field not in seen:
                seen.add(field)
                lines.append(f"{field}: {value}")
        headers = _msg_string(ole, "007D")  # the transport headers hold the date
        if headers:
            date_value = _parse_eml(headers.encode("utf-8", "replace"))["Date"]
            if date_value:
                lines.append(f"Date: {date_value}")
        subject = _msg_string(ole, "0037")
        if subject:
            lines.append(f"Subject: {subject}")
        body = _msg_string(ole, "1000")
        if not body and ole.exists("__substg1.0_10130102"):
            html = ole.openstream("__substg1.0_10130102").read()
            body = html_to_text(html.decode("utf-8", "replace"))
        names = [a.name for a in _msg_attachments_of(ole, read=False)]
        if names:
            lines.append("Attachments: " + ", ".join(names))
        yield 1, "\n".join(lines) + "\n\n" + (body or "").strip()


def _msg_attachments_of(ole: Any, *, read: bool = True, prefix: str = "") -> Iterator[Attachment]:
    """The files attached to the message at ``prefix`` (the root, or an embedded message);
    an embedded message comes out as an ``.eml`` of its headers, body and attachments."""
    depth = prefix.count("__substg1.0_3701000D")
    storages = sorted(
        {
            "/".join(e[: depth * 2 + 1])
            for e in ole.listdir(streams=True, storages=True)
            if "/".join(e).startswith(prefix) and len(e) > depth * 2
            and e[depth * 2].startswith("__attach_")
        }
    )  # fmt: skip
    for n, storage in enumerate(storages, 1):
        base = storage + "/"
        name = _msg_string(ole, "3707", base) or _msg_string(ole, "3704", base)
        if ole.exists(base + "__substg1.0_37010102"):
            data = ole.openstream(base + "__substg1.0_37010102").read() if read else b""
            yield Attachment(_clean_name(name, n, "application/octet-stream"), data)
        elif ole.exists(base + "__substg1.0_3701000D") and depth < 4:
            inner = base + "__substg1.0_3701000D/"
            subject = _msg_string(ole, "0037", inner) or _msg_string(ole, "3001", base) or ""
            label = _clean_name(f"{subject[:80]}.eml" if subject.strip() else None, n, EML)
            yield Attachment(label, _msg_as_eml(ole, inner) if read else b"")
        # else: an OLE object (a picture in a rich-text body), not a file


def _msg_as_eml(ole: Any, prefix: str) -> bytes:
    """An embedded Outlook message as an RFC 822 message: its headers, its text (or HTML)
    body and its own attachments."""
    from email.message import EmailMessage

    message = EmailMessage()
    for field, tag in (("From", "0C1A"), ("To", "0E04"), ("Cc", "0E03"), ("Subject", "0037")):
        value = _msg_string(ole, tag, prefix)
        if value and field not in message:
            message[field] = " ".join(value.split())
    body = _msg_string(ole, "1000", prefix)
    html = prefix + "__substg1.0_10130102"
    if body:
        message.set_content(body)
    elif ole.exists(html):
        message.set_content(ole.openstream(html).read().decode("utf-8", "replace"), "html")
    else:
        message.set_content("")
    for attachment in _msg_attachments_of(ole, prefix=prefix):
        message.add_attachment(
            attachment.data, maintype="application", subtype="octet-stream",
            filename=attachment.name,
        )  # fmt: skip
    return message.as_bytes()


def _msg_attachments(path: Path) -> Iterator[Attachment]:
    import olefile

    with olefile.OleFileIO(str(path)) as ole:
        yield from _msg_attachments_of(ole)


def attachments(path: Path, media_type: str) -> list[Attachment]:
    """The files attached to an email (``EML`` or ``MSG``), in order; FormatError if the
    message cannot be read."""
    reader = _eml_attachments if media_type == EML else _msg_attachments
    try:
        found = []
        for attachment in reader(path):
            found.append(attachment)
            if len(found) > _MAX_ATTACHMENTS:
                raise FormatError(
                    f"the message has more than {_MAX_ATTACHMENTS} attachments, over the cap"
                )
        return found
    except FormatError:
        raise
    except Exception as err:
        raise FormatError(f"corrupt {_KIND[media_type]}: {type(err).__name__}: {err}") from None


_READERS = {
    DOCX: _docx,
    PPTX: _pptx,
    XLSX: _xlsx,
    CSV: _csv,
    ODT: _odf,
    ODS: _odf,
    ODP: _odf,
    EPUB: _epub,
    RTF: _rtf,
    EML: _eml,
    MSG: _msg,
}
