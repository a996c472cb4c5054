"""Keyword index: BM25 full-text search with typo tolerance, one index per tenant.

``Fts5KeywordIndex`` is the embedded backend: SQLite FTS5 (BM25 ranking built in) over terms
produced by ``resources.analysis`` (diacritics folded, Snowball-stemmed), with the chunk rows
in an ordinary table as the external content. It shares SQLite's guarantees with the other
embedded stores: transactions, several processes at once, no separate server or lock file.

Typo tolerance: a query term that is not in the index vocabulary is replaced by the
vocabulary terms within one edit (words of 5+ letters) or two edits (9+ letters), counting a
transposition as one edit, the most frequent first, as Meilisearch does.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from rapidfuzz import process
from rapidfuzz.distance import OSA

from resources.analysis import Analyzer, get_analyzer

_MAX_CORRECTIONS = 3


@dataclass(frozen=True)
class KeywordDoc:
    id: str
    entry_id: str
    dataset: str
    chunk_index: int
    page: int | None
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class KeywordHit:
    id: str
    score: float
    entry_id: str
    dataset: str
    chunk_index: int
    page: int | None


class KeywordIndex(Protocol):
    """A tenant's full-text index (embedded here; a Meilisearch index in cluster mode)."""

    def replace_entry(self, entry_id: str, docs: Sequence[KeywordDoc]) -> None: ...
    def delete_entries(self, entry_ids: Iterable[str]) -> int: ...
    def search(self, query: str, top_k: int, dataset: str | None = None) -> list[KeywordHit]: ...
    def get_docs(self, ids: Sequence[str]) -> dict[str, KeywordDoc]: ...
    def entry_docs(self, entry_id: str) -> list[KeywordDoc]: ...
    def count(self, entry_id: str | None = None) -> int: ...
    def counts_by_entry(self) -> dict[str, int]: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    rowid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    entry_id TEXT NOT NULL,
    dataset TEXT NOT NULL,
    chunk_index INTEGER NOT NULL,
    page INTEGER,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    text TEXT NOT NULL,
    terms TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_chunks_entry ON chunks(entry_id);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(
    terms, content='chunks', content_rowid='rowid',
    tokenize="unicode61 remove_diacritics 0 tokenchars '_'"
);
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO fts(rowid, terms) VALUES (new.rowid, new.terms);
END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO fts(fts, rowid, terms) VALUES ('delete', old.rowid, old.terms);
END;
CREATE VIRTUAL TABLE IF NOT EXISTS vocab USING fts5vocab(fts, 'row');
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta(key, value) VALUES ('version', 0);
"""

_COLUMNS = "id, entry_id, dataset, chunk_index, page, start, end, text"


def _doc(row: tuple) -> KeywordDoc:
    return KeywordDoc(*row)


def max_typos(word: str) -> int:
    """Edits tolerated for a query word of this length (Meilisearch's defaults)."""
    if len(word) >= 9:
        return 2
    if len(word) >= 5:
        return 1
    return 0


class Fts5KeywordIndex:
    """Embedded keyword index of one tenant."""

    def __init__(self, path: Path, analyzer: Analyzer | None = None) -> None:
        self.path = Path(path)
        self.analyzer = analyzer or get_analyzer()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._vocab_lock = threading.Lock()
        self._vocab_version = -1
        self._vocab_terms: list[str] = []
        self._vocab_df: dict[str, int] = {}
        self._conn().executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    # -- writes --------------------------------------------------------------------------
    def replace_entry(self, entry_id: str, docs: Sequence[KeywordDoc]) -> None:
        """Make the entry's documents exactly ``docs`` in one transaction (idempotent)."""
        rows = [
            (
                d.id,
                d.entry_id,
                d.dataset,
                d.chunk_index,
                d.page,
                d.start,
                d.end,
                d.text,
                " ".join(self.analyzer.terms(d.text)),
            )
            for d in docs
        ]
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM chunks WHERE entry_id=?", (entry_id,))
            conn.executemany(
                f"INSERT INTO chunks({_COLUMNS}, terms) VALUES (?,?,?,?,?,?,?,?,?)", rows
            )
            conn.execute("UPDATE meta SET value = value + 1 WHERE key='version'")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def delete_entries(self, entry_ids: Iterable[str]) -> int:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            removed = 0
            for eid in entry_ids:
                removed += conn.execute("DELETE FROM chunks WHERE entry_id=?", (eid,)).rowcount
            conn.execute("UPDATE meta SET value = value + 1 WHERE key='version'")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return removed

    # -- reads ---------------------------------------------------------------------------
    def _vocabulary(self) -> tuple[list[str], dict[str, int]]:
        conn = self._conn()
        (version,) = conn.execute("SELECT value FROM meta WHERE key='version'").fetchone()
        if version != self._vocab_version:
            with self._vocab_lock:
                if version != self._vocab_version:
                    df = {
                        term: int(doc) for term, doc in conn.execute("SELECT term, doc FROM vocab")
                    }
                    self._vocab_terms = list(df)
                    self._vocab_df = df
                    self._vocab_version = version
        return self._vocab_terms, self._vocab_df

    def expand_query(self, query: str) -> list[str]:
        """The index terms a query searches for, typo-corrected where a term is unknown."""
        words = self.analyzer.words(query)
        terms = self.analyzer.query_terms(query)
        surface = {self.analyzer.stem(w): w for w in words}
        vocab, df = self._vocabulary()
        expanded: dict[str, None] = {}
        for term in terms:
            if term in df or not vocab:
                expanded.setdefault(term, None)
                continue
            typos = max_typos(surface.get(term, term))
            if typos == 0:
                expanded.setdefault(term, None)
                continue
            matches = process.extract(
                term, vocab, scorer=OSA.distance, score_cutoff=typos, limit=20
            )
            # Fewest edits first, then the most frequent term.
            matches.sort(key=lambda m: (m[1], -df[m[0]]))
            for candidate, _dist, _idx in matches[:_MAX_CORRECTIONS]:
                expanded.setdefault(candidate, None)
            if not matches:
                expanded.setdefault(term, None)
        return list(expanded)

    def _match(self, match: str, top_k: int, dataset: str | None) -> list[KeywordHit]:
        sql = (
            "SELECT c.id, c.entry_id, c.dataset, c.chunk_index, c.page, bm25(fts) AS score "
            "FROM fts JOIN chunks c ON c.rowid = fts.rowid WHERE fts MATCH ?"
        )
        params: list[object] = [match]
        if dataset is not None:
            sql += " AND c.dataset = ?"
            params.append(dataset)
        sql += " ORDER BY score LIMIT ?"
        params.append(int(top_k))
        rows = self._conn().execute(sql, params).fetchall()
        return [KeywordHit(r[0], -float(r[5]), r[1], r[2], r[3], r[4]) for r in rows]

    def search(self, query: str, top_k: int, dataset: str | None = None) -> list[KeywordHit]:
        """BM25 over the query's terms; chunks holding the whole query as a phrase come first.

        Ranking exact phrase matches above scattered ones is what a user pasting a sentence
        expects (Meilisearch's proximity and exactness rules do the same).
        """
        terms = self.expand_query(query)
        if not terms or top_k <= 0:
            return []
        hits = self._match(" OR ".join(f'"{t}"' for t in terms), top_k, dataset)
        words = self.analyzer.terms(query)
        if len(words) < 2 or not hits:
            return hits
        phrase = self._match('"' + " ".join(words) + '"', top_k, dataset)
        if not phrase:
            return hits
        lift = max(h.score for h in hits)
        lifted = [replace(h, score=h.score + lift) for h in phrase]
        seen = {h.id for h in lifted}
        return (lifted + [h for h in hits if h.id not in seen])[:top_k]

    def get_docs(self, ids: Sequence[str]) -> dict[str, KeywordDoc]:
        if not ids:
            return {}
        out: dict[str, KeywordDoc] = {}
        conn = self._conn()
        ids = list(ids)
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            marks = ",".join("?" * len(batch))
            for row in conn.execute(f"SELECT {_COLUMNS} FROM chunks WHERE id IN ({marks})", batch):
                out[row[0]] = _doc(row)
        return out

    def entry_docs(self, entry_id: str) -> list[KeywordDoc]:
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM chunks WHERE entry_id=? ORDER BY chunk_index", (entry_id,)
        )
        return [_doc(r) for r in rows]

    def count(self, entry_id: str | None = None) -> int:
        conn = self._conn()
        if entry_id is None:
            return int(conn.execute("SELECT count(*) FROM chunks").fetchone()[0])
        return int(
            conn.execute("SELECT count(*) FROM chunks WHERE entry_id=?", (entry_id,)).fetchone()[0]
        )

    def counts_by_entry(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT entry_id, count(*) FROM chunks GROUP BY entry_id")
        return {eid: int(c) for eid, c in rows}

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
