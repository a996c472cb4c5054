"""Schema migrations of a tenant's catalog (Alembic), run per tenant database.

``upgrade`` brings one catalog to the newest revision. A catalog made before migrations
existed (tables present, no ``alembic_version``) gets the baseline's missing tables and is
stamped at the baseline, so it is upgraded rather than recreated.
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).with_name("migrations")
BASELINE = "0001"


def _config(connection: object) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


# Any fixed number: the advisory lock that serializes migrations of one PostgreSQL database.
_MIGRATION_LOCK = 0x616C69656E  # "alien"


# Alembic's ``op`` and ``context`` are module globals: one migration per process at a time.
_IN_PROCESS = threading.Lock()


@contextlib.contextmanager
def _one_at_a_time(engine: Engine) -> Iterator[None]:
    """Serialize migrations of one catalog: between threads of this process, and between
    processes (a file lock beside a SQLite file; PostgreSQL takes an advisory lock inside
    the migration's own transaction)."""
    with _IN_PROCESS:
        database = engine.url.database
        if engine.dialect.name != "sqlite" or not database or database == ":memory:":
            yield
            return
        with open(f"{database}.migrate-lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the catalog to ``revision``. Several processes may find it behind at once
    (replicas rolling out): one migrates, the others wait and then find nothing to do."""
    with _one_at_a_time(engine), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        tables = set(inspect(connection).get_table_names())
        config = _config(connection)
        if "alembic_version" not in tables and "entries" in tables:
            from resources.catalog import Base

            Base.metadata.create_all(connection)  # the baseline's tables it lacks
            command.stamp(config, BASELINE)
        command.upgrade(config, revision)


@lru_cache(maxsize=1)
def head() -> str | None:
    """The newest revision of the migrations shipped with this code."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config(None)).get_current_head()


def upgrade_if_behind(engine: Engine) -> bool:
    """Upgrade a catalog made by older code (one query when it is current); whether it was."""
    if current(engine) == head():
        return False
    upgrade(engine)
    return True


def current(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
