"""Vector index: one collection per tenant, deterministic point ids, exact cosine search.

``SqliteVectorIndex`` is the embedded backend. Points live in a SQLite file (WAL), so the Data
API and a pipeline run in other processes use the same collection at once; each process keeps
the vectors in a NumPy matrix and catches up incrementally through a change sequence (upserts
and tombstones newer than what it has), so a search after a write reads only what changed.
Exact search over 100,000 x 384 float32 is one matrix-vector product (a few milliseconds).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from threadpoolctl import ThreadpoolController

from resources.changelog import ChangeLoggedSqlite, entry_mask

_BLAS = ThreadpoolController()


@dataclass(frozen=True)
class VectorPoint:
    id: str
    vector: np.ndarray
    entry_id: str
    dataset: str
    chunk_index: int
    page: int | None


@dataclass(frozen=True)
class VectorHit:
    id: str
    score: float
    entry_id: str
    dataset: str
    chunk_index: int
    page: int | None


@dataclass(frozen=True)
class VectorSpace:
    """The vectors of one model (and dimension) for a tenant: one collection of its own.

    A tenant's default space serves every dataset without an embedding model of its own; a
    dataset with one (``dataset``) has spaces of its own. Each scope (the default, or one
    dataset) searches one space, its active one, while the pipeline fills the space of the
    model configured for it; when that one is complete, it becomes active and the old one is
    dropped. ``name`` picks the physical collection: "" for a tenant's first one (the
    collection it always had), else a digest of model, dimension and dataset.
    """

    model: str
    dim: int
    name: str = ""
    # The model whose name the chunks step's configuration carries ("": ``model``). A space
    # made for a model that cuts the same chunks (same tokenizer and window) keeps its
    # predecessor's, so switching to it re-chunks and re-embeds nothing.
    chunker: str = field(default="", compare=False)
    # When the catalog recorded it: a space dropped and made again is another collection.
    created: str = field(default="", compare=False)
    # The dataset whose own model the space holds ("": the tenant's default space).
    dataset: str = ""

    @classmethod
    def of(cls, model: str, dim: int, chunker: str = "", dataset: str = "") -> VectorSpace:
        key = f"{model}\0{dim}" + (f"\0{dataset}" if dataset else "")
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return cls(model, dim, f"m{digest}", chunker, dataset=dataset)

    @property
    def chunked_as(self) -> str:
        return self.chunker or self.model

    def holds(self, model: str, dim: int) -> bool:
        return (self.model, self.dim) == (model, dim)


class VectorDimensionError(ValueError):
    """A vector whose dimension differs from the collection's model dimension."""


def as_vector(vector: np.ndarray, dim: int, what: str) -> np.ndarray:
    """``vector`` as flat float32, or ``VectorDimensionError`` when its size is not ``dim``."""
    vec = np.asarray(vector, dtype=np.float32).reshape(-1)
    if vec.shape[0] != dim:
        raise VectorDimensionError(f"{what} has dimension {vec.shape[0]}, expected {dim}")
    return vec


class VectorIndex(Protocol):
    """A tenant's vector collection (embedded here; a Qdrant collection in cluster mode)."""

    model: str
    dim: int

    def replace_entry(self, entry_id: str, points: Sequence[VectorPoint]) -> None: ...
    def delete_entries(self, entry_ids: Iterable[str]) -> int: ...
    def search(
        self,
        vector: np.ndarray,
        top_k: int,
        dataset: str | None = None,
        entries: Collection[str] | None = None,
        exclude_datasets: Collection[str] = (),
    ) -> list[VectorHit]: ...
    def count(self, entry_id: str | None = None) -> int: ...
    def counts_by_entry(self) -> dict[str, int]: ...
    def point_ids(self, entry_id: str) -> set[str]: ...
    def models(self) -> dict[tuple[str, int], int]: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    entry_id TEXT NOT NULL,
    dataset TEXT NOT NULL,
    chunk_index INTEGER NOT NULL,
    page INTEGER,
    model TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_points_entry ON points(entry_id);
CREATE INDEX IF NOT EXISTS ix_points_seq ON points(seq);
"""


class _Cache:
    """This process's copy of the collection's vectors for one model."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.seq = -1
        self.size = 0
        self.matrix = np.zeros((1024, dim), dtype=np.float32)
        self.valid = np.zeros(1024, dtype=bool)
        self.dataset_codes = np.zeros(1024, dtype=np.int32)
        self.rows: list[tuple[str, str, str, int, int | None]] = []  # id, entry, dataset, ...
        self.position: dict[str, int] = {}
        self.datasets: dict[str, int] = {}

    def _grow(self, need: int) -> None:
        cap = self.matrix.shape[0]
        if need <= cap:
            return
        new_cap = max(need, cap * 2)
        self.matrix = np.resize(self.matrix, (new_cap, self.dim))
        valid = np.zeros(new_cap, dtype=bool)
        valid[:cap] = self.valid
        self.valid = valid
        codes = np.zeros(new_cap, dtype=np.int32)
        codes[:cap] = self.dataset_codes
        self.dataset_codes = codes

    def upsert(self, row: tuple[str, str, str, int, int | None], vector: np.ndarray) -> None:
        pid = row[0]
        pos = self.position.get(pid)
        if pos is None:
            self._grow(self.size + 1)
            pos = self.size
            self.size += 1
            self.rows.append(row)
            self.position[pid] = pos
        else:
            self.rows[pos] = row
        self.matrix[pos] = vector
        self.valid[pos] = True
        self.dataset_codes[pos] = self.datasets.setdefault(row[2], len(self.datasets))

    def remove(self, pid: str) -> None:
        pos = self.position.pop(pid, None)
        if pos is not None:
            self.valid[pos] = False


class SqliteVectorIndex(ChangeLoggedSqlite):
    """Embedded vector collection of one tenant."""

    schema = _SCHEMA
    table = "points"
    key = "id"

    def __init__(self, path: Path, model: str, dim: int) -> None:
        self.model = model
        self.dim = dim
        self._lock = threading.Lock()
        self._cache = _Cache(dim)
        super().__init__(path)

    # -- writes --------------------------------------------------------------------------
    def replace_entry(self, entry_id: str, points: Sequence[VectorPoint]) -> None:
        """Make the entry's points exactly ``points`` in one transaction (idempotent)."""
        rows = []
        for p in points:
            vec = as_vector(p.vector, self.dim, f"point {p.id}")
            rows.append(
                (
                    p.id,
                    p.entry_id,
                    p.dataset,
                    p.chunk_index,
                    p.page,
                    self.model,
                    self.dim,
                    vec.tobytes(),
                )
            )
        with self._write() as (conn, seq):
            existing = {
                r[0] for r in conn.execute("SELECT id FROM points WHERE entry_id=?", (entry_id,))
            }
            self._delete_ids(conn, existing - {r[0] for r in rows}, seq)
            conn.executemany(
                "INSERT INTO points(id, seq, entry_id, dataset, chunk_index, page, model, dim,"
                " vector) VALUES (?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(id) DO UPDATE SET seq=excluded.seq, entry_id=excluded.entry_id,"
                " dataset=excluded.dataset, chunk_index=excluded.chunk_index,"
                " page=excluded.page, model=excluded.model, dim=excluded.dim,"
                " vector=excluded.vector",
                [(r[0], seq, *r[1:]) for r in rows],
            )

    def _delete_ids(self, conn: sqlite3.Connection, ids: Iterable[str], seq: int) -> int:
        ids = list(ids)
        if ids:
            conn.executemany("DELETE FROM points WHERE id=?", [(i,) for i in ids])
            self._tombstone(conn, ids, seq)
        return len(ids)

    # -- reads ---------------------------------------------------------------------------
    def _refresh(self) -> _Cache:
        seq, floor = self._versions()
        if seq == self._cache.seq:
            return self._cache
        with self._lock:
            cache = self._cache
            if 0 < cache.seq < floor:
                cache = _Cache(self.dim)
            with self._changes_since(cache.seq) as (conn, removed, now):
                for pid in removed:
                    cache.remove(str(pid))
                for pid, eid, ds, idx, page, vec in conn.execute(
                    "SELECT id, entry_id, dataset, chunk_index, page, vector FROM points"
                    " WHERE seq > ? AND model = ? AND dim = ?",
                    (cache.seq, self.model, self.dim),
                ):
                    cache.upsert((pid, eid, ds, idx, page), np.frombuffer(vec, dtype=np.float32))
                cache.seq = now
            self._cache = cache
        return cache

    def search(
        self,
        vector: np.ndarray,
        top_k: int,
        dataset: str | None = None,
        entries: Collection[str] | None = None,
        exclude_datasets: Collection[str] = (),
    ) -> list[VectorHit]:
        """The ``top_k`` nearest points, optionally only of ``dataset`` and of ``entries``,
        and none of ``exclude_datasets``."""
        query = as_vector(vector, self.dim, "query")
        cache = self._refresh()
        n = cache.size
        if n == 0 or top_k <= 0:
            return []
        # One BLAS thread: a matrix-vector product gains nothing from more, and OpenBLAS
        # threads left spinning slow down the next query embedding (torch) by 2-8x.
        with _BLAS.limit(limits=1, user_api="blas"):
            scores = cache.matrix[:n] @ query
        mask = cache.valid[:n]
        if dataset is not None:
            code = cache.datasets.get(dataset)
            if code is None:
                return []
            mask = mask & (cache.dataset_codes[:n] == code)
        if entries is not None:
            mask = mask & entry_mask(cache.rows[:n], entries)
        excluded = [cache.datasets[d] for d in exclude_datasets if d in cache.datasets]
        if excluded:
            mask = mask & ~np.isin(cache.dataset_codes[:n], excluded)
        scores = np.where(mask, scores, -np.inf)
        k = min(top_k, int(mask.sum()))
        if k == 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        hits = []
        for pos in top:
            pid, eid, ds, idx, page = cache.rows[pos]
            hits.append(VectorHit(pid, float(scores[pos]), eid, ds, idx, page))
        return hits

    def count(self, entry_id: str | None = None) -> int:
        conn = self._conn()
        if entry_id is None:
            return int(conn.execute("SELECT count(*) FROM points").fetchone()[0])
        return int(
            conn.execute("SELECT count(*) FROM points WHERE entry_id=?", (entry_id,)).fetchone()[0]
        )

    def counts_by_entry(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT entry_id, count(*) FROM points GROUP BY entry_id")
        return {eid: int(c) for eid, c in rows}

    def point_ids(self, entry_id: str) -> set[str]:
        rows = self._conn().execute("SELECT id FROM points WHERE entry_id=?", (entry_id,))
        return {r[0] for r in rows}

    def models(self) -> dict[tuple[str, int], int]:
        rows = self._conn().execute("SELECT model, dim, count(*) FROM points GROUP BY model, dim")
        return {(m, int(d)): int(c) for m, d, c in rows}
