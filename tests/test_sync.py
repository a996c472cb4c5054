"""Metadata-only sync: what the payload may hold, and delivery through the outbox while the
platform is down."""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alien.sync import (
    SCHEMA,
    SNAPSHOT_FIELDS,
    Outbox,
    dataset_summaries,
    drain,
    envelope,
    outbox_for,
    sync_tenants,
)
from resources.catalog import EntryStatus
from resources.settings import AlienSettings
from resources.stores import TenantRegistry, TenantStores

# Text that must never leave the cluster: names, contents, metadata values, object keys.
secret_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=8, max_size=60
)
document = st.fixed_dictionaries(
    {
        "name": secret_text,
        "content": secret_text,
        "meta": st.dictionaries(st.from_regex(r"[a-z]{3,10}", fullmatch=True), secret_text,
                                max_size=3),
        "status": st.sampled_from(EntryStatus.ALL),
        "dataset": st.sampled_from(["default", "contracts"]),
    }
)  # fmt: skip


# What the payload is made of besides the generated data: keys, statuses, names, numbers.
VOCABULARY = " ".join(
    [SCHEMA, "schema cluster messages id generated_at datasets", *SNAPSHOT_FIELDS,
     *EntryStatus.ALL, "default contracts prop-tenant cluster-1 true false null"]
)  # fmt: skip


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(document, min_size=1, max_size=6))
def test_payload_never_carries_content_names_or_keys(docs: list[dict]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        registry = TenantRegistry(AlienSettings(home=Path(tmp)))
        stores = registry.create("prop-tenant")
        stores.catalog.create_dataset("contracts", {"description": "x"})
        secrets: list[str] = []
        for n, doc in enumerate(docs):
            key = f"raw/{n}-{doc['name'].encode().hex()[:16]}"
            stores.objects.put_bytes(key, doc["content"].encode())
            entry = stores.catalog.add_entry(
                dataset=doc["dataset"],
                source_uri=f"upload:{n}:{doc['name']}",
                source_name=doc["name"],
                media_type="text/plain",
                size=len(doc["content"].encode()),
                sha256=f"{n:064x}",
                object_key=key,
                metadata=doc["meta"],
            )
            stores.catalog.set_status([entry.id], doc["status"], reason=doc["content"])
            secrets += [doc["name"], doc["content"], key, entry.id, entry.sha256]
            secrets += list(doc["meta"].values())
        body = envelope("cluster-1", [Outbox(Path(tmp) / "o.db").add(
            "prop-tenant", dataset_summaries(stores))])  # type: ignore[list-item]  # fmt: skip
        registry.drop("prop-tenant")
    wire = json.dumps(body, ensure_ascii=False)
    for value in secrets:
        if value in VOCABULARY or set(value) <= set("0123456789-:T.+ "):
            continue  # it could appear only as the payload's own structure or a number
        assert value not in wire and json.dumps(value)[1:-1] not in wire
    assert body["schema"] == SCHEMA
    for message in body["messages"]:
        for summary in message["datasets"]:
            assert tuple(summary) == SNAPSHOT_FIELDS
            assert summary["dataset"] in ("default", "contracts")
            assert set(summary["entries_by_status"]) == set(EntryStatus.ALL)
            assert all(isinstance(v, int) for v in summary["entries_by_status"].values())
    totals = {s["dataset"]: s["entries"] for s in body["messages"][0]["datasets"]}
    for name in ("default", "contracts"):
        assert totals[name] == sum(d["dataset"] == name for d in docs)


class Platform:
    """A stand-in for the platform's sync endpoint: it records every delivery."""

    def __init__(self) -> None:
        self.deliveries: list[str] = []  # message ids, in arrival order
        self.bodies: list[dict] = []
        self.fail_next = 0  # answer 503 to this many requests (after reading them)
        self.server: ThreadingHTTPServer | None = None
        self.port = 0

    def start(self) -> None:
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if platform.fail_next:
                    platform.fail_next -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                assert self.headers["Authorization"] == "Bearer platform-token"
                platform.bodies.append(body)
                platform.deliveries += [m["id"] for m in body["messages"]]
                self.send_response(202)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def tenant_stores(registry: TenantRegistry) -> Iterator[TenantStores]:
    yield registry.create("sync-tenant")


def _add(stores: TenantStores, n: int) -> None:
    stores.catalog.add_entry(
        dataset="default", source_uri=f"u:{n}", source_name=f"f{n}.txt", media_type="text/plain",
        size=10 * n, sha256=f"{n:064x}", object_key=f"raw/{n}",
    )  # fmt: skip


def test_outbox_survives_the_platform_being_down(tmp_path: Path, tenant_stores: TenantStores):
    outbox = Outbox(tmp_path / "outbox.db")
    platform = Platform()
    platform.start()
    url = platform.url
    platform.stop()  # down: connections are refused

    queued = []
    for n in range(1, 4):
        _add(tenant_stores, n)
        queued.append(outbox.add("sync-tenant", dataset_summaries(tenant_stores)))
    assert outbox.add("sync-tenant", dataset_summaries(tenant_stores)) is None  # unchanged
    report = drain(outbox, url, "platform-token", "c1", batch_size=2, retries=2, backoff=0.01)
    assert report.sent == 0 and report.pending == 3 and report.error

    platform.start()  # back, on the same port
    report = drain(outbox, url, "platform-token", "c1", batch_size=2, backoff=0.01)
    assert (report.sent, report.pending) == (3, 0)
    assert platform.deliveries == [m.id for m in queued]  # all, in order, once each
    assert drain(outbox, url, "platform-token", "c1").sent == 0  # nothing is sent twice
    assert platform.bodies[0]["schema"] == SCHEMA and platform.bodies[0]["cluster"] == "c1"
    last = platform.bodies[-1]["messages"][-1]["datasets"][0]
    assert last["entries"] == 3 and last["bytes"] == 60

    # A refused batch (503 after reading it) is retried with the same message ids, so a
    # platform that keeps ids once sees each message once.
    _add(tenant_stores, 4)
    message = outbox.add("sync-tenant", dataset_summaries(tenant_stores))
    platform.fail_next = 1
    report = drain(outbox, url, "platform-token", "c1", backoff=0.01)
    assert report.sent == 1 and platform.deliveries.count(message.id) == 1  # type: ignore[union-attr]
    platform.stop()


def test_without_a_platform_url_the_outbox_file_is_the_record(
    tenant_stores: TenantStores,
) -> None:
    from alien.sync import outbox_for, sync_tenants

    settings = tenant_stores.settings
    assert settings.platform_url is None
    _add(tenant_stores, 1)
    report = sync_tenants(settings, [tenant_stores])
    assert report.pending == 1 and report.sent == 0
    assert (settings.system_dir / "outbox.db").is_file()
    assert outbox_for(settings).pending(10)[0].body["datasets"][0]["entries"] == 1


def test_change_sensor_requests_a_sync_only_on_change(
    tenant_stores: TenantStores, monkeypatch
) -> None:
    from resources.dagster_resources import AlienStoresResource
    from sensors.metadata_sync import metadata_change_sensor

    resource = AlienStoresResource(home=str(tenant_stores.settings.home))
    with dg.instance_for_test() as instance:

        def tick(cursor: str | None = None):  # type: ignore[no-untyped-def]
            context = dg.build_sensor_context(
                instance=instance, cursor=cursor, resources={"stores": resource}
            )
            return metadata_change_sensor(context)

        # No platform: the summaries go to the outbox, and no run clutters the runs list.
        first = tick()
        assert isinstance(first, dg.SensorResult) and not first.run_requests
        assert "queued" in (first.skip_reason.skip_message or "")  # type: ignore[union-attr]
        assert outbox_for(tenant_stores.settings).counts()["pending"] == 1
        # A platform to send to: a run, on change only.
        monkeypatch.setenv("ALIEN_PLATFORM_URL", "http://127.0.0.1:9")
        resource = AlienStoresResource(home=str(tenant_stores.settings.home))
        _add(tenant_stores, 7)
        changed = tick(first.cursor)
        assert isinstance(changed, dg.SensorResult) and len(changed.run_requests or []) == 1
        assert changed.run_requests[0].tags["alien/changed"] == "sync-tenant"  # type: ignore[index]
        assert isinstance(tick(changed.cursor), dg.SkipReason)


def test_the_schedule_runs_only_when_messages_wait(tenant_stores: TenantStores, monkeypatch):
    from resources.dagster_resources import AlienStoresResource
    from sensors.metadata_sync import metadata_sync_schedule

    with dg.instance_for_test() as instance:

        def evaluate():  # type: ignore[no-untyped-def]
            resource = AlienStoresResource(home=str(tenant_stores.settings.home))
            context = dg.build_schedule_context(instance=instance, resources={"stores": resource})
            return metadata_sync_schedule(context)

        assert isinstance(evaluate(), dg.SkipReason)  # nothing queued
        _add(tenant_stores, 1)
        sync_tenants(tenant_stores.settings, [tenant_stores])  # queued; no platform
        assert isinstance(evaluate(), dg.SkipReason)  # no platform: the outbox is the record
        monkeypatch.setenv("ALIEN_PLATFORM_URL", "http://127.0.0.1:9")
        assert isinstance(evaluate(), dg.RunRequest)  # messages wait


def test_sync_job_pushes_to_the_platform(tenant_stores: TenantStores, monkeypatch) -> None:
    from resources.dagster_resources import AlienStoresResource
    from sensors.metadata_sync import metadata_sync_job

    platform = Platform()
    platform.start()
    monkeypatch.setenv("ALIEN_PLATFORM_URL", platform.url)
    monkeypatch.setenv("ALIEN_PLATFORM_TOKEN", "platform-token")
    monkeypatch.setenv("ALIEN_CLUSTER_ID", "cluster-7")
    _add(tenant_stores, 2)
    resource = AlienStoresResource(home=str(tenant_stores.settings.home))
    result = metadata_sync_job.execute_in_process(resources={"stores": resource})
    platform.stop()
    assert result.success
    assert platform.bodies and platform.bodies[0]["cluster"] == "cluster-7"
    summary = platform.bodies[0]["messages"][0]["datasets"][0]
    assert (summary["tenant"], summary["dataset"], summary["entries"]) == (
        "sync-tenant", "default", 1,
    )  # fmt: skip
