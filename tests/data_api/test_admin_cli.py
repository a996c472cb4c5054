"""The admin side of the API's credentials: `alien keys`, `alien service-token`, `alien audit`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from alien.cli import main
from data_api import create_app
from resources.settings import AlienSettings
from tests.data_api.conftest import SECRET


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ALIEN_HOME", str(tmp_path))
    monkeypatch.setenv("ALIEN_SERVICE_TOKEN_SECRET", SECRET)
    return tmp_path


def _run(*args: str) -> dict:
    result = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_keys_create_list_revoke_and_audit(home: Path) -> None:
    created = _run("keys", "create", "--tenant", "acme", "--scopes", "read,write")
    key = created["key"]
    assert key.startswith("alien_acme_") and created["scopes"] == ["read", "write"]
    listed = _run("keys", "list", "--tenant", "acme")["keys"]
    assert [k["key_id"] for k in listed] == [created["key_id"]]
    assert key.split("_")[-1] not in json.dumps(listed)  # the secret is never shown again
    stored = (home / "tenants" / "acme" / "catalog.db").read_bytes()
    assert key.split("_", 3)[3].encode() not in stored  # only its hash is stored

    settings = AlienSettings(home=home, api_worker=False)
    with TestClient(create_app(settings)) as client:
        auth = {"Authorization": f"Bearer {key}"}
        assert client.get("/v1/entries", headers=auth).status_code == 200
        _run("keys", "revoke", created["key_id"], "--tenant", "acme")
        assert client.get("/v1/entries", headers=auth).status_code == 401

        token = _run("service-token", "--tenant", "acme", "--user", "lin@example.com")["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        assert client.get("/v1/entries", headers=bearer).status_code == 200

    records = _run("audit", "--tenant", "acme")["records"]
    actions = [(r["action"], r["outcome"]) for r in records]
    assert ("create_key", "ok") in actions and ("revoke_key", "ok") in actions
    assert ("list_entries", "ok") in actions
    assert any(r["on_behalf_of"] == "lin@example.com" for r in records)
    assert all(r["tenant"] == "acme" for r in records)
    cluster = _run("audit")["records"]
    assert cluster and cluster[0]["status_code"] == 401 and cluster[0]["tenant"] is None


def test_bad_scopes_and_unknown_keys_are_usage_errors(home: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(main, ["keys", "create", "--tenant", "acme", "--scopes", "read,admin"])
    assert bad.exit_code == 2 and "unknown scope" in bad.output
    _run("keys", "create", "--tenant", "acme")
    missing = runner.invoke(main, ["keys", "revoke", "nope", "--tenant", "acme"])
    assert missing.exit_code == 1 and "no key nope" in missing.output
    unknown_tenant = runner.invoke(main, ["keys", "list", "--tenant", "ghost"])
    assert unknown_tenant.exit_code == 2


def test_service_token_needs_the_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIEN_HOME", str(tmp_path))
    monkeypatch.delenv("ALIEN_SERVICE_TOKEN_SECRET", raising=False)
    result = CliRunner().invoke(main, ["service-token", "--tenant", "acme", "--user", "u"])
    assert result.exit_code == 1 and "ALIEN_SERVICE_TOKEN_SECRET" in result.output


def test_audit_shows_control_characters_escaped(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An end user's name comes from the platform's token: terminal escapes, bidi overrides
    and rich markup in it are shown as text, never acted on."""
    from alien.credentials import ServiceTokens

    _run("keys", "create", "--tenant", "acme")  # provisions the tenant
    settings = AlienSettings(home=home, api_worker=False, service_token_secret=SECRET)
    hostile = "eve\x1b[2J\x1b]0;pwned\x07\u202e[bold red]x[/]"
    token = ServiceTokens(settings).mint("acme", hostile, ["read"])
    with TestClient(create_app(settings)) as client:
        answer = client.get("/v1/entries", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
    import alien.cli

    monkeypatch.setattr(alien.cli.out, "width", 400)  # no cell cut short
    shown = CliRunner().invoke(main, ["audit", "--tenant", "acme"])
    assert shown.exit_code == 0, shown.output
    assert "\x1b" not in shown.output and "\x07" not in shown.output
    assert "\u202e" not in shown.output
    assert "\\x1b[2J" in shown.output and "\\u202e" in shown.output
    assert "[bold red]x[/]" in shown.output  # markup shown literally


def test_audit_shows_the_client_request_id_beside_the_servers(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`alien audit` outputs both ids, in JSON and in the table, for a tenant's log and for a
    cluster log made by the previous release (its table gains the column when opened)."""
    import sqlite3

    settings = AlienSettings(home=home, api_worker=False)
    settings.system_dir.mkdir(parents=True)
    with sqlite3.connect(settings.system_dir / "audit.db") as old:  # audit_log as 0001 made it
        old.execute(
            "CREATE TABLE audit_log (id INTEGER NOT NULL PRIMARY KEY, at DATETIME NOT NULL, "
            "request_id VARCHAR(64) NOT NULL, tenant VARCHAR(40), principal VARCHAR(200) "
            "NOT NULL, on_behalf_of VARCHAR(200), action VARCHAR(64) NOT NULL, entry_id "
            "VARCHAR(64), dataset VARCHAR(63), outcome VARCHAR(32) NOT NULL, status_code "
            "INTEGER, detail TEXT)"
        )
        old.execute(
            "INSERT INTO audit_log (at, request_id, principal, action, outcome, status_code) "
            "VALUES ('2026-01-01 00:00:00', 'older', 'anonymous@x', 'GET /v1/entries', "
            "'denied', 401)"
        )
    key = _run("keys", "create", "--tenant", "acme")["key"]
    with TestClient(create_app(settings)) as client:
        served = client.get(
            "/v1/entries", headers={"Authorization": f"Bearer {key}", "X-Request-ID": "job-7"}
        )
        refused = client.get("/v1/entries", headers={"X-Request-ID": "job-8"})
    assert (served.status_code, refused.status_code) == (200, 401)

    (row,) = [r for r in _run("audit", "--tenant", "acme")["records"]
              if r["action"] == "list_entries"]  # fmt: skip
    assert row["request_id"] == served.headers["x-request-id"] != "job-7"
    assert row["client_request_id"] == "job-7"
    newest, oldest = _run("audit")["records"]
    assert newest["request_id"] == refused.headers["x-request-id"]
    assert newest["client_request_id"] == "job-8"
    assert (oldest["request_id"], oldest["client_request_id"]) == ("older", None)

    import alien.cli

    monkeypatch.setattr(alien.cli.out, "width", 400)  # no cell cut short
    shown = CliRunner().invoke(main, ["audit", "--tenant", "acme", "--wide"])
    assert shown.exit_code == 0, shown.output
    assert "client request id" in shown.output
    assert "job-7" in shown.output and served.headers["x-request-id"] in shown.output
