"""A Data API over real embedded stores: two tenants, keys of every scope, indexed entries."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from fastapi.testclient import TestClient

from alien.credentials import create_api_key
from alien.documents import register_bytes
from alien.pipeline import run_all
from data_api import create_app
from resources.settings import AlienSettings
from resources.stores import TenantRegistry, TenantStores

SECRET = "test-only-service-secret-0123456789abcdef"
A_TEXT = b"Tenant A keeps notes on centrifugal compressor surge margins and stall."
B_TEXT = b"Tenant B writes about the photosynthesis rates of alpine lichens in winter."


def api_settings(home: Path, **overrides: object) -> AlienSettings:
    values: dict[str, object] = {
        "home": home,
        "service_token_secret": SECRET,
        "api_rate_per_second": 10_000.0,
        "api_rate_burst": 10_000,
        "api_refusal_rate_per_second": 10_000.0,
        "api_refusal_burst": 10_000,
        "api_worker": False,
    }
    values.update(overrides)
    return AlienSettings(**values)  # type: ignore[arg-type]


@dataclass
class World:
    settings: AlienSettings
    registry: TenantRegistry
    a: TenantStores
    b: TenantStores
    keys: dict[str, str]  # "a", "a_read", "a_search", "a_write", "b", "b_revoked"
    a_entry: str
    b_entry: str

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def token(self, for_tenant: str, user: str = "ada@example.com", **claims: object) -> str:
        """A service token as the platform proxy signs it; ``claims`` override (None drops)."""
        now = int(time.time())
        body: dict[str, object] = {
            "iss": self.settings.service_token_issuer,
            "aud": self.settings.service_token_audience,
            "sub": user,
            "tenant": for_tenant,
            "scope": "read search write",
            "iat": now,
            "exp": now + 60,
        }
        body.update(claims)
        return jwt.encode({k: v for k, v in body.items() if v is not None}, SECRET, "HS256")


def _ingest(stores: TenantStores, data: bytes, name: str, dataset: str) -> str:
    stores.catalog.ensure_dataset(dataset)
    entry = register_bytes(
        stores, data, dataset=dataset, source_uri=f"test://{name}", source_name=name
    ).entry
    run_all(stores)
    assert stores.catalog.get_entry(entry.id).status == "indexed"  # type: ignore[union-attr]
    return entry.id


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    settings = api_settings(tmp_path_factory.mktemp("api-home"))
    registry = TenantRegistry(settings)
    a = registry.create("tenant-a")
    b = registry.create("tenant-b")
    keys = {
        "a": create_api_key(a, ["read", "search", "write"])[0],
        "a_read": create_api_key(a, ["read"])[0],
        "a_search": create_api_key(a, ["search"])[0],
        "a_write": create_api_key(a, ["write"])[0],
        "b": create_api_key(b, ["read", "search", "write"])[0],
    }
    revoked, record = create_api_key(b, ["read"])
    b.catalog.revoke_api_key(record.id)
    keys["b_revoked"] = revoked
    a_entry = _ingest(a, A_TEXT, "a-notes.txt", "default")
    b_entry = _ingest(b, B_TEXT, "b-notes.txt", "lichens")
    yield World(settings, registry, a, b, keys, a_entry, b_entry)
    for tenant in registry.list():
        registry.drop(tenant)


@pytest.fixture(scope="module")
def client(world: World) -> Iterator[TestClient]:
    with TestClient(create_app(world.settings)) as c:
        yield c
