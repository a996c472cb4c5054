"""Requests that are wrong in every way get a 4xx with a clear code and change nothing;
uploads are idempotent; the audit log is part of every request; limits hold."""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from data_api import create_app
from tests.conftest import PDFS
from tests.data_api.conftest import World, api_settings

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x00\x00\x00\x00"
    b":~\x9bU\x00\x00\x00\nIDATx\x9cc`\x00\x00\x00\x02\x00\x01H\xaf\xa4q\x00\x00\x00\x00IEND"
    b"\xaeB`\x82"
)


def _snapshot(world: World) -> tuple[list[tuple[str, str, str]], list[str], int, int]:
    """What tenant A holds: entries, object keys, vector and keyword counts."""
    stores = world.a
    entries = [(e.id, e.sha256, e.status) for e in stores.catalog.entries()]
    objects = sorted(o.key for o in stores.objects.list())
    return entries, objects, stores.vectors.count(), stores.keywords.count()


def _multipart(name: bytes, data: bytes, content_type: bytes = b"text/plain") -> tuple[bytes, str]:
    """A multipart body written by hand, so the file name can hold any bytes."""
    boundary = "alien-test-boundary"
    body = (
        f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="file"; filename="'
        + name
        + b'"\r\nContent-Type: '
        + content_type
        + b"\r\n\r\n"
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


BAD_UPLOADS: list[tuple[str, dict[str, Any], int, str]] = [
    ("json-body", {"json": {"file": "x"}}, 415, "unsupported_media_type"),
    (
        "pdf-claim-text-bytes",
        {"files": {"file": ("a.pdf", b"just some text", "application/pdf")}},
        415,
        "media_type_mismatch",
    ),
    (
        "png-bytes-claim-text",
        {"files": {"file": ("a.txt", PNG, "text/plain")}},
        415,
        "media_type_mismatch",
    ),
    (
        "binary-blob-named-txt",
        {"files": {"file": ("a.txt", b"\x00\x01\x02binary" * 50, "application/octet-stream")}},
        415,
        "media_type_mismatch",
    ),
    (
        "blob-named-pdf",
        {"files": {"file": ("a.pdf", b"\x07\x00garbage" * 50, "application/octet-stream")}},
        415,
        "media_type_mismatch",
    ),
    (
        "zip",
        {"files": {"file": ("a.zip", b"PK\x03\x04" + b"\x00" * 64, "application/zip")}},
        415,
        "unsupported_media_type",
    ),
    (
        "path-name",
        {"files": {"file": ("../../etc/passwd", b"x y z", "text/plain")}},
        400,
        "invalid_file_name",
    ),
    (
        "backslash-name",
        {"files": {"file": ("a\\b.txt", b"x y z", "text/plain")}},
        400,
        "invalid_file_name",
    ),
    *(
        (
            f"name-{kind}",
            {"files": {"file": (name, b"x y z", "text/plain")}},
            400,
            "invalid_file_name",
        )
        for kind, name in (
            ("bidi-override", "invoice\u202efdp.txt"),
            ("zero-width", "re\u200bport.txt"),
            ("bom", "\ufeffnotes.txt"),
        )
    ),
    ("empty-file", {"files": {"file": ("e.txt", b"", "text/plain")}}, 422, "empty_file"),
    (
        "no-file",
        {"data": {"dataset": "default"}, "files": {"other": ("x", b"1")}},
        422,
        "unknown_field",
    ),
    (
        "bad-metadata",
        {"data": {"metadata": "{not json"}, "files": {"file": ("m.txt", b"words", "text/plain")}},
        422,
        "invalid_metadata",
    ),
    (
        "metadata-nested",
        {
            "data": {"metadata": '{"a": {"b": 1}}'},
            "files": {"file": ("m.txt", b"words", "text/plain")},
        },
        422,
        "invalid_metadata",
    ),
    *(
        (
            f"metadata-{name}",
            {
                "data": {"metadata": f'{{"a": {raw}}}'},
                "files": {"file": ("m.txt", b"words", "text/plain")},
            },
            422,
            "invalid_metadata",
        )
        for name, raw in (("nan", "NaN"), ("infinity", "Infinity"), ("overflow", "1e400"))
    ),
    (
        "bad-dataset",
        {"data": {"dataset": "../x"}, "files": {"file": ("m.txt", b"words", "text/plain")}},
        422,
        "invalid_dataset",
    ),
    (
        "unknown-dataset",
        {"data": {"dataset": "nope"}, "files": {"file": ("m.txt", b"words", "text/plain")}},
        404,
        "dataset_not_found",
    ),
]


@pytest.mark.parametrize(
    ("case", "kwargs", "status", "code"), BAD_UPLOADS, ids=[c[0] for c in BAD_UPLOADS]
)
def test_bad_uploads_are_refused_and_change_nothing(
    client: TestClient, world: World, case: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    before = _snapshot(world)
    response = client.post("/v1/entries", headers=world.auth("a"), **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert _snapshot(world) == before
    record = world.a.catalog.audit.records(limit=1)[0]
    assert (record.action, record.status_code) == ("upload_entry", status)


@pytest.mark.parametrize(
    "name", [b"bad\xff\xfename.txt", b"tab\tname.txt", b"new\nline.txt", b"/abs/path.txt"]
)
def test_unclean_file_names_are_400(client: TestClient, world: World, name: bytes) -> None:
    before = _snapshot(world)
    body, content_type = _multipart(name, b"plain words")
    headers = {**world.auth("a"), "Content-Type": content_type}
    response = client.post("/v1/entries", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] in ("invalid_file_name", "malformed_multipart")
    assert _snapshot(world) == before


BAD_REQUESTS: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    ("malformed-json", "POST", "/v1/search", {"content": b'{"query": "x",'}, 422, "malformed_json"),
    (
        "unknown-field",
        "POST",
        "/v1/search",
        {"json": {"query": "x", "colour": "red"}},
        422,
        "invalid_request",
    ),
    (
        "huge-top-k",
        "POST",
        "/v1/search",
        {"json": {"query": "x", "top_k": 10**9}},
        422,
        "top_k_too_large",
    ),
    (
        "bad-mode",
        "POST",
        "/v1/search",
        {"json": {"query": "x", "mode": "magic"}},
        422,
        "invalid_request",
    ),
    ("empty-query", "POST", "/v1/search", {"json": {"query": ""}}, 422, "invalid_request"),
    ("blank-query", "POST", "/v1/search", {"json": {"query": " \t\n "}}, 422, "invalid_request"),
    ("bad-dataset-name", "GET", "/v1/datasets/Not%20Valid", {}, 422, "invalid_request"),
    (
        "dataset-unknown-field",
        "POST",
        "/v1/datasets",
        {"json": {"name": "ok", "owner": "x"}},
        422,
        "invalid_request",
    ),
    *(
        (
            f"dataset-config-{label}",
            "POST",
            "/v1/datasets",
            {"json": {"name": "ok", "config": config}},
            422,
            "invalid_request",
        )
        for label, config in (
            ("language", {"language": "xx"}),
            ("chunk-tokens", {"chunk_tokens": 4}),
            ("ocr-engine", {"ocr_engine": "abbyy"}),
            ("ocr-languages", {"ocr_languages": "eng;rm -rf /"}),
            # a model this machine does not hold (never downloaded), a variant never built
            ("embedding-model", {"embedding_model": "/nowhere/paraphrase-multilingual"}),
            ("embedding-variant", {"embedding_model": "all-MiniLM-L6-v2@fp8"}),
            ("embedding-model-long", {"embedding_model": "0" * 500}),  # no file system takes it
        )
    ),
    (
        "dataset-exists",
        "POST",
        "/v1/datasets",
        {"json": {"name": "default"}},
        409,
        "dataset_exists",
    ),
    ("delete-default", "DELETE", "/v1/datasets/default", {}, 409, "dataset_protected"),
    ("page-too-large", "GET", "/v1/entries?limit=1000", {}, 422, "page_too_large"),
    ("bad-status", "GET", "/v1/entries?status=lost", {}, 422, "invalid_request"),
    ("unknown-route", "GET", "/v1/everything", {}, 404, "not_found"),
    ("wrong-method", "PUT", "/v1/search", {"json": {}}, 405, "method_not_allowed"),
    ("long-entry-id", "GET", "/v1/entries/" + "x" * 100, {}, 422, "invalid_request"),
    # Values JSON cannot hold: once stored, they broke every metadata-filtered search (500).
    *(
        (
            f"search-metadata-{name}",
            "POST",
            "/v1/search",
            {"content": b'{"query": "x", "metadata": {"a": %s}}' % raw},
            422,
            "invalid_request",
        )
        for name, raw in (
            ("nan", b"NaN"),
            ("infinity", b"-Infinity"),
            ("overflow", b"1e400"),
        )
    ),
]


@pytest.mark.parametrize(
    ("case", "method", "path", "kwargs", "status", "code"),
    BAD_REQUESTS,
    ids=[c[0] for c in BAD_REQUESTS],
)
def test_bad_requests_get_a_clear_4xx(
    client: TestClient,
    world: World,
    case: str,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    code: str,
) -> None:
    before = _snapshot(world)
    headers = {**world.auth("a")}
    if "content" in kwargs:
        headers["Content-Type"] = "application/json"
    response = client.request(method, path, headers=headers, **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert _snapshot(world) == before


def test_a_datasets_processing_settings_round_trip(client: TestClient, world: World) -> None:
    config = {"language": "de", "chunk_tokens": 128, "ocr_engine": "tesseract",
              "ocr_languages": "deu+eng",
              "embedding_model": "all-MiniLM-L6-v2@onnx-int8"}  # fmt: skip
    created = client.post(
        "/v1/datasets", json={"name": "akten", "config": config}, headers=world.auth("a")
    )
    assert created.status_code == 201, created.text
    read = client.get("/v1/datasets/akten", headers=world.auth("a")).json()
    assert {k: read["config"][k] for k in config} == config
    # a torch spec is stored the one way spaces are named: the model alone
    torch_spec = {"config": {**config, "embedding_model": "all-MiniLM-L6-v2@torch"}}
    updated = client.patch("/v1/datasets/akten", json=torch_spec, headers=world.auth("a"))
    assert updated.json()["config"]["embedding_model"] == "all-MiniLM-L6-v2"
    client.delete("/v1/datasets/akten", headers=world.auth("a"))


def test_a_processing_setting_change_wakes_the_worker(client: TestClient, world: World) -> None:
    """A new chunk window or OCR language is reprocessed at once under `alien serve`; a new
    description alone starts nothing."""

    class Recorder:
        def __init__(self) -> None:
            self.tenants: list[str] = []

        def notify(self, tenant: str) -> None:
            self.tenants.append(str(tenant))

    recorder = Recorder()
    previous = client.app.state.worker
    client.app.state.worker = recorder
    try:
        auth = world.auth("a")
        client.post("/v1/datasets", json={"name": "wake"}, headers=auth)
        patch = client.patch(
            "/v1/datasets/wake", json={"config": {"description": "x"}}, headers=auth
        )
        assert patch.status_code == 200 and recorder.tenants == []
        client.patch("/v1/datasets/wake", json={"config": {"chunk_tokens": 64}}, headers=auth)
        assert len(recorder.tenants) == 1
        client.delete("/v1/datasets/wake", headers=auth)
    finally:
        client.app.state.worker = previous


def test_405_lists_every_allowed_method(client: TestClient, world: World) -> None:
    response = client.put("/v1/datasets/default", headers=world.auth("a"))
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) >= {"GET", "PATCH", "DELETE"}


# -- uploads ----------------------------------------------------------------------------------
def test_same_bytes_twice_return_the_same_entry(client: TestClient, world: World) -> None:
    pdf = (PDFS / "live-manual.en.pdf").read_bytes()
    files = {"file": ("live.pdf", pdf, "application/pdf")}
    meta = {"metadata": json.dumps({"lang": "en", "year": 2024})}
    first = client.post("/v1/entries", files=files, data=meta, headers=world.auth("a"))
    assert first.status_code == 202, first.text
    entry = first.json()
    assert (entry["status"], entry["media_type"]) == ("pending", "application/pdf")
    assert entry["metadata"] == {"lang": "en", "year": 2024}
    again = client.post(
        "/v1/entries", files={"file": ("renamed.pdf", pdf, "")}, headers=world.auth("a")
    )
    assert again.status_code == 200
    assert again.json()["entry_id"] == entry["entry_id"]
    assert sum(e.sha256 == entry["sha256"] for e in world.a.catalog.entries()) == 1
    got = client.get(f"/v1/entries/{entry['entry_id']}/content", headers=world.auth("a"))
    assert got.content == pdf
    assert got.headers["content-type"] == "application/pdf"
    listed = client.get("/v1/entries", params={"status": "pending"}, headers=world.auth("a")).json()
    mine = [e for e in listed["entries"] if e["entry_id"] == entry["entry_id"]]
    assert len(mine) == 1 and "text" not in mine[0]
    assert all(e["status"] == "pending" for e in listed["entries"])
    # Clean up for the other tests of this module.
    assert (
        client.delete(f"/v1/entries/{entry['entry_id']}", headers=world.auth("a")).status_code
        == 204
    )


@pytest.fixture
def small_limit_client(tmp_path: Path) -> Iterator[tuple[TestClient, World]]:
    from alien.credentials import create_api_key
    from resources.stores import TenantRegistry

    settings = api_settings(tmp_path / "home", max_file_bytes=4096)
    registry = TenantRegistry(settings)
    stores = registry.create("tenant-s")
    key, _ = create_api_key(stores, ["read", "write"])
    world = World(settings, registry, stores, stores, {"a": key}, "", "")
    with TestClient(create_app(settings)) as c:
        yield c, world
    registry.drop("tenant-s")


def test_oversize_uploads_are_413_while_streaming(
    small_limit_client: tuple[TestClient, World],
) -> None:
    client, world = small_limit_client
    headers = world.auth("a")
    # Declared too large: refused before a byte of the body is read.
    big = client.post(
        "/v1/entries", files={"file": ("big.txt", b"a" * 200_000, "text/plain")}, headers=headers
    )
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "payload_too_large"

    # No length declared (chunked): refused once the stream passes the limit.
    body, content_type = _multipart(b"big.txt", b"b" * 200_000)
    sent = []

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 8192):
            sent.append(start)
            yield body[start : start + 8192]

    streamed = client.post(
        "/v1/entries", content=chunks(), headers={**headers, "Content-Type": content_type}
    )
    assert streamed.status_code == 413
    # Just over the limit, within the multipart allowance: refused by the file's own size.
    body, content_type = _multipart(b"over.txt", b"c" * 4097)
    over = client.post(
        "/v1/entries", content=body, headers={**headers, "Content-Type": content_type}
    )
    assert over.status_code == 413
    assert world.a.catalog.entries() == []
    assert list(world.a.objects.list()) == []
    # At the limit it is accepted.
    ok = client.post(
        "/v1/entries", files={"file": ("ok.txt", b"d " * 2048, "text/plain")}, headers=headers
    )
    assert ok.status_code == 202


# -- the audit log is part of the request -----------------------------------------------------
def test_a_request_fails_when_its_audit_record_cannot_be_written(
    client: TestClient, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(record: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(world.a.catalog.audit, "write", refuse)
    content = client.get(f"/v1/entries/{world.a_entry}/content", headers=world.auth("a"))
    assert content.status_code == 503
    assert content.json()["error"]["code"] == "audit_unavailable"
    assert b"compressor" not in content.content
    search = client.post("/v1/search", json={"query": "compressor"}, headers=world.auth("a"))
    assert search.status_code == 503
    assert "compressor" not in search.text


def test_every_successful_call_is_audited_once(client: TestClient, world: World) -> None:
    calls = [
        ("GET", "/v1/datasets", {}, "list_datasets"),
        ("GET", "/v1/datasets/default", {}, "get_dataset"),
        ("GET", "/v1/entries", {}, "list_entries"),
        ("GET", f"/v1/entries/{world.a_entry}", {}, "get_entry"),
        ("GET", f"/v1/entries/{world.a_entry}/content", {}, "get_entry_content"),
        ("GET", f"/v1/entries/{world.a_entry}/text", {}, "get_entry_text"),
        ("GET", f"/v1/entries/{world.a_entry}/chunks", {}, "get_entry_chunks"),
        ("POST", "/v1/search", {"json": {"query": "surge margin"}}, "search"),
        ("POST", "/v1/datasets", {"json": {"name": "audited"}}, "create_dataset"),
        (
            "PATCH",
            "/v1/datasets/audited",
            {"json": {"config": {"description": "d"}}},
            "update_dataset",
        ),
        ("DELETE", "/v1/datasets/audited", {}, "delete_dataset"),
    ]
    for method, path, kwargs, action in calls:
        before = len(world.a.catalog.audit.records(limit=10_000))
        response = client.request(method, path, headers=world.auth("a"), **kwargs)
        assert response.status_code < 300, response.text
        records = world.a.catalog.audit.records(limit=10_000)
        assert len(records) == before + 1
        assert (records[0].action, records[0].outcome) == (action, "ok")
        assert records[0].request_id == response.headers["x-request-id"]


def test_text_and_chunks_are_paged(client: TestClient, world: World) -> None:
    text = client.get(f"/v1/entries/{world.a_entry}/text", headers=world.auth("a")).json()
    assert text["total_pages"] == 1 and "compressor" in text["pages"][0]["text"]
    chunks = client.get(
        f"/v1/entries/{world.a_entry}/chunks", params={"limit": 1}, headers=world.auth("a")
    ).json()
    assert chunks["total_chunks"] == 1 and chunks["chunks"][0]["page"] == 1


def test_search_filters_and_bounds(client: TestClient, world: World) -> None:
    from alien.documents import register_bytes
    from alien.pipeline import run_all

    long_text = ("Surge margin of axial compressors. " * 40).encode()
    entry = register_bytes(
        world.a, long_text, dataset="default", source_uri="test://long", source_name="long.txt"
    ).entry
    world.a.catalog.update_entry(entry.id, metadata={"team": "turbo", "rev": 3})
    run_all(world.a)
    query = {"query": "compressor surge margin", "top_k": 5}
    hits = client.post("/v1/search", json=query, headers=world.auth("a")).json()["results"]
    assert {h["entry_id"] for h in hits} >= {entry.id, world.a_entry}
    assert all(len(h["snippet"]) <= world.settings.api_snippet_chars for h in hits)
    only = client.post(
        "/v1/search", json={**query, "metadata": {"team": "turbo"}}, headers=world.auth("a")
    ).json()["results"]
    assert only and {h["entry_id"] for h in only} == {entry.id}
    typed = client.post(
        "/v1/search", json={**query, "metadata": {"rev": "3"}}, headers=world.auth("a")
    ).json()["results"]
    assert typed == []  # "3" is not 3
    assert client.delete(f"/v1/entries/{entry.id}", headers=world.auth("a")).status_code == 204


def test_rate_limit_is_per_principal(tmp_path: Path) -> None:
    from alien.credentials import create_api_key
    from resources.stores import TenantRegistry

    settings = api_settings(tmp_path / "home", api_rate_per_second=0.01, api_rate_burst=2)
    registry = TenantRegistry(settings)
    stores = registry.create("tenant-r")
    first, _ = create_api_key(stores, ["read"])
    second, _ = create_api_key(stores, ["read"])
    with TestClient(create_app(settings)) as client:
        codes = [
            client.get("/v1/entries", headers={"Authorization": f"Bearer {first}"}).status_code
            for _ in range(3)
        ]
        assert codes == [200, 200, 429]
        limited = client.get("/v1/entries", headers={"Authorization": f"Bearer {first}"})
        assert limited.json()["error"]["code"] == "rate_limited"
        assert int(limited.headers["retry-after"]) >= 1
        other = client.get("/v1/entries", headers={"Authorization": f"Bearer {second}"})
        assert other.status_code == 200
    denied = [r for r in stores.catalog.audit.records(limit=10) if r.status_code == 429]
    assert len(denied) == 2
    registry.drop("tenant-r")


def test_refilled_rate_buckets_are_dropped() -> None:
    from data_api.door import RateLimiter

    limiter = RateLimiter(rate=100.0, burst=1)
    limiter.MAX_BUCKETS = 50
    for user in range(500):
        assert limiter.take(f"t|service:p|user-{user}") == 0.0
        if user % 50 == 49:
            time.sleep(0.02)  # every bucket so far refills meanwhile
    assert len(limiter._buckets) <= 50
    assert limiter.take("t|service:p|live") == 0.0
    assert limiter.take("t|service:p|live") > 0  # a bucket in use is kept


def test_service_tokens_are_limited_per_tenant_and_end_user(tmp_path: Path) -> None:
    """The platform proxy signs every token with one issuer: one end user's burst must not
    use up another end user's budget, nor another tenant's."""
    from alien.credentials import ServiceTokens
    from resources.stores import TenantRegistry

    settings = api_settings(tmp_path / "home", api_rate_per_second=0.01, api_rate_burst=2)
    registry = TenantRegistry(settings)
    registry.create("tenant-r")
    registry.create("tenant-s")
    tokens = ServiceTokens(settings)

    def get(tenant: str, user: str) -> int:
        auth = {"Authorization": f"Bearer {tokens.mint(tenant, user, ['read'])}"}
        return client.get("/v1/entries", headers=auth).status_code

    with TestClient(create_app(settings)) as client:
        assert [get("tenant-r", "ada@r.example") for _ in range(3)] == [200, 200, 429]
        assert get("tenant-r", "bob@r.example") == 200  # another end user of that tenant
        assert get("tenant-s", "ada@r.example") == 200  # the same name in another tenant
    for tenant in ("tenant-r", "tenant-s"):
        registry.drop(tenant)


def test_health_ready_and_metrics(client: TestClient, world: World) -> None:
    assert client.get("/v1/health").json() == {"status": "ok"}
    ready = client.get("/v1/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "unavailable": []}
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert 'alien_api_requests_total{method="GET",route="/v1/entries/{entry_id}"' in metrics.text
    # Unauthenticated doors name no tenant, whatever traffic the tenants made.
    for answer in (client.get("/v1/health"), ready, metrics):
        for tenant in ("tenant-a", "tenant-b"):
            assert tenant not in answer.text
    openapi = client.get("/openapi.json").json()
    top_k = openapi["components"]["schemas"]["SearchRequest"]["properties"]["top_k"]
    assert top_k["maximum"] == world.settings.api_max_top_k


def test_a_server_failure_is_answered_with_its_request_id_and_audited(
    client: TestClient, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that ends in 500 used to leave no audit row and no X-Request-ID."""
    import data_api.routes.search as search_route

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("/srv/secret/path: a bug")

    monkeypatch.setattr(search_route, "run_search", broken)
    headers = {**world.auth("a"), "X-Request-ID": "client-trace-500"}
    answer = client.post("/v1/search", json={"query": "surge"}, headers=headers)
    assert answer.status_code == 500
    request_id = answer.headers["x-request-id"]
    body = answer.json()["error"]
    assert body["code"] == "internal_error" and request_id in body["message"]
    assert request_id != "client-trace-500" and "client-trace-500" not in body["message"]
    assert "/srv/secret" not in answer.text and "RuntimeError" not in answer.text
    (row,) = [r for r in world.a.catalog.audit.records(limit=20) if r.request_id == request_id]
    assert (row.outcome, row.status_code) == ("error", 500)


def test_request_ids_are_the_servers_with_the_clients_kept_beside_them(
    client: TestClient, world: World
) -> None:
    """Request ids were the caller's X-Request-ID when well formed: chosen by the client and
    not unique. Now the server makes every one; the caller's is stored and echoed beside it."""
    from resources.catalog import AuditLog, sqlite_engine

    sent = {**world.auth("a"), "X-Request-ID": "trace-42"}
    answers = [client.get("/v1/entries", headers=sent) for _ in range(2)]
    ids = [a.headers["x-request-id"] for a in answers]
    assert all(a.status_code == 200 for a in answers)
    assert ids[0] != ids[1] and "trace-42" not in ids
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)  # uuid4 hex
    assert [a.headers["x-client-request-id"] for a in answers] == ["trace-42", "trace-42"]
    rows = {r.request_id: r for r in world.a.catalog.audit.records(limit=20)}
    assert [rows[i].client_request_id for i in ids] == ["trace-42", "trace-42"]

    # A refusal (no tenant: the cluster's log) keeps the caller's id beside the server's too.
    refused = client.get("/v1/entries", headers={"X-Request-ID": "trace-43"})
    assert refused.status_code == 401
    assert refused.headers["x-client-request-id"] == "trace-43"
    cluster = AuditLog(sqlite_engine(world.settings.system_dir / "audit.db")).records(limit=5)
    row = next(r for r in cluster if r.request_id == refused.headers["x-request-id"])
    assert row.client_request_id == "trace-43"

    # No X-Request-ID: a server id, nothing stored or echoed beside it.
    plain = client.get("/v1/entries", headers=world.auth("a"))
    assert "x-client-request-id" not in plain.headers
    (row,) = [r for r in world.a.catalog.audit.records(limit=5)
              if r.request_id == plain.headers["x-request-id"]]  # fmt: skip
    assert row.client_request_id is None


@pytest.mark.parametrize(
    "malformed",
    ["has space", "x" * 65, "semi;colon", 'quote"d', "caf\u00e9", "new\nline"],
    ids=["space", "too-long", "semicolon", "quote", "non-ascii", "newline"],
)
def test_a_malformed_client_request_id_is_neither_stored_nor_echoed(
    client: TestClient, world: World, malformed: str
) -> None:
    # Bytes, so that the client sends them as they are (it would refuse some as text).
    headers = [(b"authorization", f"Bearer {world.keys['a']}".encode()),
               (b"x-request-id", malformed.encode())]  # fmt: skip
    answer = client.get("/v1/entries", headers=headers)
    assert answer.status_code == 200
    assert "x-client-request-id" not in answer.headers
    request_id = answer.headers["x-request-id"]
    (row,) = [r for r in world.a.catalog.audit.records(limit=5) if r.request_id == request_id]
    assert row.client_request_id is None


def test_oversized_headers_are_refused_before_anything_else(
    client: TestClient, world: World
) -> None:
    huge = {"Authorization": "Bearer " + "x" * 600_000}
    for path in ("/v1/entries", "/v1/health"):
        answer = client.get(path, headers=huge)
        assert answer.status_code == 431 and answer.json()["error"]["code"] == "headers_too_large"
    assert client.get("/v1/entries", headers=world.auth("a")).status_code == 200


def test_json_bodies_are_capped_before_they_are_parsed(client: TestClient, world: World) -> None:
    """A 60 MB search body was read and parsed whole before validation."""
    big = b'{"query": "' + b"a" * (world.settings.api_max_json_bytes + 10) + b'"}'
    headers = {**world.auth("a"), "Content-Type": "application/json"}
    declared = client.post("/v1/search", content=big, headers=headers)
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "payload_too_large"

    def streamed():  # no Content-Length: counted while it streams in
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    chunked = client.post("/v1/datasets", content=streamed(), headers=headers)
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "payload_too_large"
    small = client.post("/v1/search", json={"query": "surge"}, headers=world.auth("a"))
    assert small.status_code == 200


def test_a_tenant_with_a_corrupt_catalog_does_not_stop_the_worker(tmp_path: Path) -> None:
    from alien.documents import register_bytes
    from data_api.worker import IngestWorker
    from resources.stores import TenantRegistry

    settings = api_settings(tmp_path / "home")
    registry = TenantRegistry(settings)
    broken, fine = registry.create("tenant-x"), registry.create("tenant-y")
    register_bytes(fine, b"pending words", dataset="default", source_uri="mem:p",
                   source_name="p.txt")  # fmt: skip
    broken.close()
    registry.forget("tenant-x")
    for name in ("catalog.db", "catalog.db-wal", "catalog.db-shm"):
        (registry.tenant_dir(broken.tenant) / name).unlink(missing_ok=True)
    (registry.tenant_dir(broken.tenant) / "catalog.db").write_bytes(b"not a database" * 100)
    assert registry.list() == ["tenant-x", "tenant-y"]  # listed, yet skipped
    assert IngestWorker(settings, registry)._tenants_waiting() == (set(), {"tenant-y"})


def test_refused_requests_are_throttled_per_client_address(tmp_path: Path) -> None:
    """Bad credentials cost an audit write each: past the burst, an address gets 429."""
    from alien.credentials import create_api_key
    from resources.stores import TenantRegistry

    settings = api_settings(tmp_path / "home", api_refusal_rate_per_second=0.01,
                            api_refusal_burst=3)  # fmt: skip
    key, _ = create_api_key(TenantRegistry(settings).create("tenant-t"), ["read"])
    with TestClient(create_app(settings)) as client:
        codes = [
            client.get("/v1/entries", headers={"Authorization": "Bearer nope"}).status_code
            for _ in range(5)
        ]
        # The same address with a valid credential (the platform proxy's) is still served.
        served = client.get("/v1/entries", headers={"Authorization": f"Bearer {key}"})
        metrics = client.get("/metrics").text
    assert codes == [401, 401, 401, 429, 429]
    assert served.status_code == 200
    assert "alien_api_refusals_throttled_total 2.0" in metrics


def test_the_egress_budget_stops_a_bulk_copy_and_is_audited(tmp_path: Path) -> None:
    """Every request is small, but a read key once took 55 originals in 0.4 s: past its
    bytes per hour a credential gets 429 with the budget, and the refusal is audited."""
    from alien.credentials import create_api_key
    from alien.documents import register_bytes
    from alien.pipeline import run_all
    from resources.stores import TenantRegistry

    settings = api_settings(tmp_path / "home", api_egress_bytes_per_hour=5_000,
                            api_egress_bytes_per_hour_by_tenant={"tenant-f": 0})  # fmt: skip
    registry = TenantRegistry(settings)
    stores, free = registry.create("tenant-e"), registry.create("tenant-f")
    ids = []
    for i in range(4):
        body = f"Document {i}: ".encode() + b"surge margin of axial compressors. " * 40
        ids.append(register_bytes(stores, body, dataset="default", source_uri=f"mem:{i}",
                                  source_name=f"d{i}.txt").entry.id)  # fmt: skip
    run_all(stores)
    reader, _ = create_api_key(stores, ["read", "search"])
    other, _ = create_api_key(stores, ["read"])
    unlimited, _ = create_api_key(free, ["read"])
    auth = {"Authorization": f"Bearer {reader}"}
    with TestClient(create_app(settings)) as client:
        codes = [client.get(f"/v1/entries/{e}/content", headers=auth).status_code for e in ids]
        assert codes[:3] == [200, 200, 200] and codes[3] == 429  # 1,452 bytes each
        refused = client.get(f"/v1/entries/{ids[0]}/text", headers=auth)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        error = refused.json()["error"]
        assert error["code"] == "egress_budget_exceeded"
        assert error["budget"]["bytes_per_hour"] == 5_000
        # The budget is the credential's: another key of the same tenant still reads.
        second = client.get(f"/v1/entries/{ids[3]}/content",
                            headers={"Authorization": f"Bearer {other}"})  # fmt: skip
        assert second.status_code == 200
        assert client.get("/v1/entries", headers=auth).status_code == 200  # metadata is free
        # A tenant configured without a budget is not limited.
        register_bytes(free, b"x" * 20_000, dataset="default", source_uri="mem:big",
                       source_name="big.txt")  # fmt: skip
        run_all(free)
        (big,) = free.catalog.entries()
        for _ in range(2):
            answer = client.get(f"/v1/entries/{big.id}/content",
                                headers={"Authorization": f"Bearer {unlimited}"})  # fmt: skip
            assert answer.status_code == 200
    # Another replica of the API (or this one restarted) spends from the same bucket: the
    # budget is kept in the tenant's catalog, not in a process.
    with TestClient(create_app(settings)) as replica:
        again = replica.get(f"/v1/entries/{ids[3]}/content", headers=auth)
        assert again.status_code == 429, again.text
    denied = [r for r in stores.catalog.audit.records(limit=50)
              if r.outcome == "denied" and r.detail == "egress_budget_exceeded"]  # fmt: skip
    assert {r.action for r in denied} == {"get_entry_content", "get_entry_text"}
    assert all(r.status_code == 429 for r in denied)
    for tenant in ("tenant-e", "tenant-f"):
        registry.drop(tenant)


def test_a_write_only_key_learns_nothing_from_re_uploading_known_bytes(
    client: TestClient, world: World
) -> None:
    """The same bytes give the same entry (200): a key that may not read must not receive the
    stored entry's name and metadata through it."""
    data = b"Board minutes: the merger closes in March."
    first = client.post(
        "/v1/entries",
        headers=world.auth("a"),
        files={"file": ("secret-plan.txt", data, "text/plain")},
        data={"metadata": '{"owner": "cfo"}'},
    )
    assert first.status_code == 202
    again = client.post(
        "/v1/entries",
        headers=world.auth("a_write"),
        files={"file": ("guess.txt", data, "text/plain")},
        data={"metadata": '{"probe": true}'},
    )
    assert again.status_code == 200 and again.json()["entry_id"] == first.json()["entry_id"]
    body = again.json()
    assert body["source_name"] == "guess.txt" and body["metadata"] == {"probe": True}
    assert "secret-plan" not in again.text and "cfo" not in again.text
    # Nothing of the stored entry's processing or history either: only what it sent.
    withheld = ("status", "reason", "pages", "chunks", "created_at", "updated_at")
    assert {k: body[k] for k in withheld} == dict.fromkeys(withheld)
    assert (body["size"], body["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert (body["dataset"], body["media_type"]) == ("default", "text/plain")
    assert first.json()["created_at"] not in again.text
    # A key that may read gets the stored entry, as GET /v1/entries/{id} would show it.
    entry = first.json()["entry_id"]
    reader = client.post(
        "/v1/entries",
        headers=world.auth("a"),
        files={"file": ("other-name.txt", data, "text/plain")},
    )
    stored = client.get(f"/v1/entries/{entry}", headers=world.auth("a")).json()
    assert reader.status_code == 200 and reader.json() == stored
    assert stored["source_name"] == "secret-plan.txt" and stored["status"] == "pending"
    assert stored["created_at"] is not None and stored["metadata"] == {"owner": "cfo"}
    assert client.delete(f"/v1/entries/{entry}", headers=world.auth("a")).status_code == 204


def test_the_upload_answer_is_documented_with_what_a_write_only_key_is_not_told(
    client: TestClient,
) -> None:
    """The OpenAPI document (schemathesis checks answers against it) allows the nulls."""
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    uploaded = schemas["UploadedEntry"]["properties"]
    for field in ("status", "reason", "pages", "chunks", "created_at", "updated_at"):
        assert {"type": "null"} in uploaded[field]["anyOf"], field
        assert "without `read` scope" in uploaded[field]["description"]
    entry = schemas["EntryPublic"]["properties"]
    assert "anyOf" not in entry["status"] and "anyOf" not in entry["created_at"]


def test_a_failure_while_the_credential_is_checked_is_answered_and_identified(
    client: TestClient, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store failing during authentication (the catalog's key lookup, say) used to reach
    Starlette's outer handler: a 500 with no request id."""
    from resources.catalog import Catalog

    def down(self: object, key_id: str) -> None:
        raise ConnectionError("catalog server at 10.0.0.5:5432 went away")

    monkeypatch.setattr(Catalog, "api_key", down)
    answer = client.get("/v1/entries", headers=world.auth("a"))
    assert answer.status_code == 500 and "x-request-id" in answer.headers
    assert answer.json()["error"]["code"] == "internal_error"
    assert "10.0.0.5" not in answer.text


def test_an_answer_larger_than_the_whole_budget_says_it_cannot_be_served(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from alien.credentials import Principal
    from data_api.door import EgressBudget
    from data_api.errors import ApiError
    from resources.catalog import Catalog
    from resources.tenancy import TenantId

    catalog = Catalog.embedded(TenantId("tenant-z"), tmp_path / "catalog.db")
    catalog.create()  # where the budget's bucket is kept
    audited: list[tuple] = []
    ctx = SimpleNamespace(
        principal=Principal("tenant-z", "key:k", frozenset({"read"})),
        stores=SimpleNamespace(catalog=catalog),
        audit=lambda *args, **kwargs: audited.append((args, kwargs)),
    )
    budget = EgressBudget(api_settings(tmp_path, api_egress_bytes_per_hour=1_000))
    budget.charge(ctx, 600, "get_entry_text")  # type: ignore[arg-type]
    with pytest.raises(ApiError) as later:
        budget.charge(ctx, 600, "get_entry_text")  # type: ignore[arg-type]
    assert later.value.extra["budget"]["retry_after_seconds"] >= 1
    with pytest.raises(ApiError) as never:
        budget.charge(ctx, 5_000, "get_entry_content")  # type: ignore[arg-type]
    assert never.value.extra["budget"]["retry_after_seconds"] is None
    assert "cannot be served" in never.value.message and "Retry-After" not in never.value.headers
    assert [a[0][1] for a in audited] == ["denied", "denied"]


def test_the_worker_backs_off_a_tenant_whose_runs_fail(tmp_path: Path, monkeypatch) -> None:
    """A store down: each failed run doubles the wait before the tenant's next one, instead
    of a run every poll; a success ends the backoff."""
    import data_api.worker as worker_module
    from alien.documents import register_bytes
    from alien.runner import RunOutcome
    from data_api.worker import IngestWorker
    from resources.stores import TenantRegistry

    settings = api_settings(
        tmp_path / "home", api_worker_poll_seconds=0.02, retry_backoff_seconds=0.3
    )
    registry = TenantRegistry(settings)
    stores = registry.create("tenant-z")
    register_bytes(stores, b"waiting words", dataset="default", source_uri="mem:w",
                   source_name="w.txt")  # fmt: skip
    starts: list[float] = []
    healthy = threading.Event()

    def fake_run(settings, tenant, cancel=None):
        starts.append(time.monotonic())
        return RunOutcome(run_id="r", success=healthy.is_set(), seconds=0.0, error="down")

    monkeypatch.setattr(worker_module, "run_ingest", fake_run)
    worker = IngestWorker(settings, registry)
    worker.start()
    try:
        time.sleep(2.0)
        failed_runs = len(starts)
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert 2 <= failed_runs <= 5, starts  # a poll every 20 ms would have made ~100
        assert all(gap >= 0.14 for gap in gaps), gaps
        assert gaps[-1] > gaps[0]  # growing
        healthy.set()
        deadline = time.monotonic() + 5
        while len(starts) == failed_runs and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(starts) > failed_runs
        time.sleep(0.3)
        assert worker._failures == {}  # the success ended the backoff
    finally:
        worker.stop()
