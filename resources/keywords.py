"""Keyword index: BM25 full-text search with typo tolerance, one index per tenant.

``SqliteKeywordIndex`` is the embedded backend. Chunks (text, provenance, and their analyzed
terms as a bag of term ids) are stored in a SQLite file, so the Data API and a pipeline run in
other processes share one index with transactions. Each process keeps an inverted index in
NumPy arrays, sorted by term, and catches up through the change log
(``resources.changelog``); a query reads only the postings of its terms and scores them with
BM25 in vectorised code, so its cost grows with those postings, not with a per-row callback.

Terms come from ``resources.analysis`` for documents and queries alike: each chunk is analyzed
in its own language (recorded by the pipeline; the index's default when it has none), a query in
the language detected among those the index holds, and CJK runs are character bigrams in every
language. Typo tolerance: a query term missing from the vocabulary is replaced by the
vocabulary terms within one edit (words of 5+ letters) or two edits (9+ letters), counting a
transposition as one edit, most frequent first, as Meilisearch does. A chunk that holds the
whole query as a phrase ranks above chunks that only hold its words.
"""

from __future__ import annotations

import math
import re
import sqlite3
import threading
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import OSA

from resources.analysis import Analyzer, detect_language, get_analyzer, is_cjk
from resources.changelog import ChangeLoggedSqlite, entry_mask

K1 = 1.2
B = 0.75
_MAX_CORRECTIONS = 3
_PHRASE_CANDIDATES = 50


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
    language: str | None = None  # ISO 639-1; None: the index's default language


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
    def search(
        self,
        query: str,
        top_k: int,
        dataset: str | None = None,
        entries: Collection[str] | None = None,
    ) -> list[KeywordHit]: ...
    def get_docs(self, ids: Sequence[str]) -> dict[str, KeywordDoc]: ...
    def entry_docs(self, entry_id: str) -> list[KeywordDoc]: ...
    def count(self, entry_id: str | None = None) -> int: ...
    def counts_by_entry(self) -> dict[str, int]: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    seq INTEGER NOT NULL,
    entry_id TEXT NOT NULL,
    dataset TEXT NOT NULL,
    chunk_index INTEGER NOT NULL,
    page INTEGER,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    text TEXT NOT NULL,
    language TEXT,
    length INTEGER NOT NULL,
    term_ids BLOB NOT NULL,
    term_freqs BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_chunks_entry ON chunks(entry_id);
CREATE INDEX IF NOT EXISTS ix_chunks_seq ON chunks(seq);
CREATE TABLE IF NOT EXISTS terms (id INTEGER PRIMARY KEY, term TEXT NOT NULL UNIQUE);
"""

_COLUMNS = "id, entry_id, dataset, chunk_index, page, start, end, text, language"


def max_typos(word: str) -> int:
    """Edits tolerated for a query word of this length (Meilisearch's defaults)."""
    if len(word) >= 9:
        return 2
    if len(word) >= 5:
        return 1
    return 0


class _Postings:
    """An immutable inverted index over some document positions, sorted by term id."""

    def __init__(
        self, positions: Sequence[int], term_ids: Sequence[np.ndarray], freqs: Sequence[np.ndarray]
    ) -> None:
        if not positions:
            self.starts = np.zeros(1, dtype=np.int64)
            self.docs = np.zeros(0, dtype=np.int32)
            self.freqs = np.zeros(0, dtype=np.float32)
            return
        counts = [len(t) for t in term_ids]
        terms = np.concatenate(term_ids)
        order = np.argsort(terms, kind="stable")
        sorted_terms = terms[order]
        self.docs = np.repeat(np.asarray(positions, dtype=np.int32), counts)[order]
        self.freqs = np.concatenate(freqs).astype(np.float32)[order]
        # starts[t] .. starts[t + 1] is term t's slice: a lookup is two array reads.
        top = int(sorted_terms[-1]) + 2 if len(sorted_terms) else 1
        self.starts = np.searchsorted(sorted_terms, np.arange(top, dtype=np.int32))

    def get(self, term_id: int) -> tuple[np.ndarray, np.ndarray]:
        if term_id + 1 >= len(self.starts):
            return self.docs[:0], self.freqs[:0]
        lo, hi = int(self.starts[term_id]), int(self.starts[term_id + 1])
        return self.docs[lo:hi], self.freqs[lo:hi]


class _Cache:
    """This process's inverted index: a large base segment plus a small recent delta."""

    def __init__(self) -> None:
        self.seq = -1
        self.size = 0
        self.base_size = 0
        self.base = _Postings([], [], [])
        self.delta_rows: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._delta: _Postings | None = None
        self.lengths = np.zeros(1024, dtype=np.float32)
        self.valid = np.zeros(1024, dtype=bool)
        self.dataset_codes = np.zeros(1024, dtype=np.int32)
        self.rows: list[tuple[str, str, str, int, int | None, str]] = []
        self.languages: Counter[str] = Counter()  # live chunks per language
        self.position: dict[int, int] = {}  # SQLite rowid -> position
        self.datasets: dict[str, int] = {}
        self.removed = 0
        self._stats: tuple[int, float] | None = None

    def _grow(self, need: int) -> None:
        cap = self.lengths.shape[0]
        if need <= cap:
            return
        new_cap = max(need, cap * 2)
        for name in ("lengths", "valid", "dataset_codes"):
            old = getattr(self, name)
            new = np.zeros(new_cap, dtype=old.dtype)
            new[:cap] = old
            setattr(self, name, new)

    def add(self, rowid: int, row: tuple, length: int, tids: np.ndarray, tfs: np.ndarray) -> None:
        self._grow(self.size + 1)
        pos = self.size
        self.size += 1
        self.rows.append(row)
        self.position[rowid] = pos
        self.lengths[pos] = length
        self.valid[pos] = True
        self.dataset_codes[pos] = self.datasets.setdefault(row[2], len(self.datasets))
        self.languages[row[5]] += 1
        self.delta_rows.append((pos, tids, tfs))
        self._delta = None
        self._stats = None

    def remove(self, rowid: int) -> None:
        pos = self.position.pop(rowid, None)
        if pos is not None:
            self.valid[pos] = False
            self.removed += 1
            self.languages[self.rows[pos][5]] -= 1
            self._stats = None

    def seal(self) -> None:
        """Fold the delta into the base (used once, after a full load)."""
        rows = self.delta_rows
        self.base = _Postings([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
        self.base_size = self.size
        self.delta_rows = []
        self._delta = None

    def needs_reload(self) -> bool:
        return len(self.delta_rows) > max(5000, self.base_size // 4) or self.removed > max(
            5000, self.size // 4
        )

    def postings(self, term_id: int) -> tuple[np.ndarray, np.ndarray]:
        docs, freqs = self.base.get(term_id)
        if self.delta_rows:
            if self._delta is None:
                rows = self.delta_rows
                self._delta = _Postings(
                    [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
                )
            d_docs, d_freqs = self._delta.get(term_id)
            if len(d_docs):
                docs, freqs = np.concatenate([docs, d_docs]), np.concatenate([freqs, d_freqs])
        keep = self.valid[docs]
        return docs[keep], freqs[keep]

    def stats(self) -> tuple[int, float]:
        """(live documents, their average length)."""
        if self._stats is None:
            live = self.valid[: self.size]
            n = int(live.sum())
            avgdl = float(self.lengths[: self.size][live].mean()) if n else 1.0
            self._stats = (n, max(avgdl, 1.0))
        return self._stats


class SqliteKeywordIndex(ChangeLoggedSqlite):
    """Embedded keyword index of one tenant."""

    schema = _SCHEMA
    table = "chunks"
    key = "rowid"

    def __init__(self, path: Path, analyzer: Analyzer | None = None) -> None:
        self.analyzer = analyzer or get_analyzer()
        self._lock = threading.Lock()
        self._cache = _Cache()
        self._term_ids: dict[str, int] = {}
        self._terms: list[str] = []
        self._max_term_id = 0
        super().__init__(path)
        conn = self._conn()
        if "language" not in {row[1] for row in conn.execute("PRAGMA table_info(chunks)")}:
            conn.execute("ALTER TABLE chunks ADD COLUMN language TEXT")  # an index made before

    # -- writes --------------------------------------------------------------------------
    def _ids_for(self, conn: sqlite3.Connection, terms: set[str]) -> dict[str, int]:
        ids: dict[str, int] = {}
        words = sorted(terms)
        for start in range(0, len(words), 500):
            batch = words[start : start + 500]
            marks = ",".join("?" * len(batch))
            ids.update(conn.execute(f"SELECT term, id FROM terms WHERE term IN ({marks})", batch))
        missing = [w for w in words if w not in ids]
        if missing:
            conn.executemany("INSERT INTO terms(term) VALUES (?)", [(w,) for w in missing])
            for start in range(0, len(missing), 500):
                batch = missing[start : start + 500]
                marks = ",".join("?" * len(batch))
                sql = f"SELECT term, id FROM terms WHERE term IN ({marks})"
                ids.update(conn.execute(sql, batch))
        return ids

    def replace_entry(self, entry_id: str, docs: Sequence[KeywordDoc]) -> None:
        """Make the entry's documents exactly ``docs`` in one transaction (idempotent)."""
        # A chunk without a language is the index's default language (the pipeline records one).
        docs = [d if d.language else replace(d, language=self.analyzer.code) for d in docs]
        bags = [Counter(get_analyzer(d.language).terms(d.text)) for d in docs]
        with self._write() as (conn, seq):
            self._delete_entry_rows(conn, [entry_id], seq)
            ids = self._ids_for(conn, set().union(*bags) if bags else set())
            rows = []
            for doc, bag in zip(docs, bags, strict=True):
                tids = np.fromiter((ids[t] for t in bag), dtype=np.int32, count=len(bag))
                tfs = np.fromiter(bag.values(), dtype=np.uint16, count=len(bag))
                rows.append(
                    (
                        doc.id,
                        seq,
                        doc.entry_id,
                        doc.dataset,
                        doc.chunk_index,
                        doc.page,
                        doc.start,
                        doc.end,
                        doc.text,
                        doc.language,
                        sum(bag.values()),
                        tids.tobytes(),
                        tfs.tobytes(),
                    )
                )
            conn.executemany(
                f"INSERT INTO chunks({_COLUMNS.replace('entry_id', 'seq, entry_id')}, length,"
                " term_ids, term_freqs) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )

    # -- the in-memory index -------------------------------------------------------------
    def _refresh(self) -> _Cache:
        seq, floor = self._versions()
        if seq == self._cache.seq:
            return self._cache
        with self._lock:
            cache = self._cache
            if seq == cache.seq:
                return cache
            if (0 < cache.seq < floor) or cache.needs_reload():
                cache = _Cache()
            full = cache.seq < 0
            with self._changes_since(cache.seq) as (conn, removed, now):
                for rowid in removed:
                    cache.remove(int(rowid))
                for rowid, cid, eid, ds, idx, page, lang, length, tids, tfs in conn.execute(
                    "SELECT rowid, id, entry_id, dataset, chunk_index, page, language, length,"
                    " term_ids, term_freqs FROM chunks WHERE seq > ? ORDER BY rowid",
                    (cache.seq,),
                ):
                    cache.add(
                        rowid,
                        (cid, eid, ds, idx, page, lang or self.analyzer.code),
                        length,
                        np.frombuffer(tids, dtype=np.int32),
                        np.frombuffer(tfs, dtype=np.uint16),
                    )
                for tid, term in conn.execute(
                    "SELECT id, term FROM terms WHERE id > ? ORDER BY id", (self._max_term_id,)
                ):
                    self._term_ids[term] = tid
                    self._terms.append(term)
                    self._max_term_id = tid
                cache.seq = now
            if full:
                cache.seal()
            self._cache = cache
        return cache

    def _df(self, cache: _Cache, term: str) -> int:
        tid = self._term_ids.get(term)
        return 0 if tid is None else len(cache.postings(tid)[0])

    # -- reads ---------------------------------------------------------------------------
    def expand_query(self, query: str) -> list[str]:
        """The index terms a query searches for, typo-corrected where a term is unknown."""
        cache = self._refresh()
        analyzer = self.query_analyzer(query, cache)
        surface = {analyzer.stem(w): w for w in analyzer.words(query)}
        expanded: dict[str, None] = {}
        for term in analyzer.query_terms(query):
            typos = max_typos(surface.get(term, term))
            if self._df(cache, term) or typos == 0 or not self._terms:
                expanded.setdefault(term, None)
                continue
            matches = process.extract(
                term, self._terms, scorer=OSA.distance, score_cutoff=typos, limit=20
            )
            ranked = sorted(
                ((cand, dist, self._df(cache, cand)) for cand, dist, _ in matches),
                key=lambda m: (m[1], -m[2]),
            )
            corrections = [cand for cand, _dist, df in ranked if df][:_MAX_CORRECTIONS]
            for cand in corrections or [term]:
                expanded.setdefault(cand, None)
        return list(expanded)

    def query_analyzer(self, query: str, cache: _Cache | None = None) -> Analyzer:
        """The analyzer of the query's language, detected among the languages the index holds
        (a short query is uncertain; a language nobody here wrote in cannot be right)."""
        cache = cache or self._refresh()
        held = {lang for lang, n in cache.languages.items() if n > 0}
        if len(held) <= 1:
            return get_analyzer(next(iter(held), self.analyzer.code))
        return get_analyzer(detect_language(query, among=held, default=self.analyzer.code))

    def _scores(self, cache: _Cache, terms: Sequence[str]) -> np.ndarray:
        n, avgdl = cache.stats()
        scores = np.zeros(cache.size, dtype=np.float32)
        for term in terms:
            tid = self._term_ids.get(term)
            if tid is None:
                continue
            docs, tf = cache.postings(tid)
            if not len(docs):
                continue
            idf = math.log(1.0 + (n - len(docs) + 0.5) / (len(docs) + 0.5))
            norm = K1 * (1.0 - B + B * cache.lengths[docs] / avgdl)
            scores[docs] += idf * tf * (K1 + 1.0) / (tf + norm)
        return scores

    def search(
        self,
        query: str,
        top_k: int,
        dataset: str | None = None,
        entries: Collection[str] | None = None,
    ) -> list[KeywordHit]:
        """BM25 over the query's terms; chunks holding the whole query as a phrase come first.

        Ranking exact phrase matches above scattered ones is what a user pasting a sentence
        expects (Meilisearch's proximity and exactness rules do the same).
        """
        if top_k <= 0:
            return []
        terms = self.expand_query(query)
        cache = self._cache
        if not terms or cache.size == 0:
            return []
        scores = self._scores(cache, terms)
        if dataset is not None:
            code = cache.datasets.get(dataset)
            if code is None:
                return []
            scores[cache.dataset_codes[: cache.size] != code] = 0.0
        if entries is not None:
            scores[~entry_mask(cache.rows[: cache.size], entries)] = 0.0
        matched = int(np.count_nonzero(scores))
        if matched == 0:
            return []
        k = min(max(top_k, _PHRASE_CANDIDATES), matched)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        hits = []
        for pos in top:
            cid, eid, ds, idx, page, _lang = cache.rows[pos]
            hits.append(KeywordHit(cid, float(scores[pos]), eid, ds, idx, page))
        return self._lift_phrases(query, hits)[:top_k]

    def _lift_phrases(self, query: str, hits: list[KeywordHit]) -> list[KeywordHit]:
        words = re.findall(r"\w+", query)
        if not hits or not (len(words) >= 2 or (words and is_cjk(words[0]) and len(words[0]) > 1)):
            return hits
        # The words as typed, in order, separated only by spaces or punctuation. CJK has no
        # word boundaries: a phrase may start or end inside a run of characters.
        start = "" if is_cjk(words[0][0]) else r"\b"
        end = "" if is_cjk(words[-1][-1]) else r"\b"
        body = r"\W+".join(map(re.escape, words))
        pattern = re.compile(start + body + end, re.IGNORECASE)
        texts = self.get_docs([h.id for h in hits[:_PHRASE_CANDIDATES]])
        lift = hits[0].score
        lifted, rest = [], []
        for hit in hits:
            doc = texts.get(hit.id)
            if doc is not None and pattern.search(doc.text):
                lifted.append(replace(hit, score=hit.score + lift))
            else:
                rest.append(hit)
        return lifted + rest

    def get_docs(self, ids: Sequence[str]) -> dict[str, KeywordDoc]:
        out: dict[str, KeywordDoc] = {}
        conn = self._conn()
        ids = list(ids)
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            marks = ",".join("?" * len(batch))
            for row in conn.execute(f"SELECT {_COLUMNS} FROM chunks WHERE id IN ({marks})", batch):
                out[row[0]] = KeywordDoc(*row)
        return out

    def entry_docs(self, entry_id: str) -> list[KeywordDoc]:
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM chunks WHERE entry_id=? ORDER BY chunk_index", (entry_id,)
        )
        return [KeywordDoc(*r) for r in rows]

    def count(self, entry_id: str | None = None) -> int:
        conn = self._conn()
        if entry_id is None:
            return int(conn.execute("SELECT count(*) FROM chunks").fetchone()[0])
        sql = "SELECT count(*) FROM chunks WHERE entry_id=?"
        return int(conn.execute(sql, (entry_id,)).fetchone()[0])

    def counts_by_entry(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT entry_id, count(*) FROM chunks GROUP BY entry_id")
        return {eid: int(c) for eid, c in rows}
