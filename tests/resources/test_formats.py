"""Office, e-book, RTF, CSV and email files: real files made by LibreOffice, pandoc and Python's
email package from texts Debian ships (tests/data/formats/SOURCES.md). Each is sniffed from its
bytes, read page by page with its tables' structure, and bad ones fail with a clear reason."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import pytest

from resources import formats
from resources.extract import (
    PDF,
    ExtractionError,
    Refused,
    admit,
    detect_media_type,
    extract_pages,
)
from resources.ocr import TesseractOcr

FORMATS = Path(__file__).resolve().parents[1] / "data" / "formats"

# file -> (media type, pages, [(phrase, page it is on)])
CASES = {
    "report.docx": (
        formats.DOCX,
        3,
        [
            ("When we speak of free software, we are referring to freedom, not price", 1),
            ("| Apache-2.0 | Apache License | 202 | 11358 |", 2),
            ("shall mean the copyright owner or entity authorized by the copyright owner", 3),
        ],
    ),
    "report.odt": (
        formats.ODT,
        3,
        [
            ("When we speak of free software, we are referring to freedom, not price", 1),
            ("| GPL-3 | GNU GENERAL PUBLIC LICENSE | 674 | 35149 |", 2),
            ("shall mean the copyright owner or entity authorized by the copyright owner", 3),
        ],
    ),
    "slides.pptx": (
        formats.PPTX,
        4,
        [
            ("Nine numbered sections, from Definitions to Accepting Warranty", 1),
            ("Notes: 3. Grant of Patent License.", 2),  # the speaker notes
            ("| FR,MC | +4852+00220 | Europe/Paris |", 3),
            ("7. Disclaimer of Warranty. Unless required by applicable law", 4),
        ],
    ),
    "slides.odp": (
        formats.ODP,
        4,
        [
            ("Nine numbered sections, from Definitions to Accepting Warranty", 1),
            ("Notes: 3. Grant of Patent License.", 2),
            ("| FR,MC | +4852+00220 | Europe/Paris |", 3),
            ("7. Disclaimer of Warranty. Unless required by applicable law", 4),
        ],
    ),
    "sheet.xlsx": (
        formats.XLSX,
        3,
        [
            (
                "alpha_2: FR; alpha_3: FRA; numeric: 250; name: France; "
                "official_name: French Republic",
                1,
            ),
            ("codes: AQ; coordinates: -720041+0023206; tz: Antarctica/Troll; comments: Troll", 2),
            ("Measure: Number of time zones; Value: 312", 3),
        ],
    ),
    "sheet.ods": (
        formats.ODS,
        3,
        [
            (
                "alpha_2: FR; alpha_3: FRA; numeric: 250; name: France; "
                "official_name: French Republic",
                1,
            ),
            ("codes: AQ; coordinates: -720041+0023206; tz: Antarctica/Troll; comments: Troll", 2),
            ("Measure: Number of time zones; Value: 312", 3),
        ],
    ),
    "table.csv": (
        formats.CSV,
        1,
        [("alpha_2: CI; alpha_3: CIV; numeric: 384; name: Côte d'Ivoire", 1)],
    ),
    "table-semicolon.csv": (  # ";" between cells, Latin-1 bytes: as European Excel saves
        formats.CSV,
        1,
        [("alpha_2: CI; alpha_3: CIV; numeric: 384; name: Côte d'Ivoire", 1)],
    ),
    "book.epub": (  # a title page, then one page per chapter
        formats.EPUB,
        5,
        [
            ("is intended to guarantee your freedom to share and change free software", 2),
            ("applies to some specially designated software packages", 3),
            ("means each individual or legal entity that creates, contributes", 4),
            ("whatever you can justify on the basis of media cost", 5),
        ],
    ),
    "letter.rtf": (
        formats.RTF,
        1,
        [
            ("Mit freundlichen Grüßen — José Müller.", 1),
            ("| bel | Belarusian | Weißrussisch | biélorusse |", 1),
            ("Certain owners wish to permanently relinquish those rights", 1),
        ],
    ),
    "report.pdf": (  # report.docx printed by LibreOffice: the table is found by its layout
        PDF,
        3,
        [
            ("When we speak of free software, we are referring to freedom, not price", 1),
            ("| BSD | Copyright (c) The Regents of the University of California. | 26 | 1499 |", 2),
            ("shall mean the copyright owner or entity authorized by the", 3),
        ],
    ),
    "letter.pdf": (  # letter.rtf printed by LibreOffice; a row with wrapped cells
        PDF,
        1,
        [
            ("| spa | Spanish; Castilian | Spanisch (Kastilisch) | castillan |", 1),
            ("Statement of Purpose (CC0 1.0 Universal):", 1),
        ],
    ),
    "message.eml": (
        formats.EML,
        1,
        [
            ("Subject: Lizenzübersicht: BSD-Lizenz und Bericht (März 2025)", 1),
            ("Attachments: bsd-license.pdf, report.docx", 1),
            ("Redistribution and use in source and binary forms", 1),
        ],
    ),
    "message.msg": (
        formats.MSG,
        1,
        [
            ("Subject: Lizenzübersicht: BSD-Lizenz und Lizenztabelle (März 2025)", 1),
            ("Attachments: bsd-license.pdf, licenses.csv", 1),
            ("Redistribution and use in source and binary forms", 1),
        ],
    ),
    "outlook-nested.msg": (  # written by Outlook's MAPI; its attachment is a message
        formats.MSG,
        1,
        [("Subject: outer subject", 1), ("Outer body", 1), ("Attachments: test.eml", 1)],
    ),
}


def _detect(path: Path, name: str | None = None) -> str:
    with path.open("rb") as fh:
        return detect_media_type(name or path.name, fh.read(1024), fh)


def _pages(path: Path, media_type: str) -> list[str]:
    return [p.text for p in extract_pages(path, media_type, ocr=TesseractOcr())]


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_format_reads_with_its_text_on_the_right_page(name: str) -> None:
    media_type, count, phrases = CASES[name]
    path = FORMATS / name
    assert _detect(path) == media_type
    pages = _pages(path, media_type)
    assert len(pages) == count
    for phrase, page in phrases:
        holding = [n for n, text in enumerate(pages, 1) if phrase in text]
        assert holding == [page], (phrase, holding)


@pytest.mark.parametrize(
    "name", ["report.docx", "slides.pptx", "sheet.xlsx", "report.odt", "sheet.ods", "book.epub"]
)
def test_containers_are_known_by_their_bytes_not_their_name(name: str, tmp_path: Path) -> None:
    disguised = tmp_path / "upload.bin"
    shutil.copy(FORMATS / name, disguised)
    assert _detect(disguised) == CASES[name][0]
    # Read under any name: the object store keeps originals under their entry id.
    assert len(_pages(disguised, CASES[name][0])) == CASES[name][1]
    misnamed = tmp_path / "misnamed.xlsx"  # an OOXML of another kind under an .xlsx name
    shutil.copy(FORMATS / name, misnamed)
    assert _detect(misnamed) == CASES[name][0]


def test_outlook_and_rfc822_messages_are_sniffed_without_their_extension(tmp_path: Path) -> None:
    for name, media_type in (("message.msg", formats.MSG), ("message.eml", formats.EML)):
        copy = tmp_path / "mail"
        shutil.copy(FORMATS / name, copy)
        assert _detect(copy) == media_type


def test_document_tables_keep_header_rows_and_columns() -> None:
    for name in ("report.docx", "report.odt", "report.pdf"):
        page = _pages(FORMATS / name, CASES[name][0])[1].splitlines()
        header = page.index("| File | First line | Lines | Bytes |")
        assert page[header + 1] == "|---|---|---|---|"
        rows = [line for line in page[header + 2 :] if line.startswith("| ")]
        assert len(rows) == 14 and all(line.count("|") == 5 for line in rows)


def test_email_attachments_come_out_whole() -> None:
    eml = formats.attachments(FORMATS / "message.eml", formats.EML)
    assert [a.name for a in eml] == ["bsd-license.pdf", "report.docx"]
    assert eml[0].data.startswith(b"%PDF-")
    assert eml[1].data == (FORMATS / "report.docx").read_bytes()
    msg = formats.attachments(FORMATS / "message.msg", formats.MSG)
    assert [a.name for a in msg] == ["bsd-license.pdf", "licenses.csv"]
    assert msg[0].data == eml[0].data  # the same PDF, carried by both kinds of message
    assert msg[1].data.decode().startswith("File,")
    # A message embedded in an Outlook message comes out as an RFC 822 message of its own.
    (inner,) = formats.attachments(FORMATS / "outlook-nested.msg", formats.MSG)
    assert inner.name == "test.eml"
    parsed = formats._parse_eml(inner.data)
    assert parsed["Subject"] == "test" and parsed["To"] == "test@foobar.com"
    assert parsed.get_body().get_content().strip() == "body"


# -- bad inputs ---------------------------------------------------------------------------------
def _zip_bomb(path: Path, inflated: int) -> None:
    """A DOCX-shaped ZIP whose document part inflates to ``inflated`` bytes of spaces."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        with zf.open("word/document.xml", "w", force_zip64=True) as part:
            block = b" " * (8 * 1024 * 1024)
            for _ in range(inflated // len(block)):
                part.write(block)


@pytest.fixture(scope="module")
def docx_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.docx"
    _zip_bomb(path, 600 * 1024 * 1024)  # over the 512 MiB default cap; ~600 KB on disk
    return path


@pytest.mark.parametrize(
    ("name", "media_type", "reason"),
    [
        ("encrypted.docx", formats.DOCX, "encrypted Word document: a password is required"),
        ("encrypted.xlsx", formats.XLSX, "encrypted Excel workbook: a password is required"),
        ("encrypted.odt", formats.ODT, "encrypted OpenDocument text: a password is required"),
        ("corrupt.docx", formats.DOCX, "corrupt Word document"),
    ],
)
def test_bad_office_files_fail_with_a_reason(name: str, media_type: str, reason: str) -> None:
    path = FORMATS / name
    assert _detect(path) == media_type  # named for what it claims to be, then refused
    with pytest.raises(ExtractionError, match=reason):
        _pages(path, media_type)


def test_a_zip_bomb_disguised_as_docx_is_refused_by_its_declared_sizes(docx_bomb: Path) -> None:
    assert docx_bomb.stat().st_size < 2 * 1024 * 1024
    assert _detect(docx_bomb) == formats.DOCX
    with pytest.raises(
        ExtractionError, match=r"would decompress to 629,145,\d+ bytes.*over the cap"
    ):
        _pages(docx_bomb, formats.DOCX)


def test_truncated_and_mangled_files_of_every_container_fail_cleanly(tmp_path: Path) -> None:
    for name in ("report.docx", "slides.pptx", "sheet.xlsx", "report.odt", "book.epub"):
        data = (FORMATS / name).read_bytes()
        media_type = CASES[name][0]
        for label, bad in (("cut", data[: len(data) // 2]), ("noise", data[:64] + bytes(4096))):
            path = tmp_path / f"{label}-{name}"
            path.write_bytes(bad)
            with pytest.raises(ExtractionError, match="corrupt"):
                _pages(path, media_type)
    broken = tmp_path / "broken.rtf"
    broken.write_bytes(b"not rtf at all")
    with pytest.raises(ExtractionError, match="corrupt RTF"):
        _pages(broken, formats.RTF)
    garbage = tmp_path / "garbage.msg"
    garbage.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600))
    with pytest.raises(ExtractionError, match="corrupt Outlook message"):
        _pages(garbage, formats.MSG)


def _admit(name: str, data: bytes, claimed: str | None = None) -> str:
    return admit(name, data[:1024], io.BytesIO(data), len(data), max_bytes=10**8, claimed=claimed)


def test_one_admission_policy_names_what_it_refuses() -> None:
    docx = (FORMATS / "report.docx").read_bytes()
    assert _admit("report.docx", docx) == formats.DOCX
    assert _admit("x", docx, claimed="application/octet-stream") == formats.DOCX
    cases = [
        ("empty.docx", b"", None, "empty", "empty file"),
        ("big.docx", docx, None, None, None),
        (
            "report.xlsx",
            docx,
            formats.XLSX,
            "mismatch",
            "claimed as .*sheet.* bytes are .*wordprocessing",
        ),
        ("a.pdf", b"just words", None, "mismatch", "not a PDF"),
        ("a.docx", b"just words", None, "mismatch", "not a ZIP container"),
        ("a.msg", b"just words", None, "mismatch", "not an OLE container"),
        ("a.csv", b"\x00\x01\x02" * 10, None, "mismatch", "binary bytes"),
        ("a.zip", b"PK\x03\x04" + bytes(60), None, "unsupported", "unsupported media type"),
        ("a.exe", b"MZ\x90\x00", None, "unsupported", "unsupported media type"),
        (
            "old.doc",
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600),
            None,
            "unsupported",
            "legacy Office 97-2003",
        ),
    ]
    for name, data, claimed, kind, reason in cases:
        if kind is None:
            with pytest.raises(Refused, match="file too large") as err:
                admit(name, data[:1024], io.BytesIO(data), len(data), max_bytes=100)
            assert err.value.kind == "too_large"
            continue
        with pytest.raises(Refused, match=reason) as err:
            _admit(name, data, claimed)
        assert err.value.kind == kind, name
    encrypted = (FORMATS / "encrypted.docx").read_bytes()
    # Encrypted OOXML is an OLE file: admitted under its name, refused by its reader.
    assert _admit("secret.docx", encrypted) == formats.DOCX
    with pytest.raises(Refused, match="encrypted Office document"):
        _admit("secret", encrypted)


def test_mail_header_sniffing_needs_a_sender_and_a_header_block() -> None:
    assert formats.looks_like_email(b"From: a@b.c\nSubject: hi\n\nbody")
    assert formats.looks_like_email(b"Received: x\nFrom: a@b.c\nDate: Mon, 1 Jan 2024\n\nb")
    assert not formats.looks_like_email(b"Subject: hi\nDate: today\n\nbody")  # no sender
    assert not formats.looks_like_email(b"From the desk of the editor: hello\n\nmore text")
    assert not formats.looks_like_email(b"Dear reader,\nFrom: me\nSubject: x\n")
