"""Consistency repair: each store corrupted in turn, the check that compares it with the
catalog fails; `alien repair` (and the Dagster repair job) make every check pass again, and
the tenant holds what a clean run leaves."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import alien_assets  # noqa: F401 - the code location before its modules are used
from alien import checks
from alien.layout import chunks_key, embeddings_key, raw_key, text_key
from alien.repair import diagnose, repair
from alien.runner import dagster_instance, run_ingest
from resources.catalog import EntryStatus
from resources.dagster_resources import AlienStoresResource
from resources.keywords import KeywordDoc
from resources.settings import AlienSettings
from resources.stores import TenantRegistry, TenantStores
from resources.vectors import VectorPoint
from tests.test_faults import contents, documents

pytestmark = pytest.mark.slow
ALIEN = str(Path(sys.executable).with_name("alien"))
STRANGER = "00000000-0000-4000-8000-000000000001"  # an entry id the catalog never had


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One ingested tenant; each test works on a copy of its home."""
    home = tmp_path_factory.mktemp("prepared") / "home"
    settings = AlienSettings(home=home)
    registry = TenantRegistry(settings)
    stores = registry.create("acme")
    from alien.documents import register_bytes

    for name, data in documents().items():
        register_bytes(stores, data, dataset="default", source_uri=f"mem:{name}", source_name=name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALIEN_HOME", str(home))
        mp.setenv("DAGSTER_HOME", str(settings.dagster_home))
        assert run_ingest(settings, "acme").success
    clean = contents(stores)
    registry.forget("acme")
    return home, clean


@pytest.fixture
def tenant(prepared, tmp_path, monkeypatch) -> Iterator[tuple[AlienSettings, TenantStores]]:
    source, _ = prepared
    home = tmp_path / "home"
    shutil.copytree(source, home)
    monkeypatch.setenv("ALIEN_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    settings = AlienSettings(home=home)
    registry = TenantRegistry(settings)
    yield settings, registry.open("acme")
    registry.forget("acme")


def _entry(stores: TenantStores, name: str = "camlidl.pdf") -> str:
    return next(e.id for e in stores.catalog.entries() if e.source_name == name)


def _stray_point(stores: TenantStores) -> None:
    vector = np.ones(stores.embedder.dimension, dtype=np.float32)
    stores.vectors.replace_entry(
        STRANGER,
        [VectorPoint("00000000-0000-4000-8000-0000000000aa", vector, STRANGER, "default", 0, 1)],
    )


def _stray_doc(stores: TenantStores) -> None:
    stores.keywords.replace_entry(
        STRANGER,
        [
            KeywordDoc(
                "00000000-0000-4000-8000-0000000000bb",
                STRANGER,
                "default",
                0,
                1,
                0,
                9,
                "stray text",
            )
        ],
    )


# name -> (corruption, the check it breaks, the source name that is gone afterwards)
CORRUPTIONS: dict[str, tuple[Callable[[TenantStores], object], str, str | None]] = {
    "vectors lost": (
        lambda s: s.vectors.delete_entries([_entry(s)]), "indexes_match_catalog", None),
    "keyword rows lost": (
        lambda s: s.keywords.delete_entries([_entry(s)]), "indexes_match_catalog", None),
    "stray vector": (_stray_point, "indexes_match_catalog", None),
    "stray keyword row": (_stray_doc, "indexes_match_catalog", None),
    "page text lost": (
        lambda s: s.objects.delete(text_key(_entry(s))), "objects_match_catalog", None),
    "chunks lost": (
        lambda s: s.objects.delete(chunks_key(_entry(s))), "objects_match_catalog", None),
    "embeddings lost": (
        lambda s: s.objects.delete(embeddings_key(_entry(s))), "objects_match_catalog", None),
    "stray object": (
        lambda s: s.objects.put_bytes(raw_key(STRANGER), b"stray"), "objects_match_catalog", None),
    "original lost": (
        lambda s: s.objects.delete(raw_key(_entry(s))), "objects_match_catalog", "camlidl.pdf"),
    "catalog row lost": (
        lambda s: s.catalog.delete_entry(_entry(s)), "indexes_match_catalog", "camlidl.pdf"),
}  # fmt: skip


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupted_store_fails_its_check_and_repair_puts_it_right(tenant, prepared, corruption):
    settings, stores = tenant
    _, clean = prepared
    corrupt, broken, gone = CORRUPTIONS[corruption]
    assert all(r.passed for r in checks.run_checks(stores))
    corrupt(stores)
    failing = {r.name for r in checks.run_checks(stores) if not r.passed}
    assert broken in failing

    report = repair(stores)
    assert report.before != _nothing()  # what repair found, as it reports it
    outcome = run_ingest(settings, "acme")
    assert outcome.success, outcome.error
    results = checks.run_checks(stores)
    assert all(r.passed for r in results), [r for r in results if not r.passed]
    expected = {n: dict(c, status=EntryStatus.INDEXED) for n, c in clean.items()}
    if gone is not None:
        del expected[gone]
    after = contents(stores)
    if corruption == "original lost":  # its entry fails, saying why; its rows are gone
        failed = after.pop(gone)
        assert failed["status"] == EntryStatus.FAILED and failed["chunks"] == []
        entry = next(e for e in stores.catalog.entries() if e.source_name == gone)
        assert "original file missing" in (entry.reason or "")
    assert after == expected
    assert diagnose(stores).summary() == _nothing()
    # Repair again: nothing to do.
    again = repair(stores)
    assert again.entries_to_redo == 0 and again.objects_removed == 0
    assert sum(again.rows_removed.values()) == 0


def _nothing() -> dict:
    return {
        "index_mismatch": {"vectors": 0, "keywords": 0},
        "index_orphans": {"vectors": 0, "keywords": 0},
        "missing_outputs": {"ocr_output": 0, "chunks": 0, "embeddings": 0},
        "missing_originals": 0,
        "orphan_objects": 0,
    }


def test_alien_repair_on_the_command_line(tenant, prepared):
    """`alien repair --tenant T --json`: what it found and did, and the checks passing."""
    _, stores = tenant
    stores.vectors.delete_entries([_entry(stores)])
    _stray_doc(stores)
    proc = subprocess.run(
        [ALIEN, "repair", "--tenant", "acme", "--json"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    body = json.loads(proc.stdout)
    assert body["found"]["index_mismatch"] == {"vectors": 1, "keywords": 0}
    assert body["found"]["index_orphans"] == {"vectors": 0, "keywords": 1}
    assert body["rows_removed"] == {"vectors": 0, "keywords": 1}
    assert body["redone"] == {"vector_index": 1}
    assert body["passed"] is True and body["run_id"]
    assert all(c["passed"] for c in body["checks"])


def test_the_dagster_repair_job_marks_the_work_for_the_sensor(tenant):
    """The `repair` job removes orphans and leaves the lost outputs pending: the ingestion
    sensor's fingerprint changes, and its ingest run makes them again."""
    from alien_assets import defs
    from sensors.ingestion import work_fingerprint

    settings, stores = tenant
    stores.objects.delete(chunks_key(_entry(stores, "gri.pdf")))
    stores.objects.put_bytes(raw_key(STRANGER), b"stray")
    assert work_fingerprint(stores) is None
    result = defs.resolve_job_def("repair").execute_in_process(
        instance=dagster_instance(settings),
        partition_key="acme",
        resources={"stores": AlienStoresResource.for_settings(settings)},
    )
    assert result.success
    assert not stores.objects.exists(raw_key(STRANGER))
    assert work_fingerprint(stores) is not None  # the sensor launches the ingest run
    assert run_ingest(settings, "acme").success
    assert all(r.passed for r in checks.run_checks(stores))


def test_repair_on_the_real_servers(control, monkeypatch):
    """Cluster mode: Qdrant loses an entry's points, Meilisearch another's documents, S3 a
    chunks object and gains a stray one; the checks see each, repair makes them pass."""
    for key, value in control.items():
        monkeypatch.setenv(key, value)
    settings = AlienSettings()
    registry = TenantRegistry(settings)
    stores = registry.create("repair-cluster")
    try:
        from alien.documents import register_bytes

        for name, data in documents().items():
            register_bytes(stores, data, dataset="default", source_uri=f"mem:{name}",
                           source_name=name)  # fmt: skip
        assert run_ingest(settings, "repair-cluster").success
        clean = contents(stores)
        stores.vectors.delete_entries([_entry(stores, "camlidl.pdf")])
        stores.keywords.delete_entries([_entry(stores, "gri.pdf")])
        stores.objects.delete(chunks_key(_entry(stores, "live.pdf")))
        stores.objects.put_bytes(raw_key(STRANGER), b"stray")
        found = diagnose(stores).summary()
        assert found["index_mismatch"] == {"vectors": 1, "keywords": 1}
        assert found["missing_outputs"]["chunks"] == 1 and found["orphan_objects"] == 1
        assert {r.name for r in checks.run_checks(stores) if not r.passed} >= {
            "indexes_match_catalog",
            "objects_match_catalog",
        }
        repair(stores)
        assert run_ingest(settings, "repair-cluster").success
        assert all(r.passed for r in checks.run_checks(stores))
        assert contents(stores) == clean
    finally:
        registry.drop("repair-cluster")
