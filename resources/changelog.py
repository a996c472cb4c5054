"""A SQLite file whose writers leave a change log that readers in other processes replay.

Each write transaction takes the next sequence number, stamps the rows it writes with it and
records a tombstone for every row it removes. A reader keeps its own in-memory copy and, before
each query, replays only the rows and tombstones newer than the sequence it has: the embedded
vector and keyword indexes stay exact under concurrent writers without reloading everything.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

import numpy as np

# Past this many tombstones the oldest are dropped; readers older than that reload in full.
TOMBSTONE_KEEP = 50_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tombstones (key NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS ix_tombstones_seq ON tombstones(seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta(key, value) VALUES ('seq', 0), ('tombstone_floor', 0);
"""


class ChangeLoggedSqlite:
    """Base of the embedded indexes: a connection per thread, WAL, a sequence, tombstones."""

    schema = ""
    table = ""  # the table of rows, each with an ``entry_id`` column
    key = ""  # the column that tombstones name

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conn().executescript(_SCHEMA + self.schema)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[tuple[sqlite3.Connection, int]]:
        """One write transaction with its sequence number; rolled back on any error."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'seq'")
            (seq,) = conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
            yield conn, int(seq)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _tombstone(conn: sqlite3.Connection, keys: Iterable[object], seq: int) -> None:
        conn.executemany("INSERT INTO tombstones(key, seq) VALUES (?, ?)", [(k, seq) for k in keys])
        (count,) = conn.execute("SELECT count(*) FROM tombstones").fetchone()
        if count > TOMBSTONE_KEEP:
            conn.execute("DELETE FROM tombstones WHERE seq < ?", (seq,))
            conn.execute("UPDATE meta SET value = ? WHERE key = 'tombstone_floor'", (seq,))

    def _delete_entry_rows(
        self, conn: sqlite3.Connection, entry_ids: Iterable[str], seq: int
    ) -> int:
        removed = 0
        for eid in entry_ids:
            select = f"SELECT {self.key} FROM {self.table} WHERE entry_id=?"
            keys = [k for (k,) in conn.execute(select, (eid,))]
            if keys:
                conn.execute(f"DELETE FROM {self.table} WHERE entry_id=?", (eid,))
                self._tombstone(conn, keys, seq)
                removed += len(keys)
        return removed

    def delete_entries(self, entry_ids: Iterable[str]) -> int:
        """Remove every row of these entries (one transaction); returns how many."""
        ids = list(entry_ids)
        if not ids:
            return 0
        with self._write() as (conn, seq):
            return self._delete_entry_rows(conn, ids, seq)

    def _versions(self) -> tuple[int, int]:
        """(current sequence, oldest sequence whose tombstones are still kept)."""
        values = dict(self._conn().execute("SELECT key, value FROM meta"))
        return int(values["seq"]), int(values["tombstone_floor"])

    @contextlib.contextmanager
    def _changes_since(self, since: int) -> Iterator[tuple[sqlite3.Connection, list[object], int]]:
        """A read snapshot: its connection, the keys removed after ``since``, its sequence.

        Rows newer than ``since`` are read through the connection inside the same snapshot.
        """
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            (seq,) = conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
            select = "SELECT key FROM tombstones WHERE seq > ?"
            removed = [k for (k,) in conn.execute(select, (since,))]
            yield conn, removed, int(seq)
        finally:
            conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def entry_mask(
    rows: list[tuple[str, str, str, int, int | None]], entries: Collection[str]
) -> np.ndarray:
    """True for the cached rows (id, entry id, ...) whose entry is in ``entries``."""
    allowed = entries if isinstance(entries, set | frozenset) else set(entries)
    return np.fromiter((row[1] in allowed for row in rows), dtype=bool, count=len(rows))
