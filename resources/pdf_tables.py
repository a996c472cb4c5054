"""Tables in a PDF's text layer, found by where the text lies on the page.

pdfium reads a page's text in the order its producer wrote it. For a table that is usually
cell by cell, row by row, with each cell's wrapped lines on lines of their own, so a row's
cells come out run together with single spaces, or scattered over several lines, and the
columns are lost. PDFs carry no table markup (tagged PDFs aside, and few are), so a reader
has to see the table in the geometry, as pdfplumber's text strategy and Camelot's stream mode
do. Here:

1. The page's glyphs (whitespace aside) are read with their boxes, in stream order. A *run* is
   a stretch of consecutive glyphs on one line with no gap wider than about one glyph height
   between neighbours: one line of one cell, or a line of ordinary text.
2. Runs are grouped into visual lines by vertical overlap and sorted left to right.
3. A *table* is a stack of consecutive visual lines, starting at a line of two or more runs,
   whose runs all fall into columns that no line bridges, with no blank line's worth of space
   between lines, and at least two lines of two or more runs. A line that only continues
   cells of the row above (its first column empty, at most half its cells filled) is that
   row's wrapped text.
4. A table is rewritten only where doing so keeps the reading order: its glyphs must be one
   unbroken stretch of the page's text (no other text read in between), read row by row.
   Two-column pages, whose lines pair up like a table's but are read column by column, fail
   that test and keep pdfium's text, as does any table whose producer wrote it by columns.

A table found is written as office tables are (``formats.table_lines``): one line per row,
cells between ``|``, the first row followed by a rule. Everything else on the page is pdfium's
text, unchanged. Reading the boxes costs a few microseconds a glyph.
"""

from __future__ import annotations

import ctypes
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, NamedTuple

from resources.formats import table_lines

# Distances are in glyph heights: the height of a loose glyph box, a little over the font size.
#: A gap between glyphs wider than this ends a word.
WORD_GAP = 0.12
#: A gap between words wider than this many of the line's glyph heights, and than
#: ``CELL_PITCHES`` of its character cells if it is monospaced (one space in a monospaced
#: font is not a column), ends a run.
CELL_GAP = 0.7
CELL_PITCHES = 2.0
#: Clear space that must stay between two columns down the whole table, in line heights.
MIN_CHANNEL = 0.4
#: Vertical space between two lines of a table, in line heights, above which the table ends.
MAX_LINE_GAP = 1.5
#: Rows a table has at least (its merged rows): two lines that happen to line up, such as a
#: heading and the first entry of a list of contents, are not taken for one.
MIN_ROWS = 3
#: Glyphs read out of row order that a table tolerates (superscripts, stray marks).
ORDER_SLACK = 0.02


#: Bullets and item numbers: a "column" of nothing else is a list's hanging markers.
_LIST_MARKER = re.compile(r"[•◦▪▫‣⁃∙·●○■□►▶✓✔–—*+-]|\(?(\d{1,3}|[a-zA-Z]|[ivxlcIVXLC]{1,6})[.):]")


class Glyph(NamedTuple):
    """One character of the page's text with its box in PDF points (y grows upwards); a
    tuple, for a page has thousands and each is made and read several times."""

    index: int  # position in the page's text
    left: float
    bottom: float
    right: float
    top: float
    baseline: float  # the glyph's origin: the same for every glyph of a line, commas too

    @property
    def height(self) -> float:
        return self.top - self.bottom


@dataclass
class Run:
    glyphs: list[Glyph]
    left: float
    bottom: float
    right: float
    top: float
    baseline: float

    @classmethod
    def of(cls, glyphs: list[Glyph]) -> Run:
        _, left, bottom, right, top, baseline = zip(*glyphs, strict=True)
        return cls(glyphs, min(left), min(bottom), max(right), max(top), baseline[0])

    @property
    def height(self) -> float:
        return self.top - self.bottom

    def joined(self, other: Run) -> Run:
        """``Run.of(self.glyphs + other.glyphs)``, from the two boxes (a line's words are
        joined one by one: rescanning the glyphs would cost the square of its length)."""
        return Run(
            self.glyphs + other.glyphs,
            min(self.left, other.left),
            min(self.bottom, other.bottom),
            max(self.right, other.right),
            max(self.top, other.top),
            self.baseline,
        )


@dataclass
class Line:
    runs: list[Run] = field(default_factory=list)

    @property
    def top(self) -> float:
        return max(r.top for r in self.runs)

    @property
    def bottom(self) -> float:
        return min(r.bottom for r in self.runs)


def read_glyphs(textpage: Any, text: str) -> list[Glyph]:
    """The loose boxes (advance width by the font's ascent and descent, so that the space
    between two boxes is the space the producer left) of the page's visible characters,
    whitespace left out, from a pypdfium2 text page."""
    import pypdfium2.raw as pdfium_c

    raw = textpage.raw
    box = pdfium_c.FS_RECTF()
    x, y = ctypes.c_double(), ctypes.c_double()
    # Two calls per character of every page: the pointers are made once, not per call.
    box_at, x_at, y_at = ctypes.byref(box), ctypes.byref(x), ctypes.byref(y)
    loose_box, origin = pdfium_c.FPDFText_GetLooseCharBox, pdfium_c.FPDFText_GetCharOrigin
    glyphs = []
    for index, char in enumerate(text):
        if char.isspace() or not loose_box(raw, index, box_at):
            continue
        if box.right > box.left and box.top > box.bottom:
            origin(raw, index, x_at, y_at)
            glyphs.append(Glyph(index, box.left, box.bottom, box.right, box.top, y.value))
    return glyphs


def with_tables(text: str, glyphs: Sequence[Glyph]) -> str:
    """``text`` (a page's text as pdfium reads it, glyph indices into it) with each table
    found rewritten as rows of cells; unchanged where no table is found."""
    if len(glyphs) < 4:
        return text
    lines = _visual_lines(_runs(glyphs))
    found = []
    start = 0
    while start < len(lines):
        table = _table_at(lines, start)
        if table is None:
            start += 1
            continue
        end, columns = table
        read = _rows(text, lines[start:end], columns)
        if read is not None:
            cells, members = read
            lo, hi = min(members), max(members)
            # one unbroken stretch of the page's text: no other glyph read in between
            if all(g.index in members for g in glyphs if lo <= g.index <= hi):
                found.append((lo, hi, cells))
        start = end
    if not found:
        return text
    out: list[str] = []
    cursor = 0
    for lo, hi, cells in sorted(found, key=lambda item: item[0]):
        if lo < cursor:
            continue
        before = text[cursor:lo]
        out.append(before)
        if before and not before.endswith("\n"):
            out.append("\n")
        out.append("\n".join(table_lines(cells)))
        if hi + 1 < len(text) and text[hi + 1] not in "\r\n":
            out.append("\n")
        cursor = hi + 1
    out.append(text[cursor:])
    return "".join(out)


def _same_line(a: Glyph | Run, b: Glyph | Run) -> bool:
    """On one baseline, give or take less than a superscript's rise."""
    return abs(a.baseline - b.baseline) <= 0.3 * max(a.height, b.height)


def _gap(a: Glyph | Run, b: Glyph | Run) -> float:
    """Horizontal space between two boxes; negative when they overlap."""
    return max(b.left - a.right, a.left - b.right)


def _runs(glyphs: Sequence[Glyph]) -> list[Run]:
    """Words: consecutive glyphs on one line with no more than a thin space between them."""
    runs: list[Run] = []
    current = [glyphs[0]]
    for glyph in glyphs[1:]:
        prev = current[-1]
        if _same_line(prev, glyph) and _gap(prev, glyph) <= WORD_GAP * max(
            prev.height, glyph.height
        ):
            current.append(glyph)
        else:
            runs.append(Run.of(current))
            current = [glyph]
    runs.append(Run.of(current))
    return runs


def _visual_lines(words: list[Run]) -> list[Line]:
    """Words grouped into lines, top to bottom, and joined into runs: words closer than
    ``CELL_GAP`` of the line's typical glyph height are one run (one cell's line of text)."""
    lines: list[Line] = []
    for word in sorted(words, key=lambda r: -r.baseline):
        for line in reversed(lines[-3:]):  # words of one line sort next to each other
            if _same_line(line.runs[0], word):
                line.runs.append(word)
                break
        else:
            lines.append(Line([word]))
    for line in lines:
        widest = max(
            CELL_GAP * statistics.median(g.height for r in line.runs for g in r.glyphs),
            CELL_PITCHES * _pitch(line.runs),
        )
        line.runs.sort(key=lambda r: r.left)
        merged = [line.runs[0]]
        for run in line.runs[1:]:
            if _gap(merged[-1], run) <= widest:
                merged[-1] = merged[-1].joined(run)
            else:
                merged.append(run)
        line.runs = merged
    return lines


def _pitch(words: list[Run]) -> float:
    """A monospaced line's character cell (the advance from one glyph to the next, the same
    for nearly every pair), or 0 for a line set in a proportional font."""
    steps = [b.left - a.left for word in words for a, b in pairwise(word.glyphs) if b.left > a.left]
    if len(steps) < 4:
        return 0.0
    cell = statistics.median(steps)
    alike = sum(abs(step - cell) <= 0.03 * cell for step in steps)
    return cell if alike >= 0.9 * len(steps) else 0.0


def _table_at(lines: list[Line], start: int) -> tuple[int, list[tuple[float, float]]] | None:
    """The end (exclusive) and the columns of a table starting at ``lines[start]``."""
    first = lines[start]
    if len(first.runs) < 2:
        return None
    columns = [(r.left, r.right) for r in first.runs]
    end = start + 1
    while end < len(lines):
        line, above = lines[end], lines[end - 1]
        height = above.top - above.bottom
        if above.bottom - line.top > MAX_LINE_GAP * min(height, line.top - line.bottom):
            break
        fitted = _fit(columns, line.runs, MIN_CHANNEL * min(height, line.top - line.bottom))
        if fitted is None:
            break
        columns = fitted
        end += 1
    if sum(len(lines[k].runs) >= 2 for k in range(start, end)) < 2:
        return None
    return end, columns


def _fit(
    columns: list[tuple[float, float]], runs: list[Run], min_gap: float
) -> list[tuple[float, float]] | None:
    """``columns`` widened to hold ``runs``, or None where a run bridges two columns or
    leaves less than ``min_gap`` of clear space between two of them."""
    out = list(columns)
    for run in runs:
        hit = [k for k, (lo, hi) in enumerate(out) if run.left <= hi and run.right >= lo]
        if len(hit) > 1:
            return None
        if hit:
            lo, hi = out[hit[0]]
            out[hit[0]] = (min(lo, run.left), max(hi, run.right))
        else:
            out.append((run.left, run.right))
        out.sort()
        if any(out[k + 1][0] - out[k][1] < min_gap for k in range(len(out) - 1)):
            return None
    return out


def _rows(
    text: str, lines: list[Line], columns: list[tuple[float, float]]
) -> tuple[list[list[str]], set[int]] | None:
    """The table's rows of cell texts and the glyphs (text positions) it was read from, or
    None when the rows were not read in order (then the text stays as pdfium reads it)."""
    rows: list[list[str]] = []
    row_of: dict[int, int] = {}
    for line in lines:
        cells = [""] * len(columns)
        for run in line.runs:
            k = next(k for k, (lo, hi) in enumerate(columns) if run.left <= hi and run.right >= lo)
            cells[k] = f"{cells[k]} {_run_text(text, run.glyphs)}".strip()
        filled = sum(bool(c) for c in cells)
        if rows and not cells[0] and filled <= len(columns) / 2:  # wrapped cells of the row
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
        for run in line.runs:
            for glyph in run.glyphs:
                row_of[glyph.index] = len(rows) - 1
    filled_rows = [sum(bool(row[k]) for row in rows) for k in range(len(columns))]
    if min(filled_rows) < 2:  # a column of one cell: words spread out, not a table
        return None
    if all(_LIST_MARKER.fullmatch(row[0]) for row in rows if row[0]):
        return None  # a list: markers hanging to the left of their items
    late, last = 0, 0
    for index in sorted(row_of):  # glyphs read after a later row's: a table read by columns
        late += row_of[index] < last
        last = max(last, row_of[index])
    if late > ORDER_SLACK * len(row_of) or len(rows) < MIN_ROWS:
        return None
    return rows, set(row_of)


def _run_text(text: str, glyphs: list[Glyph]) -> str:
    """A run's text: its glyphs in order, one space wherever the page's text had whitespace
    between them or the run joins pieces read apart."""
    out = [text[glyphs[0].index]]
    for prev, glyph in pairwise(glyphs):
        if glyph.index != prev.index + 1:
            between = text[prev.index + 1 : glyph.index]
            if glyph.index < prev.index or not between or any(c.isspace() for c in between):
                out.append(" ")
        out.append(text[glyph.index])
    return " ".join("".join(out).split())
