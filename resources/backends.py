"""Which backend each store uses: one backend object per store kind, chosen once from settings.

Embedded (the default) keeps everything under ``ALIEN_HOME``. In cluster mode
(``ALIEN_MODE=cluster``) a store whose server is configured uses it: the catalog PostgreSQL
(``ALIEN_POSTGRES_URL``), objects S3 (``ALIEN_S3_ENDPOINT``), vectors Qdrant
(``ALIEN_QDRANT_URL``), keywords Meilisearch (``ALIEN_MEILI_URL``); any other stays embedded.

Two planes hold different credentials:

- the **control plane** (the operator, ``alien tenant``, a CLI run with cluster keys) holds
  the cluster's keys. It provisions and retires tenants' stores, and opens a tenant's stores
  with that tenant's own credentials where the server has them (the catalog as the tenant's
  role, Qdrant with a JWT for the one collection, Meilisearch with the index's key);
- a tenant's **data plane** (``ALIEN_TENANT`` set: its Data API pod, its runs) holds only
  that tenant's credentials, as ``tenant_environment`` gives them, and can open nothing else;
  the servers themselves refuse those credentials anywhere else.

Every backend answers the same questions (``open``, ``provision``, ``exists``, ``retire``,
``ping``, ``tenant_env``), so nothing above this module branches on store names.
"""

from __future__ import annotations

import atexit
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Protocol

from resources.analysis import Analyzer
from resources.catalog import Catalog
from resources.keywords import KeywordIndex, SqliteKeywordIndex
from resources.objects import LocalObjectStore, ObjectStore
from resources.settings import AlienSettings
from resources.tenancy import TenantId, UnknownTenantError
from resources.vectors import SqliteVectorIndex, VectorIndex, VectorSpace


class BackendConfigError(ValueError):
    """Settings that cannot work together."""


class ControlPlaneOnlyError(PermissionError):
    """Provisioning or retiring asked of a tenant's data plane, which holds no cluster key."""


@dataclass(frozen=True)
class StoreStatus:
    store: str
    backend: str
    target: str
    ok: bool
    detail: str = ""


@dataclass
class TenantEnvironment:
    """The settings of one tenant's data plane: ``config`` for its ConfigMap, ``secrets`` for
    its Secret. Together they are everything its processes need, and no cluster key."""

    config: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)

    def update(self, other: TenantEnvironment) -> None:
        self.config.update(other.config)
        self.secrets.update(other.secrets)

    def merged(self) -> dict[str, str]:
        return {**self.config, **self.secrets}


def _secret(value: Any) -> str:
    return value.get_secret_value() if value is not None else ""


class VectorSpaces(Protocol):
    """What a vectors backend does for a tenant's vector spaces (one collection each)."""

    def open(
        self, tenant: TenantId, root: Path, space: VectorSpace, generation: str = ""
    ) -> VectorIndex: ...
    def prepare_space(self, tenant: TenantId, root: Path, space: VectorSpace) -> None: ...
    def drop_space(self, tenant: TenantId, root: Path, space: VectorSpace) -> None: ...


class StoreBackend:
    """One store kind's backend. Embedded backends keep files under the tenant's directory:
    nothing to provision on a server, nothing to hand a data plane."""

    kind: ClassVar[str]
    backend: ClassVar[str]
    server: ClassVar[bool] = False

    def __init__(self, settings: AlienSettings) -> None:
        self.settings = settings

    def target(self) -> str:
        return str(self.settings.tenants_dir)

    def provision(self, tenant: TenantId, root: Path, generation: str = "") -> None:
        """Create the tenant's server-side part (idempotent)."""

    def exists(self, tenant: TenantId, root: Path) -> bool:
        raise NotImplementedError

    def retire(self, tenant: TenantId, root: Path, generation: str = "") -> None:
        """Remove the tenant's server-side part (idempotent)."""

    def ping(self) -> object:
        return True

    def tenant_env(self, tenant: TenantId, generation: str = "") -> TenantEnvironment:
        return TenantEnvironment()

    def status(self) -> StoreStatus:
        return _probe(self.kind, self.backend, self.target(), self.ping)


class TenantPlaneBackend(StoreBackend):
    """A server backend of one tenant's data plane: it opens that tenant's store with that
    tenant's credentials and refuses everything else."""

    server = True

    def only(self, tenant: TenantId) -> TenantId:
        if tenant != self.settings.tenant:
            raise UnknownTenantError(f"unknown tenant {tenant!r}")
        return tenant

    def refuse(self) -> ControlPlaneOnlyError:
        return ControlPlaneOnlyError(
            f"this process is tenant {self.settings.tenant!r}'s data plane: provisioning and "
            "retiring need the control plane's keys"
        )

    def provision(self, tenant: TenantId, root: Path, generation: str = "") -> None:
        raise self.refuse()

    def retire(self, tenant: TenantId, root: Path, generation: str = "") -> None:
        raise self.refuse()

    def tenant_env(self, tenant: TenantId, generation: str = "") -> TenantEnvironment:
        raise self.refuse()

    def exists(self, tenant: TenantId, root: Path) -> bool:
        return tenant == self.settings.tenant and bool(self.ping())


# -- catalog ------------------------------------------------------------------------------
class SqliteCatalogBackend(StoreBackend):
    kind, backend = "catalog", "sqlite"

    def open(self, tenant: TenantId, root: Path, generation: str = "") -> Catalog:
        return Catalog.embedded(tenant, root / "catalog.db")

    def exists(self, tenant: TenantId, root: Path) -> bool:
        return (root / "catalog.db").is_file()

    def ping(self) -> object:
        return self.settings.tenants_dir.parent.exists()


class PostgresCatalogBackend(StoreBackend):
    """A database and role per tenant, made through the admin connection; the catalog
    connects as the tenant's role."""

    kind, backend, server = "catalog", "postgresql", True

    def __init__(self, settings: AlienSettings) -> None:
        super().__init__(settings)
        if settings.cluster_secret is None:
            raise BackendConfigError("ALIEN_POSTGRES_URL needs ALIEN_CLUSTER_SECRET")

    @cached_property
    def provisioner(self):  # type: ignore[no-untyped-def]
        from resources.postgres import PostgresProvisioner

        return PostgresProvisioner(
            self.settings.postgres_url or "", _secret(self.settings.cluster_secret)
        )

    def target(self) -> str:
        return _safe_url(self.settings.postgres_url)

    def open(self, tenant: TenantId, root: Path, generation: str = "") -> Catalog:
        from resources.postgres import tenant_engine

        return Catalog(tenant, tenant_engine(self.provisioner.describe(tenant, generation).url))

    def provision(self, tenant: TenantId, root: Path, generation: str = "") -> None:
        self.provisioner.create(tenant, generation)

    def exists(self, tenant: TenantId, root: Path) -> bool:
        return bool(self.provisioner.exists(tenant))

    def retire(self, tenant: TenantId, root: Path, generation: str = "") -> None:
        self.provisioner.drop(tenant)

    def ping(self) -> object:
        from sqlalchemy import text

        with self.provisioner.engine.connect() as conn:
            return conn.execute(text("SELECT 1")).scalar()

    def tenant_env(self, tenant: TenantId, generation: str = "") -> TenantEnvironment:
        from sqlalchemy.engine import URL

        db = self.provisioner.describe(tenant, generation)
        # The password goes to the Secret only (URL.set cannot clear it: build the URL anew).
        url = URL.create(
            "postgresql",
            username=db.url.username,
            host=db.url.host,
            port=db.url.port,
            database=db.url.database,
            query=db.url.query,
        )
        return TenantEnvironment(
            {"ALIEN_POSTGRES_URL": url.render_as_string(hide_password=False)},
            {"ALIEN_POSTGRES_PASSWORD": db.password},
        )


class PostgresTenantCatalogBackend(TenantPlaneBackend):
    """The data plane's catalog: the tenant's database as the tenant's role, nothing else."""

    kind, backend = "catalog", "postgresql"

    @cached_property
    def engine(self):  # type: ignore[no-untyped-def]
        from resources.postgres import sqlalchemy_url, tenant_engine

        url = sqlalchemy_url(self.settings.postgres_url or "")
        if self.settings.postgres_password is not None:
            url = url.set(password=_secret(self.settings.postgres_password))
        return tenant_engine(url)

    def target(self) -> str:
        return _safe_url(self.settings.postgres_url)

    def open(self, tenant: TenantId, root: Path, generation: str = "") -> Catalog:
        return Catalog(self.only(tenant), self.engine)

    def ping(self) -> object:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return conn.execute(text("SELECT 1")).scalar()


# -- objects ------------------------------------------------------------------------------
class LocalObjectsBackend(StoreBackend):
    kind, backend = "objects", "directory"

    def open(self, tenant: TenantId, root: Path, generation: str = "") -> ObjectStore:
        return LocalObjectStore(root / "objects")

    def exists(self, tenant: TenantId, root: Path) -> bool:
        return (root / "objects").is_dir()


class _S3Client:
    """The S3 client of these settings' credentials."""

    settings: AlienSettings

    @cached_property
    def s3(self):  # type: ignore[no-untyped-def]
        from resources.s3objects import s3_client

        s = self.settings
        return s3_client(
            s.s3_endpoint or "", s.s3_access_key or "", _secret(s.s3_secret_key), s.s3_secure
        )

    def target(self) -> str:
        return str(self.settings.s3_endpoint)


class S3ObjectsBackend(_S3Client, StoreBackend):
    """A bucket per tenant; with MinIO's admin API, a user per tenant whose one IAM policy is
    its bucket (the data plane's credentials)."""

    kind, backend, server = "objects", "s3", True

    def bucket(self, tenant: TenantId) -> str:
        from resources.s3objects import bucket_name

        return bucket_name(tenant, self.settings.s3_bucket_prefix)

    @cached_property
    def admin(self):  # type: ignore[no-untyped-def]
        from minio.credentials import StaticProvider
        from minio.minioadmin import MinioAdmin

        s = self.settings
        return MinioAdmin(
            endpoint=s.s3_endpoint or "",
            credentials=StaticProvider(s.s3_access_key or "", _secret(s.s3_secret_key)),
            secure=s.s3_secure,
        )

    def open(self, tenant: TenantId, root: Path, generation: str = "") -> ObjectStore:
        from resources.s3objects import S3ObjectStore

        return S3ObjectStore(self.s3, self.bucket(tenant))

    def provision(self, tenant: TenantId, root: Path, generation: str = "") -> None:
        from resources.minio_tenancy import apply_bucket_policy, provision_tenant_user
        from resources.s3objects import S3ObjectStore

        bucket = self.bucket(tenant)
        S3ObjectStore(self.s3, bucket).create()
        apply_bucket_policy(self.s3, bucket, require_tls=self.settings.s3_secure)
        if self.settings.s3_minio_admin:
            provision_tenant_user(
                self.admin,
                tenant,
                _secret(self.settings.cluster_secret),
                self.settings.s3_bucket_prefix,
                generation,
            )

    def exists(self, tenant: TenantId, root: Path) -> bool:
        return bool(self.s3.bucket_exists(self.bucket(tenant)))

    def retire(self, tenant: TenantId, root: Path, generation: str = "") -> None:
        from resources.s3objects import S3ObjectStore

        S3ObjectStore(self.s3, self.bucket(tenant)).drop()
        if self.settings.s3_minio_admin:
            from resources.minio_tenancy import retire_tenant_user

            retire_tenant_user(self.admin, tenant, self.settings.s3_bucket_prefix)

    def ping(self) -> object:
        # One HEAD, whatever the number of tenants' buckets (a listing would grow with it).
        self.s3.bucket_exists(f"{self.settings.s3_bucket_prefix}-probe")
        return True

    def tenant_env(self, tenant: TenantId, generation: str = "") -> TenantEnvironment:
        from resources.minio_tenancy import tenant_access_key, tenant_secret_key

        s = self.settings
        if not s.s3_minio_admin or s.cluster_secret is None:
            raise BackendConfigError(
                "a tenant's data plane needs its own S3 user: set ALIEN_S3_MINIO_ADMIN=true "
                "(MinIO's admin API) and ALIEN_CLUSTER_SECRET; without them the only S3 "
                "credentials are the cluster's, which never leave the control plane"
            )
        return TenantEnvironment(
            {
                "ALIEN_S3_ENDPOINT": s.s3_endpoint or "",
                "ALIEN_S3_SECURE": str(s.s3_secure).lower(),
                "ALIEN_S3_BUCKET": self.bucket(tenant),
                "ALIEN_S3_ACCESS_KEY": tenant_access_key(tenant, s.s3_bucket_prefix),
            },
            {
                "ALIEN_S3_SECRET_KEY": tenant_secret_key(
                    _secret(s.cluster_secret), tenant, generation
                )
            },
        )


class S3TenantObjectsBackend(_S3Client, TenantPlaneBackend):
    kind, backend = "objects", "s3"

    def open(self, tenant: TenantId, root: Path, generation: str = "") -> ObjectStore:
        from resources.s3objects import S3ObjectStore

        self.only(tenant)
        return S3ObjectStore(self.s3, self.settings.s3_bucket or "")

    def ping(self) -> object:
        return self.s3.bucket_exists(self.settings.s3_bucket or "")


# -- vectors ------------------------------------------------------------------------------
class EmbeddedVectorsBackend(StoreBackend):
    """A SQLite file per vector space under the tenant's directory."""

    kind, backend = "vectors", "embedded"

    def target(self) -> str:
        return "sqlite + numpy per tenant"

    @staticmethod
    def path(root: Path, space: VectorSpace) -> Path:
        return root / (f"vectors-{space.name}.db" if space.name else "vectors.db")

    def open(
        self, tenant: TenantId, root: Path, space: VectorSpace, generation: str = ""
    ) -> VectorIndex:
        return SqliteVectorIndex(self.path(root, space), model=space.model, dim=space.dim)

    def prepare_space(self, tenant: TenantId, root: Path, space: VectorSpace) -> None:
        """Nothing to make: the file is created by its first handle."""

    def drop_space(self, tenant: TenantId, root: Path, space: VectorSpace) -> None:
        path = self.path(root, space)
        for part in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            part.unlink(missing_ok=True)

    def exists(self, tenant: TenantId, root: Path) -> bool:
        return any(root.glob("vectors*.db"))


class QdrantVectorsBackend(StoreBackend):
    """A collection per tenant, made with the cluster's API key; handles hold a JWT that names
    only the tenant's collection (renewed before it expires)."""

    kind, backend, server = "vectors", "qdrant", True

    def __init__(self, settings: AlienSettings, model: str, dim: int) -> None:
        super().__init__(settings)
        self.model, self.dim = model, dim

    @property
    def url(self) -> str:
        return self.settings.qdrant_url or ""

    @property
    def local(self) -> bool:
        return self.url.startswith("local:")  # Qdrant's embedded mode: one process per path

    def target(self) -> str:
        return self.url

    def collection(self, tenant: TenantId, space: VectorSpace | None = None) -> str:
        from resources.qdrant import collection_name, space_collection

        return space_collection(collection_name(tenant), space)

    def collections(self, tenant: TenantId) -> list[str]:
        """The tenant's collections: its first one and one per later vector space."""
        from resources.qdrant import space_collections

        return space_collections(self.admin, self.collection(tenant))

    @cached_property
    def admin(self):  # type: ignore[no-untyped-def]
        """A client with the cluster's API key: provisioning only, never the data plane."""
        from qdrant_client import QdrantClient

        from resources.qdrant import server_client

        if self.local:
            client = QdrantClient(path=self.url.removeprefix("local:"))
        else:
            client = server_client(self.url, _secret(self.settings.qdrant_api_key) or None)
        atexit.register(client.close)  # before interpreter teardown, not in __del__ during it
        return client

    def _index(self, tenant: TenantId, space: VectorSpace):  # type: ignore[no-untyped-def]
        from resources.qdrant import QdrantVectorIndex

        return QdrantVectorIndex(self.admin, self.collection(tenant, space), space.model, space.dim)

    def open(
        self, tenant: TenantId, root: Path, space: VectorSpace, generation: str = ""
    ) -> VectorIndex:
        from resources.qdrant import QdrantVectorIndex

        key = _secret(self.settings.qdrant_api_key)
        if key and not self.local:
            name = self.collection(tenant, space)
            return QdrantVectorIndex.scoped(self.url, key, name, space.model, space.dim)
        return self._index(tenant, space)

    def provision(self, tenant: TenantId, root: Path, generation: str = "") -> None:
        from resources.qdrant import register_generation

        if not self.exists(tenant, root):  # a tenant's first space; later ones: prepare_space
            self._index(tenant, VectorSpace(self.model, self.dim)).create()
        if generation and not self.local:
            register_generation(self.admin, tenant, generation)

    def prepare_space(self, tenant: TenantId, root: Path, space: VectorSpace) -> None:
        self._index(tenant, space).create()

    def drop_space(self, tenant: TenantId, root: Path, space: VectorSpace) -> None:
        self._index(tenant, space).drop()

    def exists(self, tenant: TenantId, root: Path) -> bool:
        """One call while the tenant's first collection is there (listing every collection
        of the server only after a model change dropped it)."""
        return bool(self.admin.collection_exists(self.collection(tenant))) or bool(
            self.collections(tenant)
        )

    def retire(self, tenant: TenantId, root: Path, generation: str = "") -> None:
        from resources.qdrant import forget_generation

        if not self.local:
            forget_generation(self.admin, tenant)  # its tokens stop working now
        for name in self.collections(tenant):
            self.admin.delete_collection(name)

    def ping(self) -> object:
        return self.admin.get_collections()

    def tenant_env(self, tenant: TenantId, generation: str = "") -> TenantEnvironment:
        from resources.qdrant import tenant_token, windowed_expiry

        if self.local:
            raise BackendConfigError("Qdrant's local mode (local:) cannot be shared with a pod")
        key = _secret(self.settings.qdrant_api_key)
        if not key:
            raise BackendConfigError(
                "a tenant's data plane needs a JWT for its collection: set ALIEN_QDRANT_API_KEY "
                "(with JWT RBAC on the server); a Qdrant without a key admits every tenant"
            )
        expires = windowed_expiry(self.settings.qdrant_token_ttl_seconds)
        # The token names the tenant's collections: its first, the configured model's space
        # (made by ``prepare_space`` from the control plane) and any other it still has.
        configured = VectorSpace.of(self.model, self.dim)
        names = {self.collection(tenant), self.collection(tenant, configured)}
        names.update(self.collections(tenant))
        token = tenant_token(key, sorted(names), expires_at=expires, generation=generation or None)
        config = {
            "ALIEN_QDRANT_URL": self.url,
            "ALIEN_QDRANT_COLLECTION": self.collection(tenant),
            # The model whose space the token names: the data plane embeds with it.
            "ALIEN_EMBEDDING_MODEL": self.settings.embedding_model,
        }
        return TenantEnvironment(config, {"ALIEN_QDRANT_TOKEN": token})


class QdrantTenantVectorsBackend(TenantPlaneBackend):
    kind, backend = "vectors", "qdrant"

    @cached_property
    def client(self):  # type: ignore[no-untyped-def]
        from resources.qdrant import server_client

        token = _secret(self.settings.qdrant_token) or None
        client = server_client(self.settings.qdrant_url or "", token)
        atexit.register(client.close)
        return client

    def target(self) -> str:
        return self.settings.qdrant_url or ""

    def _collection(self, space: VectorSpace) -> str:
        from resources.qdrant import space_collection

        return space_collection(self.settings.qdrant_collection or "", space)

    def open(
        self, tenant: TenantId, root: Path, space: VectorSpace, generation: str = ""
    ) -> VectorIndex:
        from resources.qdrant import QdrantVectorIndex

        self.only(tenant)
        return QdrantVectorIndex(self.client, self._collection(space), space.model, space.dim)

    def prepare_space(self, tenant: TenantId, root: Path, space: VectorSpace) -> None:
        """A data plane cannot make a collection (Qdrant wants global access for that): the
        control plane makes the configured model's one when it provisions the tenant."""
        from qdrant_client.http.exceptions import UnexpectedResponse

        self.only(tenant)
        try:
            exists = self.client.collection_exists(self._collection(space))
        except UnexpectedResponse as err:  # 403: a token made before the model changed
            if err.status_code != 403:
                raise
            exists = False
        if not exists:
            raise ControlPlaneOnlyError(
                f"the vector collection for model {space.model!r} ({space.dim} dimensions) "
                "does not exist yet; the control plane makes it when it provisions the tenant "
                "with that model configured (the operator, or `alien tenant create` again)"
            )

    def drop_space(self, tenant: TenantId, root: Path, space: VectorSpace) -> None:
        """Its points only: the empty collection goes when the control plane retires it."""
        from qdrant_client import models as qm

        self.only(tenant)
        self.client.delete(self._collection(space), qm.FilterSelector(filter=qm.Filter()))

    def ping(self) -> object:
        return self.client.collection_exists(self.settings.qdrant_collection or "")


# -- keywords -----------------------------------------------------------------------------
class EmbeddedKeywordsBackend(StoreBackend):
    kind, backend = "keywords", "embedded"

    def target(self) -> str:
        return "sqlite + numpy BM25 per tenant"

    def open(
        self, tenant: TenantId, root: Path, analyzer: Analyzer, generation: str = ""
    ) -> KeywordIndex:
        return SqliteKeywordIndex(root / "keywords.db", analyzer=analyzer)

    def exists(self, tenant: TenantId, root: Path) -> bool:
        return (root / "keywords.db").is_file()


class MeiliKeywordsBackend(StoreBackend):
    """An index per tenant, made with the master key; handles hold the key limited to the
    tenant's index (its value derived as Meilisearch does, so nothing stores it)."""

    kind, backend, server = "keywords", "meilisearch", True

    @property
    def master(self) -> str:
        return _secret(self.settings.meili_master_key)

    def target(self) -> str:
        return self.settings.meili_url or ""

    @cached_property
    def admin(self):  # type: ignore[no-untyped-def]
        import meilisearch

        return meilisearch.Client(self.settings.meili_url, self.master or None)

    def index(self, tenant: TenantId) -> str:
        from resources.meili import index_name

        return index_name(tenant)

    def data_key(self, tenant: TenantId, generation: str) -> str | None:
        from resources.meili import derive_key, key_uid

        if not self.master:
            return None
        uid = key_uid(self.index(tenant), external=False, generation=generation)
        return derive_key(self.master, uid)

    def open(
        self, tenant: TenantId, root: Path, analyzer: Analyzer, generation: str = ""
    ) -> KeywordIndex:
        import meilisearch

        from resources.meili import MeiliKeywordIndex

        client = meilisearch.Client(self.settings.meili_url, self.data_key(tenant, generation))
        return MeiliKeywordIndex(client, self.index(tenant))

    def provision(self, tenant: TenantId, root: Path, generation: str = "") -> None:
        from resources.meili import MeiliKeywordIndex

        index = MeiliKeywordIndex(self.admin, self.index(tenant))
        index.create()
        if self.master:
            index.create_key(external=False, generation=generation)
            if generation:
                index.delete_keys(generations=("",))  # a key from before generations

    def exists(self, tenant: TenantId, root: Path) -> bool:
        from resources.meili import MeiliKeywordIndex

        return MeiliKeywordIndex(self.admin, self.index(tenant)).exists()

    def retire(self, tenant: TenantId, root: Path, generation: str = "") -> None:
        from resources.meili import MeiliKeywordIndex

        index = MeiliKeywordIndex(self.admin, self.index(tenant))
        index.drop()
        if self.master:
            index.delete_keys(generations=(generation, "") if generation else ("",))

    def ping(self) -> object:
        return self.admin.health()

    def tenant_env(self, tenant: TenantId, generation: str = "") -> TenantEnvironment:
        env = TenantEnvironment(
            {
                "ALIEN_MEILI_URL": self.settings.meili_url or "",
                "ALIEN_MEILI_INDEX": self.index(tenant),
            }
        )
        key = self.data_key(tenant, generation)
        if key:
            env.secrets["ALIEN_MEILI_KEY"] = key
        return env


class MeiliTenantKeywordsBackend(TenantPlaneBackend):
    kind, backend = "keywords", "meilisearch"

    @cached_property
    def client(self):  # type: ignore[no-untyped-def]
        import meilisearch

        return meilisearch.Client(self.settings.meili_url, _secret(self.settings.meili_key) or None)

    def target(self) -> str:
        return self.settings.meili_url or ""

    def open(
        self, tenant: TenantId, root: Path, analyzer: Analyzer, generation: str = ""
    ) -> KeywordIndex:
        from resources.meili import MeiliKeywordIndex

        self.only(tenant)
        return MeiliKeywordIndex(self.client, self.settings.meili_index or "")

    def exists(self, tenant: TenantId, root: Path) -> bool:
        from resources.meili import MeiliKeywordIndex

        index = MeiliKeywordIndex(self.client, self.settings.meili_index or "")
        return tenant == self.settings.tenant and index.exists()

    def ping(self) -> object:
        return self.client.health()


# -- the set ------------------------------------------------------------------------------
# Settings a tenant's data plane takes over from the control plane as they are. Not among
# them: cluster keys, and the HS256 service-token secret (shared by every tenant's pod, it
# would let one pod mint tokens for another tenant: tenant pods take the platform's public
# key, ALIEN_SERVICE_TOKEN_PUBLIC_KEY, instead).
DATA_PLANE_SETTINGS = (
    "embedding_model", "embedding_batch_size", "embedding_device", "embedding_worker",
    "embedding_query_engine",
    "ocr", "ocr_languages", "ocr_dpi", "mistral_ocr_model", "ocr_max_pages_per_run",
    "stemmer_language", "max_file_bytes", "max_text_bytes", "max_page_pixels",
    "max_pages_per_entry", "max_chunks_per_entry", "max_decompressed_bytes",
    "max_seconds_per_entry", "extract_memory_mb", "api_refusal_rate_per_second",
    "api_refusal_burst",
    "fusion", "fusion_keyword_weight", "fusion_k", "fusion_depth",
    "api_max_page_size", "api_max_top_k", "api_snippet_chars", "api_max_json_bytes",
    "api_rate_per_second", "api_egress_bytes_per_hour",
    "api_rate_burst", "api_worker", "api_worker_poll_seconds", "ingest_concurrency",
    "service_token_public_key", "service_token_issuer", "service_token_audience",
    "service_token_leeway_seconds", "service_token_max_lifetime_seconds", "cluster_id",
)  # fmt: skip


def _choose(settings: AlienSettings, model: str, dim: int) -> list[StoreBackend]:
    """The backend of each store kind for these settings, in provisioning order."""
    s, cluster, plane = settings, settings.mode == "cluster", settings.tenant_plane
    if plane and not cluster:
        raise BackendConfigError("ALIEN_TENANT (a tenant's data plane) needs ALIEN_MODE=cluster")
    if plane:
        TenantId(s.tenant or "")
        for server, name in ((s.s3_endpoint, s.s3_bucket), (s.qdrant_url, s.qdrant_collection),
                             (s.meili_url, s.meili_index)):  # fmt: skip
            if server and not name:
                raise BackendConfigError(
                    "a tenant's data plane names its bucket, collection and index: set "
                    "ALIEN_S3_BUCKET, ALIEN_QDRANT_COLLECTION and ALIEN_MEILI_INDEX "
                    "(`alien tenant env T` prints them)"
                )
    catalog: StoreBackend = SqliteCatalogBackend(s)
    objects: StoreBackend = LocalObjectsBackend(s)
    vectors: StoreBackend = EmbeddedVectorsBackend(s)
    keywords: StoreBackend = EmbeddedKeywordsBackend(s)
    if cluster and s.postgres_url:
        catalog = PostgresTenantCatalogBackend(s) if plane else PostgresCatalogBackend(s)
    if cluster and s.s3_endpoint:
        objects = S3TenantObjectsBackend(s) if plane else S3ObjectsBackend(s)
    if cluster and s.qdrant_url:
        vectors = QdrantTenantVectorsBackend(s) if plane else QdrantVectorsBackend(s, model, dim)
    if cluster and s.meili_url:
        keywords = MeiliTenantKeywordsBackend(s) if plane else MeiliKeywordsBackend(s)
    return [catalog, objects, vectors, keywords]


class Backends:
    """The store backends of one configuration, by kind (``catalog``, ``objects``, …)."""

    def __init__(self, settings: AlienSettings, model: str, dim: int) -> None:
        self.settings = settings
        self.by_kind: dict[str, StoreBackend] = {b.kind: b for b in _choose(settings, model, dim)}

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.by_kind)

    def store(self, kind: str) -> StoreBackend:
        try:
            return self.by_kind[kind]
        except KeyError:
            raise ValueError(f"unknown store {kind!r}") from None

    @property
    def catalog(self) -> Any:
        return self.by_kind["catalog"]

    @property
    def objects(self) -> Any:
        return self.by_kind["objects"]

    @property
    def vectors(self) -> Any:
        return self.by_kind["vectors"]

    @property
    def keywords(self) -> Any:
        return self.by_kind["keywords"]

    def tenant_environment(self, tenant: TenantId, generation: str = "") -> TenantEnvironment:
        """Everything tenant ``tenant``'s data plane needs, and no cluster key: this control
        plane's processing and API settings (so both embed with the same model, say) and
        each store's URL, names and tenant credentials."""
        s = self.settings
        env = TenantEnvironment({"ALIEN_MODE": "cluster", "ALIEN_TENANT": str(tenant)})
        for name in DATA_PLANE_SETTINGS:
            value = getattr(s, name)
            if value is not None:
                env.config[f"ALIEN_{name.upper()}"] = (
                    str(value).lower() if isinstance(value, bool) else str(value)
                )
        own_budget = s.api_egress_bytes_per_hour_by_tenant.get(str(tenant))
        if own_budget is not None:  # the tenant's own egress budget, as a plain setting there
            env.config["ALIEN_API_EGRESS_BYTES_PER_HOUR"] = str(own_budget)
        for backend in self.by_kind.values():
            env.update(backend.tenant_env(tenant, generation))
        return env

    def describe(self) -> list[StoreStatus]:
        """Each store's backend and whether it answers now."""
        s = self.settings
        out = [backend.status() for backend in self.by_kind.values()]
        if s.ocr == "mistral":
            out.append(
                _probe("ocr", "mistral", s.mistral_ocr_model, lambda: s.mistral_api_key is not None)
            )
        else:
            from resources.ocr import TesseractOcr

            out.append(_probe("ocr", "local", "pdfium + tesseract", TesseractOcr.available))
        if s.platform_url:
            out.append(_probe("platform", "http", s.platform_url, lambda: _reach(s.platform_url)))
        else:
            out.append(_probe("platform", "outbox", str(s.system_dir / "outbox.db"), lambda: True))
        return out


def _reach(url: str | None) -> None:
    import httpx

    httpx.get(url or "", timeout=5)  # any HTTP answer means it is reachable


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
