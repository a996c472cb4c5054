"""Which errors mean "a store's server did not answer": real clients pointed at a port where
nothing listens, real errors that are not outages."""

from __future__ import annotations

import socket
import sqlite3

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from resources.outages import StoreUnavailable, classify


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _meilisearch(port: int) -> None:
    import meilisearch

    meilisearch.Client(f"http://127.0.0.1:{port}").get_indexes()


def _qdrant(port: int) -> None:
    from qdrant_client import QdrantClient

    QdrantClient(url=f"http://127.0.0.1:{port}", timeout=2).get_collections()


def _s3(port: int) -> None:
    import urllib3
    from minio import Minio

    http = urllib3.PoolManager(retries=urllib3.Retry(total=0))
    Minio(f"127.0.0.1:{port}", "key", "secret", secure=False, http_client=http).list_buckets()


def _postgres(port: int) -> None:
    engine = create_engine(f"postgresql+psycopg://alien@127.0.0.1:{port}/alien")
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


@pytest.mark.parametrize(
    ("call", "store"),
    [(_meilisearch, "keywords"), (_qdrant, "vectors"), (_s3, "objects"), (_postgres, "catalog")],
)
def test_a_refused_connection_is_the_store_unavailable(call, store):
    import resources.catalog
    import resources.meili
    import resources.qdrant
    import resources.s3objects  # noqa: F401

    with pytest.raises(Exception) as caught:
        call(_closed_port())
    outage = classify(caught.value)
    assert isinstance(outage, StoreUnavailable)
    assert outage.store == store
    assert outage.detail.lower() == "connection refused"
    assert "127.0.0.1" not in outage.public


def test_errors_that_are_not_outages_are_left_alone(tmp_path):
    import resources.catalog  # noqa: F401

    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(OperationalError) as bad_sql, engine.connect() as conn:
        conn.execute(text("SELECT * FROM no_such_table"))
    assert classify(bad_sql.value) is None  # a bug, not an outage
    assert classify(ValueError("bad input")) is None
    assert classify(KeyError("raw/x")) is None


def test_a_sqlite_file_locked_too_long_is_the_catalog_busy(tmp_path):
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.1})
    with pytest.raises(OperationalError) as locked, engine.connect() as conn:
        conn.execute(text("SELECT * FROM t"))
    outage = classify(locked.value)
    assert outage is not None and outage.store == "catalog"
    holder.rollback()
    holder.close()


def test_the_outage_is_found_under_the_errors_that_wrap_it():
    inner = StoreUnavailable("vectors", "timed out")
    try:
        try:
            raise inner
        except StoreUnavailable as err:
            raise RuntimeError("step failed") from err
    except RuntimeError as outer:
        assert classify(outer) is inner
