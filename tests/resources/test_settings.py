"""Settings as Kubernetes hands them over: a password apart from its URL (a Secret key), and a
Dagster instance directory managed by the chart."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from resources.settings import AlienSettings


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in [k for k in os.environ if k.startswith("ALIEN_")]:
        monkeypatch.delenv(key)


def test_the_control_planes_password_joins_its_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIEN_POSTGRES_URL", "postgresql://admin@pg:5432/postgres?sslmode=require")
    monkeypatch.setenv("ALIEN_POSTGRES_PASSWORD", "p@ss/w:rd?&")  # URL-special characters
    url = make_url(AlienSettings().postgres_url)
    assert (url.username, url.password, url.host, url.database) == (
        "admin", "p@ss/w:rd?&", "pg", "postgres"
    )  # fmt: skip
    assert url.query == {"sslmode": "require"}


def test_a_password_in_the_url_wins_and_a_data_plane_keeps_them_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALIEN_POSTGRES_PASSWORD", "from-secret")
    monkeypatch.setenv("ALIEN_POSTGRES_URL", "postgresql://admin:inline@pg/postgres")
    assert make_url(AlienSettings().postgres_url).password == "inline"
    monkeypatch.setenv("ALIEN_POSTGRES_URL", "postgresql://alien_acme@pg/alien_acme")
    tenant = AlienSettings(tenant="acme")
    assert make_url(tenant.postgres_url).password is None  # the backend adds it per connection
    assert tenant.postgres_password is not None


def test_a_dagster_home_managed_elsewhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ALIEN_HOME", str(tmp_path / "home"))
    assert AlienSettings().dagster_home == (tmp_path / "home" / "dagster").resolve()
    monkeypatch.setenv("ALIEN_DAGSTER_HOME", "/opt/dagster/dagster_home")
    assert AlienSettings().dagster_home == Path("/opt/dagster/dagster_home")
