"""The Dagster code location: definitions, a partitioned run through the job, the sensor."""

from __future__ import annotations

import json
import time
import uuid

import dagster as dg
from dagster._core.events import DagsterEventType

from alien.documents import delete_entry, register_bytes
from alien.runner import dagster_instance, run_ingest
from alien_assets import defs
from alien_assets.partitions import TENANTS
from resources.catalog import EntryStatus
from resources.dagster_resources import AlienStoresResource
from sensors.ingestion import ingestion_sensor

ASSETS = ["raw_documents", "ocr_output", "chunks", "embeddings", "vector_index", "keyword_index"]


def test_definitions_load_with_the_lineage_graph():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert set(ASSETS) <= keys
    parents = {
        name: {p.to_user_string() for p in graph.get(dg.AssetKey(name)).parent_keys}
        for name in ASSETS
    }
    assert parents == {
        "raw_documents": set(),
        "ocr_output": {"raw_documents"},
        "chunks": {"ocr_output"},
        "embeddings": {"chunks"},
        "vector_index": {"embeddings"},
        "keyword_index": {"chunks"},
    }
    job = defs.resolve_job_def("ingest")
    assert job.partitions_def.name == TENANTS
    assert all(graph.get(dg.AssetKey(a)).partitions_def.name == TENANTS for a in ASSETS)
    assert {c.name for c in graph.asset_check_keys} == {
        "chunk_counts_agree",
        "vectors_match_model",
        "indexed_entries_have_text",
        "indexes_match_catalog",
        "objects_match_catalog",
    }
    assert defs.resolve_job_def("repair").partitions_def.name == TENANTS


def _check_results(instance, run_id):
    records = instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
    return {
        r.dagster_event.event_specific_data.check_name: r.dagster_event.event_specific_data.passed
        for r in records
    }


def test_job_run_materializes_every_asset_and_checks_pass(settings, tenant):
    register_bytes(
        tenant,
        b"Panel flutter at supersonic speeds.",
        dataset="default",
        source_uri="mem:a",
        source_name="a.txt",
    )
    outcome = run_ingest(settings, tenant.tenant)
    assert outcome.success, outcome.error
    assert sorted(r.step for r in outcome.reports) == sorted(ASSETS)
    instance = dagster_instance(settings)
    run = instance.get_run_by_id(outcome.run_id)
    assert run.tags["dagster/partition"] == "tenant-a"
    for name in ASSETS:
        event = instance.get_latest_materialization_event(dg.AssetKey(name))
        assert event.asset_materialization.partition == "tenant-a"
        assert "seconds" in event.asset_materialization.metadata
    assert _check_results(instance, outcome.run_id) == {
        "chunk_counts_agree": True,
        "vectors_match_model": True,
        "indexed_entries_have_text": True,
        "indexes_match_catalog": True,
        "objects_match_catalog": True,
    }
    # After a delete, the checks still pass on the next run.
    (entry,) = tenant.catalog.entries()
    assert entry.status == EntryStatus.INDEXED
    delete_entry(tenant, entry.id)
    again = run_ingest(settings, tenant.tenant)
    assert all(_check_results(instance, again.run_id).values())


def _evaluate(instance, settings, cursor=None):
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"stores": AlienStoresResource.for_settings(settings)},
    )
    return ingestion_sensor(context)


def test_sensor_launches_nothing_where_data_planes_ingest(settings, registry):
    """Where each tenant's Data API pod runs its own worker, the control plane's sensor only
    registers partitions: the same work is never ingested twice."""
    instance = dg.DagsterInstance.ephemeral()
    busy = registry.create("busy-tenant")
    busy.objects.put_bytes("inbox/new.txt", b"dropped into the inbox")
    pods = settings.model_copy(update={"ingest_in_data_plane": True})
    result = _evaluate(instance, pods)
    assert isinstance(result, dg.SensorResult) and result.run_requests == []
    (partitions,) = result.dynamic_partitions_requests
    assert partitions.partition_keys == ["busy-tenant"]


def test_sensor_requests_one_run_per_tenant_with_work(settings, registry):
    instance = dg.DagsterInstance.ephemeral()
    busy = registry.create("busy-tenant")
    registry.create("idle-tenant")
    busy.objects.put_bytes("inbox/new.txt", b"dropped into the inbox")

    result = _evaluate(instance, settings)
    assert isinstance(result, dg.SensorResult)
    (request,) = result.run_requests
    assert request.partition_key == "busy-tenant"
    assert request.run_key.startswith("busy-tenant:")
    (partitions,) = result.dynamic_partitions_requests
    assert set(partitions.partition_keys) == {"busy-tenant", "idle-tenant"}
    cursor = json.loads(result.cursor)
    assert set(cursor) == {"busy-tenant"}

    instance.add_dynamic_partitions(TENANTS, ["busy-tenant", "idle-tenant"])
    # Same work on the next tick: nothing new is requested.
    assert isinstance(_evaluate(instance, settings, result.cursor), dg.SkipReason)
    # More work: a new run key.
    busy.objects.put_bytes("inbox/second.txt", b"another file")
    later = _evaluate(instance, settings, result.cursor)
    (request2,) = later.run_requests
    assert request2.run_key != request.run_key

    # Entries registered as pending (the API's path) are work too.
    register_bytes(
        busy, b"pending entry", dataset="default", source_uri="mem:p", source_name="p.txt"
    )
    assert _evaluate(instance, settings, later.cursor).run_requests


def test_sensor_relaunches_a_failed_run_after_a_backoff_that_grows(settings, registry):
    """The tenant's latest run failed: no relaunch before its backoff, one after it (with a
    run key of its own), none again for that same failure; a second failure waits longer."""
    from alien.runner import backoff

    instance = dg.DagsterInstance.ephemeral()
    busy = registry.create("busy-tenant")
    register_bytes(busy, b"waiting", dataset="default", source_uri="mem:w", source_name="w.txt")

    def add_failed() -> str:
        run_id = uuid.uuid4().hex
        instance.add_run(
            dg.DagsterRun(
                job_name="ingest",
                run_id=run_id,
                status=dg.DagsterRunStatus.FAILURE,
                tags={"dagster/partition": "busy-tenant"},
            )
        )
        return run_id

    first = _evaluate(instance, settings)  # a first run for the waiting work
    (request,) = first.run_requests
    add_failed()
    slow = settings.model_copy(
        update={"retry_backoff_seconds": 3600.0, "retry_backoff_max_seconds": 10_000.0}
    )
    waiting = _evaluate(instance, slow, first.cursor)
    assert not getattr(waiting, "run_requests", None)  # backing off
    state = json.loads(waiting.cursor)["busy-tenant"]
    assert state["failures"] == 1 and state["retry_at"] > time.time() + 1700
    fast = settings.model_copy(update={"retry_backoff_seconds": 0.01})
    state["retry_at"] = time.time() - 1  # its time has come
    due = _evaluate(instance, fast, json.dumps({"busy-tenant": state}))
    (retry,) = due.run_requests
    assert retry.run_key.endswith(":retry-1") and retry.run_key != request.run_key
    assert retry.tags["alien/trigger"] == "ingestion_sensor_retry"
    assert not getattr(_evaluate(instance, fast, due.cursor), "run_requests", None)  # once
    add_failed()  # the relaunch failed too
    again = _evaluate(instance, slow, due.cursor)
    assert json.loads(again.cursor)["busy-tenant"]["failures"] == 2
    # doubling per failure, capped, with jitter between half and all of it
    assert all(1800 <= backoff(slow, 1) <= 3600 for _ in range(20))
    assert all(3600 <= backoff(slow, 2) <= 7200 for _ in range(20))
    assert backoff(slow, 30) <= 10_000


def test_runs_side_by_side_leave_the_process_logging_alone(settings, registry, monkeypatch):
    """Two tenants' first runs in one process, side by side: Dagster reconfigured logging at
    each run start (dictConfig), which deadlocked them, and both created the instance's
    storage at once, which left it with two Alembic heads. Both runs now finish, and no run
    calls dictConfig when no python_logs are configured."""
    import logging.config
    import threading

    calls: list[object] = []
    original = logging.config.dictConfig
    monkeypatch.setattr(logging.config, "dictConfig", lambda c: (calls.append(c), original(c)))
    tenants = [registry.create(name) for name in ("side-one", "side-two")]
    # No run has opened the instance yet: both threads create its storage at once.
    assert not (settings.dagster_home / "storage").exists()
    for stores in tenants:
        register_bytes(stores, f"Notes of {stores.tenant} on wing flutter.".encode(),
                       dataset="default", source_uri="mem:n", source_name="n.txt")  # fmt: skip
    outcomes: dict[str, object] = {}
    threads = [
        threading.Thread(target=lambda t=t: outcomes.update({t: run_ingest(settings, t)}))
        for t in ("side-one", "side-two")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not any(thread.is_alive() for thread in threads), "the runs deadlocked"
    assert sorted(outcomes) == ["side-one", "side-two"]
    assert all(o.success for o in outcomes.values())  # type: ignore[attr-defined]
    assert calls == []
    for stores in tenants:
        assert {e.status for e in stores.catalog.entries()} == {EntryStatus.INDEXED}


def test_a_retained_tenant_stays_retired_on_the_next_sensor_tick(settings, registry):
    """`alien tenant delete T --retain`: T's data stays, and the sensor neither lists it
    again, nor re-adds its partition, nor ingests what waits in its inbox."""
    from alien.runner import dagster_instance
    from alien.tenants import provision_tenant, retire_tenant

    provision_tenant(settings, "kept-tenant")
    provision_tenant(settings, "live-tenant")
    kept = registry.open("kept-tenant")
    kept.objects.put_bytes("inbox/late.txt", b"arrived after the decision")
    instance = dagster_instance(settings)
    assert instance.has_dynamic_partition(TENANTS, "kept-tenant")
    message, found = retire_tenant(settings, "kept-tenant", "retain")
    assert found and "retained" in message
    assert not instance.has_dynamic_partition(TENANTS, "kept-tenant")
    assert [str(t) for t in registry.list()] == ["live-tenant"]
    registry.open("live-tenant").objects.put_bytes("inbox/new.txt", b"work for the live one")
    result = _evaluate(instance, settings)
    assert isinstance(result, dg.SensorResult)  # it ticked, and saw work...
    assert [r.partition_key for r in result.run_requests] == ["live-tenant"]  # ...not T's
    assert all("kept-tenant" not in r.partition_keys for r in result.dynamic_partitions_requests)
    assert not instance.has_dynamic_partition(TENANTS, "kept-tenant")
    # its data is still there, for whoever decides to bring it back
    assert registry.records(("retained",))[0].tenant == "kept-tenant"


def test_sensor_launches_a_run_when_a_dataset_s_processing_settings_change(settings, registry):
    """Under Dagster nobody notifies a worker: a changed language, chunk window or OCR
    setting is work the sensor sees; a change of the description alone is not."""

    def tick(cursor: str | None) -> tuple[list[dg.RunRequest], str | None]:
        result = _evaluate(instance, settings, cursor)
        if isinstance(result, dg.SkipReason):
            return [], cursor
        return list(result.run_requests or []), result.cursor

    instance = dg.DagsterInstance.ephemeral()
    tenant = registry.create("tuned-tenant")
    requests, cursor = tick(None)
    assert requests == []
    instance.add_dynamic_partitions(TENANTS, ["tuned-tenant"])

    tenant.catalog.update_dataset("default", {"chunk_tokens": 64})
    (request,), cursor = tick(cursor)
    assert request.partition_key == "tuned-tenant"
    # Seen: nothing more on the next ticks, nor for a change that does not touch processing.
    assert tick(cursor)[0] == []
    requests, cursor = tick(cursor)
    assert requests == []
    tenant.catalog.update_dataset("default", {"chunk_tokens": 64, "description": "manuals"})
    assert tick(cursor)[0] == []
    # Taking the override back is a change too.
    tenant.catalog.update_dataset("default", {"description": "manuals"})
    (again,), cursor = tick(cursor)
    assert again.run_key != request.run_key
    assert tick(cursor)[0] == []
