"""`alien tenant create|delete`: provisioning and retiring a tenant, idempotent, with its
Dagster partition (embedded here; tests/test_cluster.py covers the server backends)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from alien.cli import main


def _run(*args: str) -> dict:
    result = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_create_and_delete_are_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from alien.runner import dagster_instance
    from alien_assets.partitions import TENANTS
    from resources.settings import AlienSettings

    monkeypatch.setenv("ALIEN_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    first = _run("tenant", "create", "globex")
    assert first["created"] is True and first["stores"]["catalog"] == "sqlite"
    assert _run("tenant", "create", "globex")["created"] is False
    assert _run("tenants")["tenants"] == ["globex"]
    instance = dagster_instance(AlienSettings(home=tmp_path))
    assert instance.has_dynamic_partition(TENANTS, "globex")

    retained = _run("tenant", "delete", "globex", "--retain")
    assert retained == {"tenant": "globex", "found": True, "data_removed": False, "retained": True}
    assert _run("tenants")["tenants"] == []  # no longer served...
    assert [(t["tenant"], t["state"]) for t in _run("tenants", "--all")["tenants"]] == [
        ("globex", "retained")
    ]
    assert (tmp_path / "tenants" / "globex" / "catalog.db").is_file()  # ...but the data stays
    assert not instance.has_dynamic_partition(TENANTS, "globex")

    assert _run("tenant", "delete", "globex")["data_removed"] is True
    again = _run("tenant", "delete", "globex")  # idempotent, and says there was nothing
    assert again["found"] is False and again["data_removed"] is False
    assert _run("tenants", "--all")["tenants"] == []
    assert not (tmp_path / "tenants" / "globex").exists()


def test_invalid_tenant_ids_are_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ALIEN_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["tenant", "create", "Not_Valid"])
    assert result.exit_code == 2 and "invalid tenant id" in result.output
    for reserved in ("dagster", "system", "postgres", "cluster"):
        result = CliRunner().invoke(main, ["tenant", "create", reserved])
        assert result.exit_code == 2 and "reserved" in result.output, result.output
    assert not (tmp_path / "tenants").exists()
