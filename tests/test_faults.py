"""Fault injection: each real server (PostgreSQL, S3, Qdrant, Meilisearch) goes away in the
middle of a run, behind a proxy the test cuts. The run fails naming the store, no document is
blamed for it, and once the server is back the ingestion sensor relaunches the work by itself;
afterwards every store holds exactly what a clean run leaves."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import dagster as dg
import pytest

import alien_assets  # noqa: F401 - the code location first: the sensor's module needs it
from alien import checks
from alien.documents import register_bytes
from alien.runner import DAGSTER_YAML, MARKER, dagster_instance, run_ingest
from resources.catalog import EntryStatus
from resources.dagster_resources import AlienStoresResource
from resources.settings import AlienSettings
from resources.stores import TenantRegistry, TenantStores
from sensors.ingestion import ingestion_sensor
from tests.conftest import PDFS, pdf_pages
from tests.faults import FaultProxy

pytestmark = pytest.mark.slow

# What each store's server is reached by, and the step at whose start it goes away.
PROXIED = {
    "keywords": ("ALIEN_MEILI_URL", "embeddings"),
    "vectors": ("ALIEN_QDRANT_URL", "embeddings"),
    "objects": ("ALIEN_S3_ENDPOINT", "chunks"),
    "catalog": ("ALIEN_POSTGRES_URL", "embeddings"),
}
NAMES = {
    "keywords": "keyword index",
    "vectors": "vector index",
    "objects": "object store",
    "catalog": "catalog",
}


def documents() -> dict[str, bytes]:
    """Real pages, a few chunks each, and a note: small enough to run four times."""
    return {
        "camlidl.pdf": pdf_pages(PDFS / "camlidl-manual.pdf", [0, 1, 2]),
        "gri.pdf": pdf_pages(PDFS / "gri-manual.pdf", [3, 4]),
        "live.pdf": pdf_pages(PDFS / "live-manual.en.pdf", [20, 21]),
        "note.txt": b"Wing flutter at transonic speed was measured in the tunnel.\n" * 20,
    }


def contents(stores: TenantStores) -> dict[str, Any]:
    """Per source name: the chunks both indexes hold (positions and text), and whether the
    vector points are exactly the keyword documents."""
    out = {}
    for entry in stores.catalog.entries():
        docs = sorted(stores.keywords.entry_docs(entry.id), key=lambda d: d.chunk_index)
        out[entry.source_name] = {
            "status": entry.status,
            "chunks": [(d.chunk_index, d.page, d.start, d.end, d.text) for d in docs],
            "vectors_are_keyword_docs": stores.vectors.point_ids(entry.id) == {d.id for d in docs},
        }
    return out


def _ingest_all(stores: TenantStores) -> None:
    for name, data in documents().items():
        register_bytes(stores, data, dataset="default", source_uri=f"mem:{name}", source_name=name)


def _quiet_instance(settings: AlienSettings) -> None:
    """Dagster's own storage in SQLite under the home, apart from the servers under test (as
    the chart's instance is its own database): the run must be able to record its failure."""
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    (settings.dagster_home / "dagster.yaml").write_text(
        DAGSTER_YAML.format(max_runs=1).replace(MARKER + "\n", "")
    )


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What a run with no fault leaves (embedded stores: the same chunks by construction)."""
    home = tmp_path_factory.mktemp("clean")
    settings = AlienSettings(home=home)
    registry = TenantRegistry(settings)
    stores = registry.create("clean")
    _ingest_all(stores)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALIEN_HOME", str(home))
        mp.setenv("DAGSTER_HOME", str(settings.dagster_home))
        outcome = run_ingest(settings, "clean")
    assert outcome.success, outcome.error
    result = contents(stores)
    registry.drop("clean")
    return result


@pytest.fixture
def proxied(
    request: pytest.FixtureRequest, control: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, AlienSettings, FaultProxy]]:
    store = request.param
    variable, _ = PROXIED[store]
    value = control[variable]
    target = value.split("//", 1)[-1].split("@", 1)[-1].split("/", 1)[0]  # host:port
    proxy = FaultProxy(target)
    env = dict(control, **{variable: value.replace(target, proxy.address)})
    env["ALIEN_RETRY_BACKOFF_SECONDS"] = "0.5"
    for key, val in env.items():
        monkeypatch.setenv(key, val)
    settings = AlienSettings()
    _quiet_instance(settings)
    yield store, settings, proxy
    proxy.close()


@pytest.mark.parametrize("proxied", list(PROXIED), indirect=True)
def test_a_server_lost_mid_run_loses_nothing(proxied, clean_run):
    store, settings, proxy = proxied
    _, cut_at = PROXIED[store]
    registry = TenantRegistry(settings)
    tenant = f"fault-{store}"
    stores = registry.create(tenant)
    try:
        _ingest_all(stores)

        def cut_when(step: str, done: int, total: int) -> None:
            if step == cut_at:
                proxy.cut()

        outcome = run_ingest(settings, tenant, listener=cut_when)
        assert not outcome.success
        assert f"the {NAMES[store]} is unavailable" in (outcome.error or ""), outcome.error
        proxy.restore()
        # No document was blamed for the outage.
        statuses = {e.source_name: (e.status, e.reason) for e in stores.catalog.entries()}
        assert all(status != EntryStatus.FAILED for status, _ in statuses.values()), statuses

        # The sensor relaunches the failed work by itself, after its backoff.
        instance = dagster_instance(settings)
        cursor, request = None, None
        deadline = time.monotonic() + 30
        while request is None and time.monotonic() < deadline:
            result = ingestion_sensor(
                dg.build_sensor_context(
                    instance=instance,
                    cursor=cursor,
                    resources={"stores": AlienStoresResource.for_settings(settings)},
                )
            )
            if isinstance(result, dg.SensorResult):
                cursor = result.cursor or cursor
                request = next((r for r in result.run_requests if r.partition_key == tenant), None)
            time.sleep(0.2)
        assert request is not None, "the sensor never relaunched the failed work"
        assert request.run_key.endswith(":retry-1")
        assert request.tags["alien/trigger"] == "ingestion_sensor_retry"

        # The daemon would launch it; the same job, in process here.
        again = run_ingest(settings, tenant)
        assert again.success, again.error
        reasons = {e.source_name: e.reason for e in stores.catalog.entries() if e.reason}
        assert not reasons, reasons
        after = contents(stores)
        assert after == {name: dict(c, status=EntryStatus.INDEXED) for name, c in clean_run.items()}
        assert all(c["vectors_are_keyword_docs"] for c in after.values())
        failed = [r for r in checks.run_checks(stores) if not r.passed]
        assert not failed, failed
        assert stores.catalog.claims() == []
    finally:
        proxy.restore()
        registry.drop(tenant)


# What still answers with one store down: search results carry their text from the keyword
# index, so every search mode needs it; keyword search needs no vector.
SEARCH_NEEDS = {
    "keywords": {"keyword": True, "hybrid": True, "vector": True},
    "vectors": {"keyword": False, "hybrid": True, "vector": True},
}


@pytest.mark.parametrize("proxied", list(SEARCH_NEEDS), indirect=True)
def test_the_data_api_answers_503_for_what_needs_the_missing_store(proxied):
    """A store gone: the operations that need it answer 503 with Retry-After naming it (no
    address); the others go on; readiness names what is down, and all is well once it is back."""
    from fastapi.testclient import TestClient

    from alien.credentials import create_api_key
    from data_api import create_app

    store, settings, proxy = proxied
    settings = settings.model_copy(update={"api_worker": False})
    registry = TenantRegistry(settings)
    tenant = f"fault-api-{store}"
    stores = registry.create(tenant)
    try:
        note = b"Surge margins of centrifugal compressors were measured in the test rig."
        register_bytes(stores, note, dataset="default", source_uri="mem:n", source_name="n.txt")
        assert run_ingest(settings, tenant).success
        key, _ = create_api_key(stores, ["read", "search"])
        auth = {"Authorization": f"Bearer {key}"}
        with TestClient(create_app(settings)) as client:
            deadline = time.monotonic() + 60  # the model loads in the background
            while client.get("/v1/ready").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert client.get("/v1/ready").json() == {"status": "ready", "unavailable": []}
            proxy.cut()
            for mode, needs in SEARCH_NEEDS[store].items():
                answer = client.post(
                    "/v1/search", json={"query": "compressor surge", "mode": mode}, headers=auth
                )
                if not needs:
                    assert answer.status_code == 200 and answer.json()["results"], mode
                    continue
                assert answer.status_code == 503, (mode, answer.text)
                assert answer.headers["Retry-After"].isdigit()
                error = answer.json()["error"]
                assert error["code"] == "store_unavailable" and error["store"] == store
                assert NAMES[store] in error["message"] and "127.0.0.1" not in error["message"]
            listed = client.get("/v1/entries", headers=auth)
            assert listed.status_code == 200 and len(listed.json()["entries"]) == 1
            time.sleep(2.1)  # readiness checks the servers at most every 2 s
            ready = client.get("/v1/ready")
            assert ready.status_code == 503
            assert ready.json() == {"status": "not_ready", "unavailable": [store]}
            proxy.restore()
            time.sleep(2.1)
            assert client.get("/v1/ready").status_code == 200
            for mode in SEARCH_NEEDS[store]:
                again = client.post(
                    "/v1/search", json={"query": "compressor surge", "mode": mode}, headers=auth
                )
                assert again.status_code == 200 and again.json()["results"], mode
        refused = [r for r in stores.catalog.audit.records(limit=50) if r.status_code == 503]
        assert len(refused) == sum(SEARCH_NEEDS[store].values())  # each audited with its status
    finally:
        proxy.restore()
        registry.drop(tenant)


# A run in a process of its own that SIGKILLs itself once ``step`` has reported ``after``
# units of progress (entries, or chunks for embeddings): the kill lands mid-step.
KILLED_RUN = """
import os, signal, sys
from alien.runner import run_ingest
from resources.settings import AlienSettings

step, after = sys.argv[1], int(sys.argv[2])

def kill_at(name, done, total):
    if name == step and done >= after:
        os.kill(os.getpid(), signal.SIGKILL)

run_ingest(AlienSettings(), "killed", listener=kill_at)
sys.exit(3)  # never reached: the kill came first
"""

# A delete that SIGKILLs itself after the vectors went and before the keyword rows do.
KILLED_DELETE = """
import os, signal, sys
from alien.documents import delete_entry
from resources.settings import AlienSettings
from resources.stores import TenantRegistry

stores = TenantRegistry(AlienSettings()).open("killed")
stores.keywords.delete_entries = lambda ids: os.kill(os.getpid(), signal.SIGKILL)
delete_entry(stores, sys.argv[1])
sys.exit(3)
"""


@pytest.fixture
def embedded(tmp_path, monkeypatch) -> Iterator[tuple[AlienSettings, TenantStores]]:
    home = tmp_path / "home"
    monkeypatch.setenv("ALIEN_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    settings = AlienSettings(home=home)
    registry = TenantRegistry(settings)
    stores = registry.create("killed")
    _ingest_all(stores)
    yield settings, stores
    registry.drop("killed")


def _killed(script: str, *args: str) -> None:
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("step", "after"),
    [
        ("ocr_output", 1),
        ("chunks", 2),
        ("embeddings", 1),
        ("vector_index", 2),
        ("keyword_index", 1),
    ],
)
def test_a_run_killed_mid_step_is_finished_by_the_next(embedded, clean_run, step, after):
    """SIGKILL in the middle of each step, then one more ingest and nothing else: the
    stores hold exactly what a clean run leaves, the checks pass, nothing is stuck."""
    settings, stores = embedded
    _killed(KILLED_RUN, step, str(after))
    assert stores.catalog.status_counts().get(EntryStatus.INDEXED, 0) < len(clean_run)
    again = run_ingest(settings, "killed")
    assert again.success, again.error
    assert contents(stores) == {
        name: dict(c, status=EntryStatus.INDEXED) for name, c in clean_run.items()
    }
    assert not [r for r in checks.run_checks(stores) if not r.passed]
    assert stores.catalog.claims() == [] and not stores.catalog.unfinished()


def test_a_delete_killed_half_way_is_finished_by_the_next_run(embedded, clean_run, monkeypatch):
    """The entry is gone for readers at once (a tombstone); the sensor sees the unfinished
    deletion, and the next run removes what the killed delete left."""
    import sensors.ingestion

    settings, stores = embedded
    assert run_ingest(settings, "killed").success
    victim = next(e for e in stores.catalog.entries() if e.source_name == "gri.pdf")
    _killed(KILLED_DELETE, victim.id)
    assert stores.catalog.get_entry(victim.id) is None  # gone for every reader
    assert victim.id not in {e.id for e in stores.catalog.entries()}
    assert stores.vectors.count(victim.id) == 0 and stores.keywords.count(victim.id) > 0
    monkeypatch.setattr(sensors.ingestion, "TOMBSTONE_GRACE", timedelta(0))
    assert sensors.ingestion.work_fingerprint(stores) is not None  # the sensor would run
    again = run_ingest(settings, "killed")
    assert again.success, again.error
    assert again.report("raw_documents").details["deletions_finished"] == 1
    assert stores.keywords.count(victim.id) == 0
    assert stores.catalog.get_entry(victim.id, deleting=True) is None
    assert not stores.objects.exists(victim.object_key)
    expected = {n: dict(c, status=EntryStatus.INDEXED) for n, c in clean_run.items()}
    del expected["gri.pdf"]
    assert contents(stores) == expected
    assert not [r for r in checks.run_checks(stores) if not r.passed]
    assert sensors.ingestion.work_fingerprint(stores) is None
