"""Who may do what: every endpoint refuses a missing credential (401), a missing scope (403)
and another tenant's resources (404, exactly as for a missing one), and audits the attempt."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.data_api.conftest import B_TEXT, World

# method, path, scope needed, request arguments; {entry} and {dataset} are filled per case.
ENDPOINTS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("GET", "/v1/datasets", "read", {}),
    ("POST", "/v1/datasets", "write", {"json": {"name": "fresh"}}),
    ("GET", "/v1/datasets/{dataset}", "read", {}),
    ("PATCH", "/v1/datasets/{dataset}", "write", {"json": {"config": {"description": "x"}}}),
    ("DELETE", "/v1/datasets/{dataset}", "write", {}),
    ("GET", "/v1/entries", "read", {}),
    (
        "POST",
        "/v1/entries",
        "write",
        {"files": {"file": ("n.txt", b"some words here", "text/plain")}},
    ),
    ("GET", "/v1/entries/{entry}", "read", {}),
    ("GET", "/v1/entries/{entry}/content", "read", {}),
    ("GET", "/v1/entries/{entry}/text", "read", {}),
    ("GET", "/v1/entries/{entry}/chunks", "read", {}),
    ("DELETE", "/v1/entries/{entry}", "write", {}),
    ("POST", "/v1/search", "search", {"json": {"query": "lichens"}}),
]
WRONG_KEY = {"read": "a_write", "search": "a_write", "write": "a_read"}


def _call(
    client: TestClient, method: str, path: str, kwargs: dict[str, Any], headers: dict[str, str]
) -> Any:
    return client.request(method, path, headers=headers, **kwargs)


def _ids(endpoints: list[tuple[str, str, str, dict[str, Any]]]) -> list[str]:
    return [f"{m} {p}" for m, p, *_ in endpoints]


def test_the_matrix_covers_every_data_endpoint(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    served = {
        (method.upper(), path)
        for path, operations in paths.items()
        if path.startswith("/v1/")
        for method in operations
    }
    served -= {("GET", "/v1/health"), ("GET", "/v1/ready")}
    listed = {
        (m, p.replace("{entry}", "{entry_id}").replace("{dataset}", "{name}"))
        for m, p, *_ in ENDPOINTS
    }
    assert served == listed


@pytest.mark.parametrize(("method", "path", "scope", "kwargs"), ENDPOINTS, ids=_ids(ENDPOINTS))
def test_no_credential_is_401(
    client: TestClient, world: World, method: str, path: str, scope: str, kwargs: dict[str, Any]
) -> None:
    url = path.format(entry=world.a_entry, dataset="default")
    for headers in ({}, {"Authorization": "Bearer nonsense"}, {"Authorization": "Basic abc"}):
        response = _call(client, method, url, kwargs, headers)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    revoked = _call(client, method, url, kwargs, world.auth("b_revoked"))
    assert revoked.status_code == 401
    assert world.a.catalog.get_entry(world.a_entry) is not None


@pytest.mark.parametrize(("method", "path", "scope", "kwargs"), ENDPOINTS, ids=_ids(ENDPOINTS))
def test_wrong_scope_is_403_and_audited(
    client: TestClient, world: World, method: str, path: str, scope: str, kwargs: dict[str, Any]
) -> None:
    url = path.format(entry=world.a_entry, dataset="default")
    response = _call(client, method, url, kwargs, world.auth(WRONG_KEY[scope]))
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "insufficient_scope"
    record = world.a.catalog.audit.records(limit=1)[0]
    assert (record.outcome, record.status_code) == ("denied", 403)
    assert record.request_id == response.headers["x-request-id"]
    assert world.a.catalog.get_entry(world.a_entry) is not None


CROSS = [e for e in ENDPOINTS if "{" in e[1]]


@pytest.mark.parametrize(("method", "path", "scope", "kwargs"), CROSS, ids=_ids(CROSS))
def test_other_tenants_resources_are_404_like_missing_ones(
    client: TestClient, world: World, method: str, path: str, scope: str, kwargs: dict[str, Any]
) -> None:
    theirs = _call(
        client, method, path.format(entry=world.b_entry, dataset="lichens"), kwargs, world.auth("a")
    )
    missing = _call(
        client,
        method,
        path.format(entry="00000000-0000-4000-8000-000000000000", dataset="nowhere"),
        kwargs,
        world.auth("a"),
    )
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["code"] == missing.json()["error"]["code"]
    assert B_TEXT.decode()[:20] not in theirs.text
    # The attempt is in the requester's audit log, naming what was asked for.
    records = world.a.catalog.audit.records(limit=2)
    attempt = next(r for r in records if r.request_id == theirs.headers["x-request-id"])
    assert attempt.outcome == "not_found"
    assert attempt.principal.startswith("key:")
    if "{entry}" in path:
        assert attempt.entry_id == world.b_entry
    else:
        assert attempt.dataset == "lichens"
    # Tenant B lost nothing.
    assert world.b.catalog.get_entry(world.b_entry) is not None
    assert world.b.catalog.dataset("lichens") is not None


def test_search_never_crosses_tenants(client: TestClient, world: World) -> None:
    query = {"query": "photosynthesis of alpine lichens", "top_k": 50}
    mine = client.post("/v1/search", json=query, headers=world.auth("a")).json()["results"]
    assert all(r["entry_id"] != world.b_entry for r in mine)
    theirs = client.post(
        "/v1/search", json={**query, "dataset": "lichens"}, headers=world.auth("a")
    )
    assert theirs.status_code == 404
    record = world.a.catalog.audit.records(limit=1)[0]
    assert (record.action, record.outcome, record.dataset) == ("search", "not_found", "lichens")
    own = client.post("/v1/search", json=query, headers=world.auth("b")).json()["results"]
    assert own and own[0]["entry_id"] == world.b_entry


def test_upload_into_another_tenants_dataset_is_404(client: TestClient, world: World) -> None:
    before = len(world.b.catalog.entries())
    response = client.post(
        "/v1/entries",
        data={"dataset": "lichens"},
        files={"file": ("x.txt", b"intruder text", "text/plain")},
        headers=world.auth("a"),
    )
    assert response.status_code == 404
    assert len(world.b.catalog.entries()) == before


# -- service tokens (the platform proxy) ----------------------------------------------------
def test_service_token_acts_for_the_end_user(client: TestClient, world: World) -> None:
    token = world.token("tenant-a", user="grace@example.com")
    response = client.get(
        f"/v1/entries/{world.a_entry}", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200
    record = world.a.catalog.audit.records(limit=1)[0]
    assert record.tenant == "tenant-a"
    assert record.principal == f"service:{world.settings.service_token_issuer}"
    assert record.on_behalf_of == "grace@example.com"
    assert record.entry_id == world.a_entry


def test_service_token_for_tenant_b_sees_only_b(client: TestClient, world: World) -> None:
    token = world.token("tenant-b")
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get(f"/v1/entries/{world.a_entry}", headers=headers).status_code == 404
    assert client.get(f"/v1/entries/{world.b_entry}", headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 120, "iat": int(time.time()) - 150}, "expired"),
        ({"exp": int(time.time()) + 3600}, "lives"),
        ({"aud": "someone-else"}, "audience"),
        ({"iss": "impostor"}, "issuer"),
        ({"tenant": "no-such-tenant"}, "lacks"),
        ({"tenant": "../etc"}, "invalid tenant"),
        ({"sub": None}, "sub"),
        ({"tenant": None}, "tenant"),
        # Numeric strings pass PyJWT's own checks; they once ended in a 500.
        # (evaluated at collection: far enough ahead to be unexpired whenever this runs)
        ({"exp": str(int(time.time()) + 365 * 86400)}, "must be numbers"),
        ({"iat": str(int(time.time()))}, "must be numbers"),
        ({"exp": "soon"}, "invalid service token"),
        ({"iat": [1]}, "invalid service token"),
    ],
    ids=[
        "expired",
        "too-long",
        "audience",
        "issuer",
        "unknown-tenant",
        "bad-tenant",
        "no-user",
        "no-tenant",
        "exp-numeric-string",
        "iat-numeric-string",
        "exp-word",
        "iat-list",
    ],
)
def test_bad_service_tokens_are_401(
    client: TestClient, world: World, claims: dict[str, Any], reason: str
) -> None:
    token = world.token("tenant-a", **claims)
    response = client.get("/v1/entries", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    message = response.json()["error"]["message"]
    assert reason in message
    assert " at 0x" not in message and "<" not in message  # no library internals


def test_clock_skew_within_leeway_is_accepted(client: TestClient, world: World) -> None:
    now = int(time.time())
    # Expired 10 s ago by our clock, issued "in the future" by 10 s: both within 30 s.
    late = world.token("tenant-a", iat=now - 70, exp=now - 10)
    early = world.token("tenant-a", iat=now + 10, exp=now + 70)
    for token in (late, early):
        response = client.get("/v1/entries", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text


def test_token_signed_with_another_key_is_401(client: TestClient, world: World) -> None:
    import jwt as pyjwt

    forged = pyjwt.encode(
        {
            "iss": "alien-platform",
            "aud": "alien-data-cluster",
            "sub": "x",
            "tenant": "tenant-a",
            "iat": int(time.time()),
            "exp": int(time.time()) + 60,
        },
        "not-the-cluster-secret-but-long-enough-anyway",
        "HS256",
    )
    response = client.get("/v1/entries", headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401


def test_token_scopes_limit_it(client: TestClient, world: World) -> None:
    token = world.token("tenant-a", scope="search")
    headers = {"Authorization": f"Bearer {token}"}
    assert client.post("/v1/search", json={"query": "surge"}, headers=headers).status_code == 200
    assert client.get("/v1/entries", headers=headers).status_code == 403


def test_refused_anonymous_requests_go_to_the_cluster_log(client: TestClient, world: World) -> None:
    from resources.catalog import AuditLog, sqlite_engine

    response = client.get(f"/v1/entries/{world.a_entry}/content")
    assert response.status_code == 401
    log = AuditLog(sqlite_engine(world.settings.system_dir / "audit.db"))
    record = log.records(limit=1)[0]
    assert record.request_id == response.headers["x-request-id"]
    assert (record.outcome, record.status_code) == ("denied", 401)
    assert world.a_entry in record.action
