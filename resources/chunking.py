"""Token-aware chunking: spans of a page that fill, but never exceed, the model's window.

Chunks are cut with the embedding model's own tokenizer so that no chunk is longer than the
model reads (the rest would be silently dropped from its vector), and each chunk is as long
as the window allows: no overlap and no repeated headers, because embedding is the dominant
cost. A cut prefers, in the last half of the window, a paragraph break, then a line break or
sentence end, then any space. Chunks stay within one page so that every hit names its page.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from resources.embedder import ModelTokenizer
from resources.extract import PageText

CHUNK_NAMESPACE = uuid.UUID("5b1f0a3e-6d0c-4f5e-9a57-3c9f5a0c2e11")
_SENTENCE_END = (".", "!", "?", ":", ";")


@dataclass(frozen=True)
class Chunk:
    id: str
    index: int
    page: int | None
    start: int  # character offsets into the page's text
    end: int
    text: str
    tokens: int
    language: str | None = None  # ISO 639-1, its page's (resources.analysis)


def chunk_id(entry_id: str, index: int, text: str) -> str:
    """Deterministic id: uuid5 of (entry, chunk index, text hash), so writes are upserts."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return str(uuid.uuid5(CHUNK_NAMESPACE, f"{entry_id}:{index}:{digest}"))


def _boundary_score(text: str, prev_end: int, next_start: int) -> int:
    gap = text[prev_end:next_start]
    if "\n\n" in gap or "\n \n" in gap:
        return 4
    if "\n" in gap:
        return 3
    if gap and gap.isspace():
        return 3 if text[prev_end - 1 : prev_end] in _SENTENCE_END else 1
    return 0


def chunk_pages(
    entry_id: str, pages: Sequence[PageText], tokenizer: ModelTokenizer, max_tokens: int
) -> list[Chunk]:
    """Split pages into chunks of at most ``max_tokens`` tokens of the given tokenizer."""
    if max_tokens < 8:
        raise ValueError("max_tokens must be at least 8")
    encodings = tokenizer.offsets([p.text for p in pages]) if pages else []
    chunks: list[Chunk] = []
    for page, offsets in zip(pages, encodings, strict=True):
        text = page.text
        n = len(offsets)
        i = 0
        while i < n:
            if n - i <= max_tokens:
                cut, score = n, 4
            else:
                cut, score = i + max_tokens, -1
                floor = i + max_tokens // 2
                for k in range(i + max_tokens, floor, -1):
                    s = _boundary_score(text, offsets[k - 1][1], offsets[k][0])
                    if s > score:
                        cut, score = k, s
                        if s == 4:
                            break
            start, end = offsets[i][0], offsets[cut - 1][1]
            piece = text[start:end]
            # A cut inside a word can re-tokenize longer; shrink until it fits.
            while score == 0 and cut - i > 1 and tokenizer.count(piece) > max_tokens:
                cut -= max(1, (cut - i) // 16)
                end = offsets[cut - 1][1]
                piece = text[start:end]
            if piece.strip():
                index = len(chunks)
                chunks.append(
                    Chunk(
                        id=chunk_id(entry_id, index, piece),
                        index=index,
                        page=page.page,
                        start=start,
                        end=end,
                        text=piece,
                        tokens=cut - i,
                    )
                )
            i = cut
    return chunks
