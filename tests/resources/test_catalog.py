"""Contract tests of the catalog: the same suite on SQLite (embedded) and PostgreSQL (cluster:
a database and role made for the test's tenant, schema by the Alembic migrations)."""

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from resources.catalog import AuditRecord, Catalog, EntryStatus, ManifestRecord, sqlite_engine
from resources.migrate import current, upgrade
from resources.tenancy import InvalidTenantError, TenantId, validate_dataset
from resources.vectors import VectorSpace

HEAD = "0008"


def _add(catalog, uri="file:///a.pdf", sha="s1"):
    return catalog.add_entry(
        dataset="default",
        source_uri=uri,
        source_name="a.pdf",
        media_type="application/pdf",
        size=10,
        sha256=sha,
        object_key="raw/x",
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def bare_catalog(request, tmp_path):
    """A tenant's catalog whose database exists but holds no tables yet."""
    if request.param == "sqlite":
        cat = Catalog.embedded(TenantId("acme"), tmp_path / "catalog.db")
    else:
        from resources.postgres import tenant_engine

        provisioner = request.getfixturevalue("postgres")
        tenant = TenantId(f"t-{uuid.uuid4().hex[:12]}")
        provisioner.create(tenant)
        provisioner.create(tenant)  # idempotent
        cat = Catalog(tenant, tenant_engine(provisioner.describe(tenant).url))

        def retire():
            cat.close()
            assert provisioner.drop(tenant)
            assert not provisioner.exists(tenant)

        request.addfinalizer(retire)
    return cat


@pytest.fixture
def catalog(bare_catalog):
    bare_catalog.create()
    bare_catalog.create()  # idempotent
    assert current(bare_catalog.engine) == HEAD
    return bare_catalog


def _audit_columns(catalog):
    return {c["name"] for c in inspect(catalog.engine).get_columns("audit_log")}


def test_a_catalog_at_0001_is_upgraded_and_keeps_its_audit_rows(bare_catalog):
    """0002 adds audit_log.client_request_id to a catalog made by the previous release; the
    rows it holds survive, with no client id. Its downgrade takes the column away again."""
    from alembic import command

    from resources.migrate import _config

    upgrade(bare_catalog.engine, "0001")
    assert current(bare_catalog.engine) == "0001"
    assert "client_request_id" not in _audit_columns(bare_catalog)
    with bare_catalog.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO audit_log (at, request_id, principal, action, outcome) "
                 "VALUES (:at, 'before', 'key:k1', 'search', 'ok')"),
            {"at": datetime.now(UTC)},
        )  # fmt: skip
    bare_catalog.create()  # what provisioning runs: migrations to the newest revision
    assert current(bare_catalog.engine) == HEAD
    assert "client_request_id" in _audit_columns(bare_catalog)
    bare_catalog.audit.write(
        AuditRecord("after", "key:k1", "search", "ok", client_request_id="theirs-1")
    )
    records = bare_catalog.audit.records()
    assert [(r.request_id, r.client_request_id) for r in records] == [
        ("after", "theirs-1"),
        ("before", None),
    ]
    with bare_catalog.engine.begin() as conn:
        command.downgrade(_config(conn), "0001")
    assert current(bare_catalog.engine) == "0001"
    assert "client_request_id" not in _audit_columns(bare_catalog)
    with bare_catalog.engine.connect() as conn:
        kept = conn.execute(text("SELECT request_id FROM audit_log ORDER BY id")).scalars()
        assert list(kept) == ["before", "after"]


def test_a_catalog_from_before_migrations_without_an_audit_log_reaches_head(bare_catalog):
    """Its missing tables come from today's models (audit_log with client_request_id
    already), then it is stamped at 0001: 0002 must find the column there and go on."""
    upgrade(bare_catalog.engine, "0001")
    with bare_catalog.engine.begin() as conn:
        conn.execute(text("DROP TABLE audit_log"))
        conn.execute(text("DROP TABLE alembic_version"))
    bare_catalog.create()
    assert current(bare_catalog.engine) == HEAD
    assert "client_request_id" in _audit_columns(bare_catalog)


def test_entries_statuses_and_pending_marker(catalog):
    assert catalog.pending_marker() is None
    entry = _add(catalog)
    assert entry.status == EntryStatus.PENDING
    marker = catalog.pending_marker()
    assert marker and marker.startswith("1@")
    catalog.set_status([entry.id], EntryStatus.FAILED, "corrupt PDF")
    got = catalog.get_entry(entry.id)
    assert (got.status, got.reason) == ("failed", "corrupt PDF")
    assert catalog.pending_marker() is None
    assert catalog.find_entry("default", "file:///a.pdf").id == entry.id
    assert catalog.status_counts() == {"failed": 1}


def test_claims_are_renewed_released_and_taken_over_when_stale(catalog):
    from datetime import timedelta

    mine, theirs, idle = (_add(catalog, f"file:///{n}.pdf", n) for n in ("m", "t", "i"))
    catalog.set_status([mine.id], EntryStatus.PROCESSING, claim="run-mine")
    catalog.set_status([theirs.id], EntryStatus.PROCESSING, claim="run-theirs")
    assert sorted(catalog.claims()) == ["run-mine", "run-theirs"]
    assert catalog.renew_claim("run-mine") == 1
    # a stale claim counts as waiting work; a fresh one does not
    assert catalog.pending_marker(stale_before=datetime.now(UTC) - timedelta(hours=1)) == (
        catalog.pending_marker()
    )
    assert catalog.pending_marker(stale_before=datetime.now(UTC) + timedelta(seconds=5)) != (
        catalog.pending_marker()
    )
    assert catalog.take_over_stale(datetime.now(UTC) - timedelta(hours=1)) == []
    taken = catalog.take_over_stale(datetime.now(UTC) + timedelta(seconds=5))
    assert sorted(e.id for e in taken) == sorted([mine.id, theirs.id])
    now = {e.id: e for e in catalog.entries()}
    assert now[mine.id].status == EntryStatus.PENDING and "taken over" in now[mine.id].reason
    assert catalog.claims() == []
    # releasing one run's claim leaves another run's alone
    catalog.set_status([mine.id], EntryStatus.PROCESSING, claim="run-mine")
    catalog.set_status([theirs.id], EntryStatus.PROCESSING, claim="run-theirs")
    assert catalog.release_processing("run-mine") == 1
    assert catalog.claims() == ["run-theirs"]
    assert sorted(catalog.unfinished()) == sorted([mine.id, theirs.id, idle.id])


def test_a_tombstone_is_gone_for_readers_and_never_comes_back(catalog):
    entry = _add(catalog)
    other = _add(catalog, "file:///b.pdf", "s2")
    assert catalog.mark_deleting(entry.id).status == EntryStatus.PENDING  # as it was
    assert catalog.get_entry(entry.id) is None
    assert catalog.get_entry(entry.id, deleting=True).status == EntryStatus.DELETING
    assert catalog.find_entry("default", "file:///a.pdf") is None
    assert catalog.find_entry("default", "file:///a.pdf", deleting=True) is not None
    assert catalog.find_by_content("default", "s1") is None
    assert [e.id for e in catalog.entries()] == [other.id]
    assert set(catalog.entry_hashes()) == {other.id}
    assert catalog.status_counts() == {"pending": 1}
    assert catalog.ids_starting("entry", entry.id[:8]) == []
    # a run still working on it cannot bring it back
    catalog.set_status([entry.id], EntryStatus.INDEXED)
    catalog.update_entry(entry.id, status=EntryStatus.PENDING, chunks=3)
    assert catalog.get_entry(entry.id, deleting=True).status == EntryStatus.DELETING
    assert [e.id for e in catalog.deleting()] == [entry.id]
    assert catalog.deleting(older_than=datetime(2000, 1, 1, tzinfo=UTC)) == []
    assert catalog.mark_deleting("no-such-entry") is None
    assert catalog.delete_entry(entry.id)
    assert catalog.deleting() == []


def test_same_source_twice_in_a_dataset_is_refused(catalog):
    _add(catalog)
    with pytest.raises(IntegrityError):
        _add(catalog)


def test_manifest_round_trip_and_delete_cascade(catalog):
    entry = _add(catalog)
    catalog.record_manifest(
        "chunks", [ManifestRecord(entry.id, "h1", "s1", "k", meta={"chunks": 3})]
    )
    catalog.record_manifest(
        "chunks", [ManifestRecord(entry.id, "h2", "s1", "k", meta={"chunks": 4})]
    )
    rec = catalog.manifest("chunks")[entry.id]
    assert (rec.input_hash, rec.meta) == ("h2", {"chunks": 4})
    catalog.record_manifest("ocr_output", [ManifestRecord(entry.id, "h", "s1", error="bad")])
    assert not catalog.manifest("ocr_output")[entry.id].ok
    assert catalog.delete_entry(entry.id)
    assert catalog.manifest("chunks") == {}
    assert catalog.get_entry(entry.id) is None


@pytest.mark.parametrize("bad", ["AB", "ab", "a" * 41, "acme_corp", "../x", "ACME", "", "a b c"])
def test_tenant_ids_are_validated(bad):
    with pytest.raises(InvalidTenantError):
        TenantId(bad)


@pytest.mark.parametrize("bad", ["", "-x", "a/b", "A", "x" * 64])
def test_dataset_names_are_validated(bad):
    with pytest.raises(InvalidTenantError):
        validate_dataset(bad)


def test_datasets_crud(catalog):
    assert [d.name for d in catalog.datasets()] == ["default"]
    made = catalog.create_dataset("manuals", {"description": "d"})
    assert made is not None and made.created_at.tzinfo is not None
    assert catalog.create_dataset("manuals", {}) is None  # exists: nothing changes
    assert catalog.dataset("manuals").config == {"description": "d"}
    assert catalog.update_dataset("manuals", {"description": "e"}).config == {"description": "e"}
    assert catalog.update_dataset("ghost", {}) is None
    assert [d.name for d in catalog.datasets(limit=1, offset=1)] == ["manuals"]
    assert catalog.delete_dataset("manuals") and not catalog.delete_dataset("manuals")


def test_metadata_filter_is_typed(catalog):
    a = _add(catalog, "u:a")
    b = _add(catalog, "u:b")
    c = _add(catalog, "u:c")
    catalog.update_entry(a.id, metadata={"team": "turbo", "rev": 3, "final": True})
    catalog.update_entry(b.id, metadata={"team": "turbo", "rev": "3"})
    catalog.update_entry(c.id, metadata={"team": "wings", "rev": 3.5})
    assert catalog.entry_ids(metadata={"team": "turbo"}) == {a.id, b.id}
    assert catalog.entry_ids(metadata={"rev": 3}) == {a.id}
    assert catalog.entry_ids(metadata={"rev": "3"}) == {b.id}
    assert catalog.entry_ids(metadata={"rev": 3.5}) == {c.id}
    assert catalog.entry_ids(metadata={"final": True}) == {a.id}
    assert catalog.entry_ids(metadata={"team": "turbo", "rev": 3}) == {a.id}
    assert catalog.entry_ids(metadata={"missing": "x"}) == set()


def test_api_keys_and_audit(catalog):
    key = catalog.add_api_key("k1", "ci", "0" * 64, ["read"])
    assert catalog.api_key("k1").scopes == ("read",) and key.revoked_at is None
    assert catalog.revoke_api_key("k1") and catalog.revoke_api_key("k1")
    assert catalog.api_key("k1").revoked_at is not None
    assert not catalog.revoke_api_key("nope")
    for n in range(3):
        catalog.audit.write(AuditRecord(f"r{n}", "key:k1", "search", "ok", tenant="acme"))
    records = catalog.audit.records(limit=2)
    assert [r.request_id for r in records] == ["r2", "r1"]
    assert records[0].at.tzinfo is not None


def test_the_egress_ledger_is_one_bucket_per_principal_shared_by_every_handle(
    catalog: Catalog,
) -> None:
    """Concurrent takes from several handles (replicas) never spend the same bytes twice."""
    from concurrent.futures import ThreadPoolExecutor

    ledger = catalog.egress
    assert ledger.take("alice", 600, 3600, now=1000.0) == 0.0
    assert ledger.take("alice", 3000, 3600, now=1000.0) == 0.0  # exactly what is left
    assert ledger.take("alice", 10, 3600, now=1005.0) == pytest.approx(5.0)  # 5 bytes refilled
    assert ledger.take("bob", 3600, 3600, now=1000.0) == 0.0  # a bucket of its own
    assert ledger.take("alice", 1, 7200, now=1005.0) == 0.0  # a raised budget applies at once
    # Twenty takes of 100 bytes from a bucket of 1,000, side by side: exactly ten succeed.
    with ThreadPoolExecutor(8) as pool:
        waits = list(pool.map(lambda _: ledger.take("carol", 100, 1000, now=50.0), range(20)))
    assert waits.count(0.0) == 10


def _upgrade_in_a_process(url: str) -> bool:
    from resources.migrate import upgrade_if_behind

    if url.startswith("sqlite:///"):
        engine = sqlite_engine(Path(url.removeprefix("sqlite:///")))
    else:
        from resources.postgres import tenant_engine

        engine = tenant_engine(url)
    try:
        return upgrade_if_behind(engine)
    finally:
        engine.dispose()


def test_processes_that_find_the_catalog_behind_at_once_all_end_current(bare_catalog):
    """Replicas rolling out together each open the catalog and find it behind: one migrates,
    the others wait for it (a file lock beside a SQLite file, an advisory lock on
    PostgreSQL) and find nothing left to do; none fails."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    upgrade(bare_catalog.engine, "0001")
    url = bare_catalog.engine.url.render_as_string(hide_password=False)
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        outcomes = list(pool.map(_upgrade_in_a_process, [url] * 4))
    assert outcomes.count(True) >= 1
    assert current(bare_catalog.engine) == HEAD


def test_the_migrations_build_exactly_the_models(tmp_path: Path) -> None:
    """A catalog made by the migrations alone has every table, column and index the models
    declare (SQLite; the PostgreSQL catalogs run the same scripts)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from resources.catalog import Base

    engine = sqlite_engine(tmp_path / "migrated.db")
    upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": False})
        diff = [d for d in compare_metadata(context, Base.metadata)]
    assert diff == [], diff
    engine.dispose()


def test_vector_spaces_switch_in_one_step_and_the_active_one_is_never_forgotten(catalog):
    first = VectorSpace("model-a", 384)
    assert catalog.vector_spaces() == []
    assert catalog.active_space(lambda: first) == first  # a tenant's first space, recorded on use
    assert catalog.vector_spaces() == [(first, True)]
    second = VectorSpace.of("model-b", 256, chunker="model-a")
    catalog.add_vector_space(second)
    catalog.add_vector_space(second, active=True)  # idempotent; never a second active one
    assert catalog.vector_spaces() == [(first, True), (second, False)]
    assert catalog.active_space(lambda: first) == first

    assert not catalog.rechunk_pending()
    catalog.activate_space(second.name, rechunk=True)
    assert catalog.active_space(lambda: first) == second
    assert catalog.rechunk_pending()
    catalog.rechunked("model-b")  # cut as another space's model: still pending
    assert catalog.rechunk_pending()
    catalog.rechunked("model-a")
    assert not catalog.rechunk_pending()
    assert catalog.vector_spaces() == [(second, True), (first, False)]
    catalog.forget_space(second.name)  # the active one stays
    catalog.forget_space(first.name)
    assert catalog.vector_spaces() == [(second, True)]
    assert catalog.active_space(lambda: first).chunked_as == "model-a"  # cuts model-a's chunks
    with pytest.raises(KeyError):
        catalog.activate_space("nothing")
    names = {VectorSpace.of(m, d).name for m in ("model-a", "model-b") for d in (256, 384)}
    assert len(names) == 4  # one collection per model and dimension
