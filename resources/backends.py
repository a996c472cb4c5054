"""Which backend each store uses, chosen by settings, and provisioning across them.

Embedded (the default) keeps everything under ``ALIEN_HOME``. In cluster mode
(``ALIEN_MODE=cluster``) a store with its server configured uses it: the catalog PostgreSQL
(``ALIEN_POSTGRES_URL``), objects S3 (``ALIEN_S3_ENDPOINT``). A store whose server is not
configured falls back to its embedded backend. ``describe`` says which is which and whether
each answers (``alien status``).
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from resources.analysis import Analyzer
from resources.catalog import Catalog
from resources.keywords import KeywordIndex, SqliteKeywordIndex
from resources.objects import LocalObjectStore, ObjectStore
from resources.settings import AlienSettings
from resources.tenancy import TenantId
from resources.vectors import SqliteVectorIndex, VectorIndex


class BackendConfigError(ValueError):
    """Cluster-mode settings that cannot work together."""


@dataclass(frozen=True)
class StoreStatus:
    store: str
    backend: str
    target: str
    ok: bool
    detail: str = ""


class Backends:
    def __init__(self, settings: AlienSettings) -> None:
        self.settings = settings
        self.cluster = settings.mode == "cluster"
        self._known: set[str] = set()
        self._lock = threading.Lock()
        if self.uses_postgres and settings.cluster_secret is None:
            raise BackendConfigError("ALIEN_POSTGRES_URL needs ALIEN_CLUSTER_SECRET")

    # -- choices -------------------------------------------------------------------------
    @property
    def uses_postgres(self) -> bool:
        return self.cluster and bool(self.settings.postgres_url)

    @property
    def uses_s3(self) -> bool:
        return self.cluster and bool(self.settings.s3_endpoint)

    @cached_property
    def minio_admin(self):  # type: ignore[no-untyped-def]
        from minio.credentials import StaticProvider
        from minio.minioadmin import MinioAdmin

        s = self.settings
        secret = s.s3_secret_key.get_secret_value() if s.s3_secret_key else ""
        return MinioAdmin(
            endpoint=s.s3_endpoint or "",
            credentials=StaticProvider(s.s3_access_key or "", secret),
            secure=s.s3_secure,
        )

    @property
    def uses_meili(self) -> bool:
        return self.cluster and bool(self.settings.meili_url)

    @property
    def _meili_master(self) -> str:
        key = self.settings.meili_master_key
        return key.get_secret_value() if key else ""

    @cached_property
    def meili_admin(self):  # type: ignore[no-untyped-def]
        """A client with the master key: provisioning only."""
        import meilisearch

        return meilisearch.Client(self.settings.meili_url, self._meili_master or None)

    @property
    def uses_qdrant(self) -> bool:
        return self.cluster and bool(self.settings.qdrant_url)

    @cached_property
    def qdrant_admin(self):  # type: ignore[no-untyped-def]
        """A client with the cluster's API key: provisioning only, never the data plane."""
        from qdrant_client import QdrantClient

        url = self.settings.qdrant_url or ""
        if url.startswith("local:"):  # Qdrant's embedded mode (one process per path)
            client = QdrantClient(path=url.removeprefix("local:"))
        else:
            client = QdrantClient(url=url, api_key=self._qdrant_key or None)
        atexit.register(client.close)  # before interpreter teardown, not in __del__ during it
        return client

    @property
    def _qdrant_key(self) -> str:
        key = self.settings.qdrant_api_key
        return key.get_secret_value() if key else ""

    @cached_property
    def postgres(self):  # type: ignore[no-untyped-def]
        from resources.postgres import PostgresProvisioner

        secret = self.settings.cluster_secret
        assert self.settings.postgres_url and secret is not None
        return PostgresProvisioner(self.settings.postgres_url, secret.get_secret_value())

    @cached_property
    def s3(self):  # type: ignore[no-untyped-def]
        from resources.s3objects import s3_client

        s = self.settings
        assert s.s3_endpoint
        return s3_client(
            s.s3_endpoint,
            s.s3_access_key or "",
            s.s3_secret_key.get_secret_value() if s.s3_secret_key else "",
            s.s3_secure,
        )

    # -- handles -------------------------------------------------------------------------
    def catalog(self, tenant: TenantId, root: Path) -> Catalog:
        if self.uses_postgres:
            from resources.postgres import tenant_engine

            return Catalog(tenant, tenant_engine(self.postgres.describe(tenant).url))
        return Catalog.embedded(tenant, root / "catalog.db")

    def objects(self, tenant: TenantId, root: Path) -> ObjectStore:
        if self.uses_s3:
            from resources.s3objects import S3ObjectStore, bucket_name

            return S3ObjectStore(self.s3, bucket_name(tenant, self.settings.s3_bucket_prefix))
        return LocalObjectStore(root / "objects")

    def vectors(self, tenant: TenantId, root: Path, model: str, dim: int) -> VectorIndex:
        if self.uses_qdrant:
            from resources.qdrant import QdrantVectorIndex, collection_name

            name = collection_name(tenant)
            url = self.settings.qdrant_url or ""
            if self._qdrant_key and not url.startswith("local:"):  # JWT RBAC: one collection
                return QdrantVectorIndex.scoped(url, self._qdrant_key, name, model, dim)
            return QdrantVectorIndex(self.qdrant_admin, name, model, dim)
        return SqliteVectorIndex(root / "vectors.db", model=model, dim=dim)

    def keywords(self, tenant: TenantId, root: Path, analyzer: Analyzer) -> KeywordIndex:
        if self.uses_meili:
            import meilisearch

            from resources.meili import MeiliKeywordIndex, derive_key, index_name, key_uid

            name = index_name(tenant)
            # The data plane holds the tenant's scoped key, derived, never the master key.
            key = (
                derive_key(self._meili_master, key_uid(name, external=False))
                if (self._meili_master)
                else None
            )
            return MeiliKeywordIndex(meilisearch.Client(self.settings.meili_url, key), name)
        return SqliteKeywordIndex(root / "keywords.db", analyzer=analyzer)

    # -- tenants -------------------------------------------------------------------------
    def exists(self, tenant: TenantId, root: Path) -> bool:
        """Whether the tenant is provisioned (a server's positive answer is remembered)."""
        if not self.uses_postgres:
            return (root / "catalog.db").is_file()
        if str(tenant) in self._known:
            return True
        found = self.postgres.exists(tenant)
        if found:
            with self._lock:
                self._known.add(str(tenant))
        return found

    def tenants(self, tenants_dir: Path) -> list[TenantId]:
        if self.uses_postgres:
            return self.postgres.tenants()
        if not tenants_dir.is_dir():
            return []
        out = []
        for child in sorted(tenants_dir.iterdir()):
            if (child / "catalog.db").is_file():
                with contextlib.suppress(ValueError):
                    out.append(TenantId(child.name))
        return out

    STORES = ("catalog", "objects", "vectors", "keywords")

    def provision(self, tenant: TenantId, model: str, dim: int) -> None:
        """Create the tenant's server-side stores (idempotent); embedded ones need nothing."""
        for store in self.STORES:
            self.provision_store(store, tenant, model, dim)

    def provision_store(self, store: str, tenant: TenantId, model: str, dim: int) -> bool:
        """Create one store's server-side part (idempotent); False when it is embedded."""
        if store == "catalog" and self.uses_postgres:
            self.postgres.create(tenant)
        elif store == "vectors" and self.uses_qdrant:
            from resources.qdrant import QdrantVectorIndex, collection_name

            QdrantVectorIndex(self.qdrant_admin, collection_name(tenant), model, dim).create()
        elif store == "keywords" and self.uses_meili:
            from resources.meili import MeiliKeywordIndex, index_name

            index = MeiliKeywordIndex(self.meili_admin, index_name(tenant))
            index.create()
            if self._meili_master:
                index.create_key(external=False)
        elif store == "objects" and self.uses_s3:
            from resources.minio_tenancy import apply_bucket_policy, provision_tenant_user
            from resources.s3objects import S3ObjectStore, bucket_name

            bucket = bucket_name(tenant, self.settings.s3_bucket_prefix)
            S3ObjectStore(self.s3, bucket).create()
            apply_bucket_policy(self.s3, bucket, require_tls=self.settings.s3_secure)
            if self.settings.s3_minio_admin and self.settings.cluster_secret is not None:
                provision_tenant_user(
                    self.minio_admin,
                    tenant,
                    self.settings.cluster_secret.get_secret_value(),
                    self.settings.s3_bucket_prefix,
                )
        elif store not in self.STORES:
            raise ValueError(f"unknown store {store!r}")
        else:
            return False
        return True

    def store_exists(self, store: str, tenant: TenantId, root: Path) -> bool:
        """Whether the tenant's part of ``store`` is there (drift checks); asks the server."""
        if store == "catalog":
            if self.uses_postgres:
                return self.postgres.exists(tenant)
            return (root / "catalog.db").is_file()
        if store == "objects":
            if self.uses_s3:
                from resources.s3objects import bucket_name

                return bool(
                    self.s3.bucket_exists(bucket_name(tenant, self.settings.s3_bucket_prefix))
                )
            return (root / "objects").is_dir()
        if store == "vectors":
            if self.uses_qdrant:
                from resources.qdrant import collection_name

                return bool(self.qdrant_admin.collection_exists(collection_name(tenant)))
            return (root / "vectors.db").is_file()
        if store == "keywords":
            if self.uses_meili:
                from resources.meili import MeiliKeywordIndex, index_name

                return MeiliKeywordIndex(self.meili_admin, index_name(tenant)).exists()
            return (root / "keywords.db").is_file()
        raise ValueError(f"unknown store {store!r}")

    def retire(self, tenant: TenantId) -> None:
        """Remove the tenant's server-side stores (idempotent)."""
        with self._lock:
            self._known.discard(str(tenant))
        if self.uses_s3:
            from resources.s3objects import S3ObjectStore, bucket_name

            S3ObjectStore(self.s3, bucket_name(tenant, self.settings.s3_bucket_prefix)).drop()
            if self.settings.s3_minio_admin:
                from resources.minio_tenancy import retire_tenant_user

                retire_tenant_user(self.minio_admin, tenant, self.settings.s3_bucket_prefix)
        if self.uses_qdrant:
            from resources.qdrant import QdrantVectorIndex, collection_name

            QdrantVectorIndex(self.qdrant_admin, collection_name(tenant), "", 0).drop()
        if self.uses_meili:
            from resources.meili import MeiliKeywordIndex, index_name

            MeiliKeywordIndex(self.meili_admin, index_name(tenant)).drop()
        if self.uses_postgres:
            self.postgres.drop(tenant)

    # -- status --------------------------------------------------------------------------
    def describe(self) -> list[StoreStatus]:
        """Each store's backend and whether it answers now."""
        s = self.settings
        out = []
        if self.uses_postgres:
            out.append(_probe("catalog", "postgresql", _safe_url(s.postgres_url), self._pg_ping))
        else:
            out.append(_probe("catalog", "sqlite", str(s.tenants_dir), s.tenants_dir.parent.exists))
        if self.uses_s3:
            out.append(_probe("objects", "s3", str(s.s3_endpoint), self.s3.list_buckets))
        else:
            out.append(_probe("objects", "directory", str(s.tenants_dir), lambda: True))
        if self.uses_qdrant:
            out.append(
                _probe("vectors", "qdrant", str(s.qdrant_url), self.qdrant_admin.get_collections)
            )
        else:
            out.append(_probe("vectors", "embedded", "sqlite + numpy per tenant", lambda: True))
        if self.uses_meili:
            out.append(_probe("keywords", "meilisearch", str(s.meili_url), self.meili_admin.health))
        else:
            out.append(
                _probe("keywords", "embedded", "sqlite + numpy BM25 per tenant", lambda: True)
            )
        if s.ocr == "mistral":
            out.append(
                _probe("ocr", "mistral", s.mistral_ocr_model, lambda: s.mistral_api_key is not None)
            )
        else:
            from resources.ocr import TesseractOcr

            out.append(_probe("ocr", "local", "pdfium + tesseract", TesseractOcr.available))
        if s.platform_url:
            out.append(
                _probe("platform", "http", s.platform_url, lambda: self._reach(s.platform_url))
            )
        else:
            out.append(_probe("platform", "outbox", str(s.system_dir / "outbox.db"), lambda: True))
        return out

    @staticmethod
    def _reach(url: str | None) -> None:
        import httpx

        httpx.get(url or "", timeout=5)  # any HTTP answer means it is reachable

    def _pg_ping(self) -> None:
        from sqlalchemy import text

        with self.postgres.engine.connect() as conn:
            conn.execute(text("SELECT 1"))


def _safe_url(url: str | None) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True) if url else ""


def _probe(store: str, backend: str, target: str, check: object) -> StoreStatus:
    try:
        result = check()  # type: ignore[operator]
        ok = result is not False
        return StoreStatus(store, backend, target, ok, "" if ok else "not reachable")
    except Exception as err:
        return StoreStatus(store, backend, target, False, f"{type(err).__name__}: {err}"[:300])
