"""Tables in a PDF's text layer are found by their layout: rows of cells where the page has
columns read row by row, and the text exactly as pdfium reads it everywhere else (prose,
justified or not, lists with hanging markers, pages of two columns)."""

from __future__ import annotations

from pathlib import Path

import pypdfium2 as pdfium
import pytest

from resources.pdf_tables import Glyph, read_glyphs, with_tables
from tests.conftest import PDFS
from tests.resources.test_formats import FORMATS

ADVANCE = 6.0  # a letter's width in the synthetic pages: a 12-point proportional font
HEIGHT = 14.0  # a loose glyph box's height


def _page(lines: list[list[tuple[float, str]]], order: str = "rows") -> tuple[str, list[Glyph]]:
    """A page's text and glyphs as pdfium would give them: ``lines`` top to bottom, each a
    list of (x where a cell starts, its text); the text is read row by row (each cell ended
    by a space, as pdfium joins text objects) or column by column."""
    cells = [(row, col, x, words) for row, line in enumerate(lines) for col, (x, words) in
             enumerate(line)]  # fmt: skip
    if order == "columns":
        cells.sort(key=lambda c: (c[1], c[0]))
    text, glyphs = [], []
    position = 0
    for row, _col, x, words in cells:
        baseline = 700.0 - 20.0 * row
        for char in words:
            if not char.isspace():
                glyphs.append(Glyph(position, x, baseline - 3, x + ADVANCE * 0.9, baseline + 11,
                                    baseline))  # fmt: skip
            text.append(char)
            position += 1
            x += ADVANCE if not char.isspace() else ADVANCE / 2
        text.append("\r\n")
        position += 2
    return "".join(text), glyphs


GRID = [
    [(50, "Code"), (150, "Language"), (300, "Speakers")],
    [(50, "deu"), (150, "German"), (300, "95 million")],
    [(50, "fra"), (150, "French"), (300, "80 million")],
    [(50, "spa"), (150, "Spanish;"), (300, "480 million")],
    [(150, "Castilian")],  # the wrapped rest of the cell above
]


def test_a_table_read_row_by_row_becomes_rows_of_cells() -> None:
    text, glyphs = _page([[(50, "Languages by speakers")], *GRID, [(50, "Source: estimates.")]])
    lines = with_tables(text, glyphs).replace("\r\n", "\n").splitlines()
    assert lines == [
        "Languages by speakers",
        "| Code | Language | Speakers |",
        "|---|---|---|",
        "| deu | German | 95 million |",
        "| fra | French | 80 million |",
        "| spa | Spanish; Castilian | 480 million |",
        "Source: estimates.",
    ]


def test_columns_read_one_after_the_other_keep_the_reading_order() -> None:
    """A page of two columns pairs its lines up like a table's, but pdfium reads the left
    column first: rewriting it by rows would interleave the two texts."""
    text, glyphs = _page(GRID[:4], order="columns")
    assert with_tables(text, glyphs) == text


def test_list_markers_hanging_left_of_their_items_are_not_a_table() -> None:
    text, glyphs = _page([[(50, "•"), (70, "first item")], [(50, "•"), (70, "second item")],
                          [(50, "10."), (70, "tenth item")]])  # fmt: skip
    assert with_tables(text, glyphs) == text


def test_two_lines_that_happen_to_line_up_are_not_a_table() -> None:
    """A heading and the first line under it in a list of contents, say."""
    text, glyphs = _page(
        [[(50, "Installation"), (300, "8")], [(50, "3. Installation"), (300, "8")]]
    )
    assert with_tables(text, glyphs) == text


def test_words_spread_over_lines_without_columns_below_them_are_not_a_table() -> None:
    """Two lines with wide spaces (justified, or spread out): their words do not overlap
    across a gap, but no column but the first holds words in both lines."""
    text, glyphs = _page([[(50, "stretched"), (130, "words"), (200, "of")],
                          [(50, "a"), (230, "few"), (280, "gaps")]])  # fmt: skip
    assert with_tables(text, glyphs) == text


def _pdf_pages(path: Path, only: int | None = None) -> list[tuple[str, str]]:
    """Each page's text (or page ``only``'s) as pdfium reads it, and with its tables found."""
    doc = pdfium.PdfDocument(str(path))
    try:
        out = []
        for number in [only] if only else range(1, len(doc) + 1):
            textpage = doc[number - 1].get_textpage()
            text = textpage.get_text_range()
            out.append((text, with_tables(text, read_glyphs(textpage, text))))
        return out
    finally:
        doc.close()


def test_a_table_printed_by_libreoffice_keeps_its_rows_and_nothing_else_changes() -> None:
    pages = _pdf_pages(FORMATS / "letter.pdf")
    plain, found = pages[0]
    rows = [line for line in found.splitlines() if line.startswith("|")]
    assert rows == [
        "| ISO 639-2 | English | Deutsch | Français |",
        "|---|---|---|---|",
        "| bel | Belarusian | Weißrussisch | biélorusse |",
        "| tur | Turkish | Türkisch | turc |",
        "| fra | French | Französisch | français |",
        "| deu | German | Deutsch | allemand |",
        "| spa | Spanish; Castilian | Spanisch (Kastilisch) | castillan |",
        "| dan | Danish | Dänisch | danois |",
    ]
    table_start = plain.index("ISO 639-2 English")
    table_end = plain.index("Statement of Purpose")
    assert found.startswith(plain[:table_start])  # the text around the table is pdfium's
    assert found.endswith(plain[table_end:])
    report = _pdf_pages(FORMATS / "report.pdf")
    assert [a == b for a, b in report] == [True, False, True]  # only the table's page changes


@pytest.mark.parametrize(
    ("pdf", "page"),
    [
        ("camlidl-manual.pdf", 1),  # justified prose set by TeX (no space characters at all)
        ("camlidl-manual.pdf", 14),  # a bulleted list with hanging indents
        ("gri-manual.pdf", 97),  # a bulleted list of commands
        ("gri-manual.pdf", 244),  # a numbered list
        ("live-manual.en.pdf", 10),  # prose with code blocks
    ],
)
def test_prose_and_lists_in_real_pdfs_read_as_pdfium_reads_them(pdf: str, page: int) -> None:
    [(plain, found)] = _pdf_pages(PDFS / pdf, page)
    assert found == plain
