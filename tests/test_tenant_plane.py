"""Cluster mode on the real servers: PostgreSQL, the S3 gateway with MinIO's admin API, Qdrant
with JWT RBAC and Meilisearch. Two tenants are provisioned by the control plane; each tenant's
data-plane environment (``alien tenant env``) reaches its own stores only, the servers
themselves refuse it on the other tenant's, and ``alien serve`` booted from that environment
alone (as the operator's rendered Deployment gets it) serves its tenant and nobody else."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import meilisearch
import pytest
from click.testing import CliRunner
from meilisearch.errors import MeilisearchApiError
from minio.error import S3Error
from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import UnexpectedResponse
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from alien.cli import main
from alien.local_servers import LocalServers, free_port
from data_api.local import LocalServer
from resources.kube import TenantSpec, tenant_objects
from resources.postgres import identifier, sqlalchemy_url
from resources.s3objects import S3ObjectStore, s3_client
from tests.conftest import CLUSTER_SECRET

# What only the control plane may hold.
CLUSTER_KEYS = ("ALIEN_CLUSTER_SECRET", "ALIEN_MEILI_MASTER_KEY", "ALIEN_QDRANT_API_KEY")


def alien(env: dict[str, str], *args: str, ok: bool = True) -> Any:
    """Run the CLI in this process with exactly ``env`` for its settings."""
    cleared = {k: None for k in os.environ if k.startswith("ALIEN_") and k != "ALIEN_MODELS_DIR"}
    result = CliRunner().invoke(main, list(args), env={**cleared, **env})
    if ok:
        assert result.exit_code == 0, result.output
        return json.loads(result.output) if "--json" in args else result.output
    assert result.exit_code != 0, result.output
    return result.output


def tenant_env(control: dict[str, str], tenant: str) -> dict[str, str]:
    lines = alien(control, "tenant", "env", tenant).splitlines()
    return dict(line.split("=", 1) for line in lines if line)


@pytest.fixture
def two_tenants(control: dict[str, str]) -> Iterator[tuple[str, str]]:
    a, b = (f"t{uuid.uuid4().hex[:8]}" for _ in range(2))
    for tenant in (a, b):
        alien(control, "tenant", "create", tenant, "--json")
    yield a, b
    for tenant in (a, b):
        alien(control, "tenant", "delete", tenant, "--json")


def _pg_connect(env: dict[str, str], database: str | None = None) -> None:
    url = sqlalchemy_url(env["ALIEN_POSTGRES_URL"]).set(password=env["ALIEN_POSTGRES_PASSWORD"])
    if database is not None:
        url = url.set(database=database)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def test_each_tenants_credentials_are_refused_on_the_others_stores(
    control: dict[str, str], two_tenants: tuple[str, str], servers: LocalServers
) -> None:
    a, b = two_tenants
    assert alien(control, "tenants", "--json") == {"tenants": sorted([a, b])}
    env_a, env_b = tenant_env(control, a), tenant_env(control, b)
    for env, tenant in ((env_a, a), (env_b, b)):
        assert env["ALIEN_TENANT"] == tenant and env["ALIEN_MODE"] == "cluster"
        # The password is in the Secret's key alone, not in the ConfigMap's URL.
        assert make_url(env["ALIEN_POSTGRES_URL"]).password is None
        assert not set(CLUSTER_KEYS) & set(env)
        for secret in (CLUSTER_SECRET, servers.meili_master_key, servers.qdrant_api_key,
                       servers.s3_secret_key):  # fmt: skip
            assert all(secret not in value for value in env.values())

    # PostgreSQL: A's role reaches A's database and is refused B's.
    _pg_connect(env_a)
    for other in (make_url(env_b["ALIEN_POSTGRES_URL"]).database,
                  control["ALIEN_CLUSTER_DATABASE"]):  # the tenant registry itself  # fmt: skip
        with pytest.raises(OperationalError, match="permission denied for database"):
            _pg_connect(env_a, database=other)

    # S3: A's user works in A's bucket and is refused in B's, and sees no other bucket.
    as_a = s3_client(env_a["ALIEN_S3_ENDPOINT"], env_a["ALIEN_S3_ACCESS_KEY"],
                     env_a["ALIEN_S3_SECRET_KEY"], False)  # fmt: skip
    S3ObjectStore(as_a, env_a["ALIEN_S3_BUCKET"]).put_bytes("raw/probe", b"mine")
    for attempt in (
        lambda: S3ObjectStore(as_a, env_b["ALIEN_S3_BUCKET"]).put_bytes("raw/x", b"intrusion"),
        lambda: list(S3ObjectStore(as_a, env_b["ALIEN_S3_BUCKET"]).list("")),
    ):
        with pytest.raises(S3Error, match="AccessDenied"):
            attempt()
    assert [x.name for x in as_a.list_buckets()] == [env_a["ALIEN_S3_BUCKET"]]

    # Qdrant: A's JWT names A's collection only.
    qdrant_a = QdrantClient(url=env_a["ALIEN_QDRANT_URL"], api_key=env_a["ALIEN_QDRANT_TOKEN"])
    assert qdrant_a.count(env_a["ALIEN_QDRANT_COLLECTION"]).count == 0
    with pytest.raises(UnexpectedResponse) as refused:
        qdrant_a.count(env_b["ALIEN_QDRANT_COLLECTION"])
    assert refused.value.status_code == 403
    qdrant_a.close()

    # Meilisearch: A's key is limited to A's index.
    meili_a = meilisearch.Client(env_a["ALIEN_MEILI_URL"], env_a["ALIEN_MEILI_KEY"])
    meili_a.index(env_a["ALIEN_MEILI_INDEX"]).search("anything")
    with pytest.raises(MeilisearchApiError) as denied:
        meili_a.index(env_b["ALIEN_MEILI_INDEX"]).search("anything")
    assert denied.value.status_code == 403
    with pytest.raises(MeilisearchApiError):
        meili_a.get_keys()  # and cannot manage keys


def _rendered_environment(control: dict[str, str], tenant: str) -> dict[str, str]:
    """The Data API container's environment from the operator's rendered objects: its
    ConfigMap's data and its Secret's values, nothing else."""
    from resources.provisioning import tenant_environment
    from resources.settings import AlienSettings

    cleared = {k: v for k, v in control.items() if k.startswith("ALIEN_")}
    settings = AlienSettings(**{k[len("ALIEN_") :].lower(): v for k, v in cleared.items()})
    env = tenant_environment(settings, tenant)
    objects = tenant_objects(TenantSpec(tenantId=tenant), config=env.config, secrets=env.secrets)
    by_kind = {o["kind"]: o for o in objects}
    container = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [
        {"configMapRef": {"name": by_kind["ConfigMap"]["metadata"]["name"]}},
        {"secretRef": {"name": by_kind["Secret"]["metadata"]["name"]}},
    ]
    assert "env" not in container
    return {**by_kind["ConfigMap"]["data"], **by_kind["Secret"]["stringData"]}


@pytest.mark.slow
def test_serve_from_the_tenants_environment_alone(
    tmp_path: Path, control: dict[str, str], two_tenants: tuple[str, str], servers: LocalServers
) -> None:
    a, b = two_tenants
    rendered = _rendered_environment(control, a)
    assert tenant_env(control, a).items() <= rendered.items()  # the same contract
    key_a = alien(control, "keys", "create", "--tenant", a, "--scopes", "read,search,write",
                  "--json")["key"]  # fmt: skip
    key_b = alien(control, "keys", "create", "--tenant", b, "--json")["key"]

    home = tmp_path / "pod-home"  # the pod's emptyDir
    env = {
        **rendered,
        "ALIEN_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "ALIEN_API_WORKER_POLL_SECONDS": "1",
        "PATH": os.environ["PATH"],
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    server = LocalServer(env, tmp_path / "serve.log", timeout=180)
    with server, httpx.Client(base_url=server.url, timeout=60) as http:
        pid = server._proc.pid  # type: ignore[union-attr]
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        names = {item.split(b"=", 1)[0].decode() for item in environ if item}
        assert not set(CLUSTER_KEYS) & names
        assert not {"ALIEN_S3_MINIO_ADMIN"} & names
        values = b"\0".join(environ)
        for secret in (CLUSTER_SECRET, servers.meili_master_key, servers.qdrant_api_key,
                       servers.s3_secret_key):  # fmt: skip
            assert secret.encode() not in values

        auth_a, auth_b = ({"Authorization": f"Bearer {k}"} for k in (key_a, key_b))
        text_body = b"Laminar flow over a heated flat plate in a supersonic wind tunnel.\n"
        upload = http.post(
            "/v1/entries",
            headers=auth_a,
            files={"file": ("plate.txt", text_body, "text/plain")},
        )
        assert upload.status_code == 202, upload.text
        entry = upload.json()["entry_id"]
        deadline = time.monotonic() + 120
        while http.get(f"/v1/entries/{entry}", headers=auth_a).json()["status"] != "indexed":
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        for mode in ("keyword", "hybrid"):
            hits = http.post(
                "/v1/search",
                headers=auth_a,
                json={"query": "heated flat plate supersonic", "mode": mode},
            ).json()["results"]
            assert hits and hits[0]["entry_id"] == entry, (mode, hits)

        # B's key is a credential this process cannot check: 401, on every door.
        assert http.get("/v1/entries", headers=auth_b).status_code == 401
        refused = http.post("/v1/search", headers=auth_b, json={"query": "plate"})
        assert refused.status_code == 401
        assert http.get(f"/v1/entries/{entry}", headers=auth_b).status_code == 401

        assert http.delete(f"/v1/entries/{entry}", headers=auth_a).status_code == 204
        assert http.get(f"/v1/entries/{entry}", headers=auth_a).status_code == 404

    # Gone from every store, as the servers themselves say.
    from resources.settings import AlienSettings
    from resources.stores import TenantRegistry

    settings = AlienSettings(**{k[len("ALIEN_") :].lower(): v for k, v in control.items()
                                if k.startswith("ALIEN_")})  # fmt: skip
    stores = TenantRegistry(settings).open(a)
    assert stores.catalog.get_entry(entry) is None
    assert [o.key for o in stores.objects.list("raw/")] == []
    assert stores.vectors.count(entry) == 0 and stores.vectors.count() == 0
    assert stores.keywords.count(entry) == 0 and stores.keywords.count() == 0


def _dead(url_or_endpoint: str) -> str:
    port = free_port()  # nothing listens there
    if "://" in url_or_endpoint:
        return f"http://127.0.0.1:{port}"
    return f"127.0.0.1:{port}"


@pytest.mark.parametrize("store", ["catalog", "objects", "vectors", "keywords"])
def test_a_failed_creation_resumes_and_a_delete_leaves_nothing(
    control: dict[str, str],
    servers: LocalServers,
    postgres: Any,
    store: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resumed, retired = (f"f{uuid.uuid4().hex[:8]}" for _ in range(2))
    if store == "catalog":
        # The registry lives on the same PostgreSQL server, so "down" is the tenant's own
        # database step failing as a lost connection does, while the registry answers.
        from resources.postgres import PostgresProvisioner

        def lost(self: object, tenant: str, generation: str = "") -> None:
            raise OperationalError("CREATE ROLE", {}, Exception("server closed the connection"))

        with monkeypatch.context() as patched:
            patched.setattr(PostgresProvisioner, "create", lost)
            outputs = [alien(control, "tenant", "create", t, ok=False) for t in (resumed, retired)]
    else:
        setting = {"objects": "ALIEN_S3_ENDPOINT", "vectors": "ALIEN_QDRANT_URL",
                   "keywords": "ALIEN_MEILI_URL"}[store]  # fmt: skip
        broken = {**control, setting: _dead(control[setting])}
        outputs = [alien(broken, "tenant", "create", t, ok=False) for t in (resumed, retired)]
    for output in outputs:
        assert f"{store} could not be provisioned" in output
    assert alien(control, "tenants", "--json") == {"tenants": []}  # half-made: not a tenant
    half = alien(control, "tenants", "--all", "--json")["tenants"]
    assert {t["tenant"]: t["state"] for t in half} == {resumed: "provisioning",
                                                       retired: "provisioning"}  # fmt: skip
    assert half[0]["stores"][store]["state"] == "failed"

    alien(control, "tenant", "create", resumed, "--json")  # the server is back: it resumes
    assert alien(control, "tenants", "--json") == {"tenants": [resumed]}
    alien(control, "tenant", "delete", resumed, "--json")

    assert alien(control, "tenant", "delete", retired, "--json")["found"] is True
    assert alien(control, "tenants", "--all", "--json") == {"tenants": []}
    for tenant in (resumed, retired):
        _assert_nothing_left(postgres, servers, tenant)


def _assert_nothing_left(postgres: Any, servers: LocalServers, tenant: str) -> None:
    from minio.credentials import StaticProvider
    from minio.minioadmin import MinioAdmin

    from resources.meili import index_name

    name = identifier(tenant)
    with postgres.engine.connect() as conn:
        assert (
            conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
            is None
        )
        assert (
            conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :n"), {"n": name}).first()
            is None
        )
    root = s3_client(servers.s3_endpoint, servers.s3_access_key, servers.s3_secret_key, False)
    assert not root.bucket_exists(f"alien-{tenant}")
    admin = MinioAdmin(
        endpoint=servers.s3_endpoint,
        credentials=StaticProvider(servers.s3_access_key, servers.s3_secret_key),
        secure=False,
    )
    with pytest.raises(Exception, match=r"(?i)not.*(exist|found)|XMinioAdminNoSuchUser"):
        admin.user_info(f"alien-{tenant}")
    qdrant = QdrantClient(url=servers.qdrant_url, api_key=servers.qdrant_api_key)
    assert not qdrant.collection_exists(f"alien-{tenant}")
    qdrant.close()
    meili = meilisearch.Client(servers.meili_url, servers.meili_master_key)
    with pytest.raises(MeilisearchApiError):
        meili.get_index(index_name(tenant))
    keys = meili.get_keys({"limit": 1000}).results
    assert [k.uid for k in keys if index_name(tenant) in (k.indexes or [])] == []


def test_a_tenant_created_again_never_takes_its_old_credentials_back(
    control: dict[str, str], servers: LocalServers
) -> None:
    """Whoever kept a deleted tenant's environment reaches nothing of a new tenant that
    takes the same name: the derived credentials include the tenant's generation."""
    tenant = f"r{uuid.uuid4().hex[:8]}"
    alien(control, "tenant", "create", tenant, "--json")
    old = tenant_env(control, tenant)
    alien(control, "tenant", "delete", tenant, "--json")
    alien(control, "tenant", "create", tenant, "--json")
    try:
        new = tenant_env(control, tenant)
        for name in ("ALIEN_POSTGRES_PASSWORD", "ALIEN_S3_SECRET_KEY", "ALIEN_MEILI_KEY",
                     "ALIEN_QDRANT_TOKEN"):  # fmt: skip
            assert old[name] != new[name], name
        with pytest.raises(UnexpectedResponse) as stale_token:
            QdrantClient(url=old["ALIEN_QDRANT_URL"], api_key=old["ALIEN_QDRANT_TOKEN"]).count(
                new["ALIEN_QDRANT_COLLECTION"]
            )
        assert stale_token.value.status_code == 401
        fresh_token = QdrantClient(url=new["ALIEN_QDRANT_URL"], api_key=new["ALIEN_QDRANT_TOKEN"])
        assert fresh_token.count(new["ALIEN_QDRANT_COLLECTION"]).count == 0
        fresh_token.close()
        with pytest.raises(MeilisearchApiError) as refused:
            meilisearch.Client(old["ALIEN_MEILI_URL"], old["ALIEN_MEILI_KEY"]).index(
                new["ALIEN_MEILI_INDEX"]
            ).search("anything")
        assert refused.value.status_code in (401, 403)
        stale = s3_client(old["ALIEN_S3_ENDPOINT"], old["ALIEN_S3_ACCESS_KEY"],
                          old["ALIEN_S3_SECRET_KEY"], False)  # fmt: skip
        with pytest.raises(S3Error, match=r"SignatureDoesNotMatch|InvalidAccessKeyId|AccessDenied"):
            list(S3ObjectStore(stale, new["ALIEN_S3_BUCKET"]).list(""))
        fresh = s3_client(new["ALIEN_S3_ENDPOINT"], new["ALIEN_S3_ACCESS_KEY"],
                          new["ALIEN_S3_SECRET_KEY"], False)  # fmt: skip
        assert list(S3ObjectStore(fresh, new["ALIEN_S3_BUCKET"]).list("")) == []
        _pg_connect(new)
    finally:
        alien(control, "tenant", "delete", tenant, "--json")


def test_the_cluster_catalog_lists_only_created_tenants(
    control: dict[str, str], postgres: Any
) -> None:
    """Dagster's own database (``alien_dagster``) and any database named like a tenant's are
    not tenants: only the registry's rows are."""
    with postgres.engine.connect() as conn:
        conn.execute(text('CREATE DATABASE "alien_lookalike"'))
    try:
        assert alien(control, "tenants", "--json") == {"tenants": []}
    finally:
        with postgres.engine.connect() as conn:
            conn.execute(text('DROP DATABASE IF EXISTS "alien_lookalike"'))
