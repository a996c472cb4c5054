import pytest

from resources.catalog import Catalog, EntryStatus, ManifestRecord
from resources.tenancy import InvalidTenantError, TenantId, validate_dataset


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


@pytest.fixture
def catalog(tmp_path):
    cat = Catalog.embedded(TenantId("acme"), tmp_path / "catalog.db")
    cat.create()
    cat.create()  # idempotent
    return cat


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


def test_same_source_twice_in_a_dataset_is_refused(catalog):
    _add(catalog)
    with pytest.raises(Exception, match="UNIQUE"):
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
