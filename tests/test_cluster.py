"""The foundation's flow in cluster mode on every real server: the PostgreSQL catalog (a
database and role for the tenant), objects on the S3 gateway with MinIO's admin API, vectors
on Qdrant (JWT RBAC), keywords on Meilisearch, and Dagster's runs stored in PostgreSQL
through dagster-postgres."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from alien.layout import raw_key
from alien.local_servers import LocalServers
from resources.settings import AlienSettings
from resources.stores import TenantRegistry
from tests.conftest import CLUSTER_SECRET, PDFS, POSTGRES_ADMIN

ALIEN = str(Path(sys.executable).with_name("alien"))


def _env(home: Path, servers: LocalServers, cluster_database: str) -> dict[str, str]:
    return dict(
        os.environ,
        ALIEN_HOME=str(home),
        DAGSTER_HOME=str(home / "dagster"),
        ALIEN_MODE="cluster",
        ALIEN_POSTGRES_URL=POSTGRES_ADMIN,
        ALIEN_CLUSTER_SECRET=CLUSTER_SECRET,
        ALIEN_CLUSTER_DATABASE=cluster_database,
        **servers.cluster_settings(),
    )


def _alien(env: dict[str, str], *args: str) -> dict:
    proc = subprocess.run(
        [ALIEN, *args, "--json"], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def _settings(env: dict[str, str]) -> AlienSettings:
    keys = {k[len("ALIEN_") :].lower(): v for k, v in env.items() if k.startswith("ALIEN_")}
    return AlienSettings(**keys)  # type: ignore[arg-type]


@pytest.mark.slow
def test_ingest_search_delete_rerun_in_cluster_mode(
    tmp_path: Path, servers: LocalServers, postgres: object, cluster_database: str
) -> None:
    env = _env(tmp_path / "home", servers, cluster_database)
    tenant = f"c-{uuid.uuid4().hex[:10]}"
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "live.pdf").symlink_to(PDFS / "live-manual.en.pdf")
    (docs / "notes.md").write_text("# Wind tunnels\n\nBoundary layer transition on swept wings.\n")

    status = _alien(env, "status")
    assert {s["store"]: s["backend"] for s in status["stores"]} == {
        "catalog": "postgresql",
        "objects": "s3",
        "vectors": "qdrant",
        "keywords": "meilisearch",
        "ocr": "local",
        "platform": "outbox",
    }
    assert all(s["ok"] for s in status["stores"])
    try:
        first = _alien(env, "ingest", str(docs), "--tenant", tenant)
        assert first["entries"]["new"] == 2 and first["run_success"]
        hits = _alien(env, "search", "boundary layer on swept wings", "--tenant", tenant)
        assert hits["results"][0]["source_name"] == "notes.md"

        again = _alien(env, "ingest", str(docs), "--tenant", tenant)
        assert again["entries"]["unchanged"] == 2 and again["run_id"] is None

        (docs / "notes.md").write_text("# Wind tunnels\n\nShock cells in supersonic jets.\n")
        changed = _alien(env, "ingest", str(docs), "--tenant", tenant)
        assert changed["entries"]["updated"] == 1
        assert changed["steps"]["embeddings"]["processed"] == 1

        entries = _alien(env, "entries", "--tenant", tenant)["entries"]
        notes = next(e for e in entries if e["source_name"] == "notes.md")
        assert _alien(env, "check", "--tenant", tenant)["passed"]
        _alien(env, "delete", notes["entry_id"], "--tenant", tenant)
        after = _alien(env, "search", "shock cells supersonic jets", "--tenant", tenant)
        assert all(r["entry_id"] != notes["entry_id"] for r in after["results"])

        # Every store is empty of it: the PostgreSQL catalog, the bucket, both indexes.
        stores = TenantRegistry(_settings(env)).open(tenant)
        assert stores.catalog.engine.dialect.name == "postgresql"
        assert stores.catalog.get_entry(notes["entry_id"]) is None
        assert not stores.objects.exists(raw_key(notes["entry_id"]))
        assert [o.key for o in stores.objects.list() if notes["entry_id"] in o.key] == []
        assert stores.vectors.count(notes["entry_id"]) == 0
        assert stores.keywords.count(notes["entry_id"]) == 0
        assert _alien(env, "check", "--tenant", tenant)["passed"]

        # The Dagster runs went to PostgreSQL, tagged with the tenant's partition.
        dagster = create_engine(POSTGRES_ADMIN.rsplit("/", 1)[0] + "/alien_dagster")
        dagster = create_engine(
            dagster.url.set(drivername="postgresql+psycopg")  # type: ignore[attr-defined]
        )
        with dagster.connect() as conn:
            runs = conn.execute(
                text(
                    "SELECT count(*) FROM runs r JOIN run_tags t ON t.run_id = r.run_id"
                    " WHERE t.key = 'dagster/partition' AND t.value = :tenant"
                ),
                {"tenant": tenant},
            ).scalar()
        dagster.dispose()
        assert runs == 2
        assert not (tmp_path / "home" / "dagster" / "history").exists()  # no SQLite runs
    finally:
        assert TenantRegistry(_settings(env)).drop(tenant)
    registry = TenantRegistry(_settings(env))
    assert not registry.exists(tenant)
