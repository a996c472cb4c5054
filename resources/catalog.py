"""The catalog: datasets, entries and per-asset manifests of one tenant (SQLAlchemy 2).

Embedded, each tenant has its own SQLite file in WAL mode, so the Data API and a pipeline run
(different processes) read and write it at the same time; writers wait (``busy_timeout``)
rather than fail.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    case,
    create_engine,
    delete,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from resources.tenancy import TenantId, validate_dataset
from resources.vectors import VectorSpace

DEFAULT_DATASET = "default"


class EntryStatus:
    PENDING = "pending"
    PROCESSING = "processing"
    INDEXED = "indexed"
    FAILED = "failed"
    ALL = (PENDING, PROCESSING, INDEXED, FAILED)
    # A tombstone: the entry is being deleted. Readers no longer see it; whoever finds it
    # (the delete itself, the next run, a later registration of its source) finishes the job.
    DELETING = "deleting"


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes: every stored time is UTC, so say so."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class TenantRow(Base):
    __tablename__ = "tenant"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DatasetRow(Base):
    __tablename__ = "datasets"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EntryRow(Base):
    __tablename__ = "entries"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    dataset: Mapped[str] = mapped_column(ForeignKey("datasets.name"), index=True)
    source_uri: Mapped[str] = mapped_column(Text)
    source_name: Mapped[str] = mapped_column(Text)
    media_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    source_mtime_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    object_key: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The run working on a ``processing`` entry; it refreshes ``updated_at`` while it lives.
    claim: Mapped[str | None] = mapped_column(String(64), nullable=True)
    pages: Mapped[int | None] = mapped_column(Integer, nullable=True)
    chunks: Mapped[int | None] = mapped_column(Integer, nullable=True)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    __table_args__ = (
        UniqueConstraint("dataset", "source_uri", name="uq_entry_source"),
        # identity by content: one index lookup (SQLite chose the dataset's index otherwise)
        Index("ix_entries_dataset_sha256", "dataset", "sha256"),
    )


def _live() -> Any:
    """Entries that are not being deleted."""
    return EntryRow.status != EntryStatus.DELETING


class SourceRow(Base):
    """Another source of an entry's bytes: the same content from another path or door is
    the same entry. The entry's first source is its own ``source_uri``."""

    __tablename__ = "entry_sources"
    dataset: Mapped[str] = mapped_column(String(255), primary_key=True)
    source_uri: Mapped[str] = mapped_column(String(2048), primary_key=True)
    entry_id: Mapped[str] = mapped_column(String(36), index=True)
    source_name: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    source_mtime_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ManifestRow(Base):
    """What one asset produced for one entry, from which input."""

    __tablename__ = "manifests"
    asset: Mapped[str] = mapped_column(String(64), primary_key=True)
    entry_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    input_hash: Mapped[str] = mapped_column(String(64))
    source_sha256: Mapped[str] = mapped_column(String(64))
    output_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    __table_args__ = (Index("ix_manifest_entry", "entry_id"),)


class VectorSpaceRow(Base):
    """One of the tenant's vector spaces (``resources.vectors.VectorSpace``): one is active in
    the default scope (``dataset`` null), at most one in each dataset's own."""

    __tablename__ = "vector_spaces"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(Text)
    dim: Mapped[int] = mapped_column(Integer)
    chunker: Mapped[str | None] = mapped_column(Text, nullable=True)
    active: Mapped[bool] = mapped_column(Boolean)
    rechunk: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    dataset: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ApiKeyRow(Base):
    """A tenant API key: only its SHA-256 is stored (the secret is shown once, at creation)."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    secret_sha256: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditRow(Base):
    """One access (or attempted access) to the tenant's data."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    request_id: Mapped[str] = mapped_column(String(64))  # the server's, unique
    # The caller's own X-Request-ID, kept for correlation only (migration 0002).
    client_request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    tenant: Mapped[str | None] = mapped_column(String(40), nullable=True)
    principal: Mapped[str] = mapped_column(String(200))
    on_behalf_of: Mapped[str | None] = mapped_column(String(200), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    entry_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    dataset: Mapped[str | None] = mapped_column(String(63), nullable=True)
    outcome: Mapped[str] = mapped_column(String(32))
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class EgressRow(Base):
    """What one principal may still receive: a token bucket of bytes, kept in the tenant's
    catalog so every replica of the tenant's Data API (and a restarted one) shares it."""

    __tablename__ = "egress_buckets"
    principal: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of its key
    tokens: Mapped[float] = mapped_column(Float)  # bytes left at ``at``
    at: Mapped[float] = mapped_column(Float)  # seconds since the epoch


class EgressLedger:
    """Byte budgets per principal, refilled continuously, on one tenant's catalog."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def take(self, principal: str, nbytes: int, per_hour: int, now: float | None = None) -> float:
        """Take ``nbytes`` from the principal's bucket of ``per_hour`` bytes, or take nothing;
        the seconds to wait until they would fit (0.0: taken). One statement decides, so
        concurrent requests from several processes never both spend the same bytes."""
        now = time.time() if now is None else now
        principal = hashlib.sha256(principal.encode()).hexdigest()  # bounded, and no names
        rate = per_hour / 3600.0
        t = EgressRow.__table__
        refill = t.c.tokens + (now - t.c.at) * rate
        level = case((refill > per_hour, float(per_hour)), else_=refill)
        dialect = self.engine.dialect.name
        insert = (pg_insert if dialect == "postgresql" else sqlite_insert)(t)
        statement = insert.values(principal=principal, tokens=per_hour - nbytes, at=now)
        statement = statement.on_conflict_do_update(
            index_elements=[t.c.principal],
            set_={"tokens": level - nbytes, "at": now},
            where=level >= nbytes,
        ).returning(t.c.tokens)  # a row comes back only if it took (rowcount is unreliable)
        with self.engine.begin() as conn:
            if conn.execute(statement).first() is not None:
                return 0.0
            tokens, at = conn.execute(
                select(t.c.tokens, t.c.at).where(t.c.principal == principal)
            ).one()
        have = min(float(per_hour), tokens + (now - at) * rate)
        return max(0.0, (nbytes - have) / rate)


@dataclass(frozen=True)
class Dataset:
    name: str
    config: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: DatasetRow) -> Dataset:
        return cls(row.name, dict(row.config or {}), as_utc(row.created_at), as_utc(row.updated_at))


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None
    secret_sha256: str

    @classmethod
    def from_row(cls, row: ApiKeyRow) -> ApiKey:
        return cls(
            row.id,
            row.name,
            tuple(row.scopes or ()),
            as_utc(row.created_at),
            as_utc(row.revoked_at) if row.revoked_at else None,
            row.secret_sha256,
        )


@dataclass(frozen=True)
class AuditRecord:
    """What the audit log holds about one request (``at`` and ``id`` are set on write)."""

    request_id: str
    principal: str
    action: str
    outcome: str
    tenant: str | None = None  # None in the cluster's log: the request resolved to no tenant
    on_behalf_of: str | None = None
    entry_id: str | None = None
    dataset: str | None = None
    status_code: int | None = None
    detail: str | None = None
    client_request_id: str | None = None  # the caller's X-Request-ID beside the server's
    at: datetime | None = None
    id: int | None = None

    def public(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["at"] = self.at.isoformat() if self.at else None
        return data


class AuditLog:
    """Append-only audit records on one engine (a tenant's catalog or the cluster's log)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._session = sessionmaker(engine, expire_on_commit=False)

    def create(self) -> None:
        """Create the table, or bring one an older release made up to date. The cluster's
        log is this one table outside Alembic (tenant catalogs are migrated by
        ``resources.migrate``), so its new nullable columns are simply added."""
        table = AuditRow.__table__
        table.create(self.engine, checkfirst=True)  # type: ignore[attr-defined]
        present = self._columns()
        for column in table.columns:  # type: ignore[attr-defined]
            if column.name in present:
                continue
            kind = column.type.compile(dialect=self.engine.dialect)
            try:
                with self.engine.begin() as conn:
                    conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))
            except OperationalError:  # another process may have added it meanwhile
                if column.name not in self._columns():
                    raise

    def _columns(self) -> set[str]:
        return {c["name"] for c in inspect(self.engine).get_columns(AuditRow.__tablename__)}

    def write(self, record: AuditRecord) -> None:
        """Append ``record``; raises if it cannot be stored (the caller must then fail)."""
        fields = {k: getattr(record, k) for k in record.__dataclass_fields__ if k != "id"}
        fields["at"] = record.at or utcnow()
        with self._session.begin() as s:
            s.add(AuditRow(**fields))

    def records(
        self, *, limit: int = 100, entry_id: str | None = None, action: str | None = None
    ) -> list[AuditRecord]:
        """The newest records first."""
        query = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
        if entry_id is not None:
            query = query.where(AuditRow.entry_id == entry_id)
        if action is not None:
            query = query.where(AuditRow.action == action)
        with self._session() as s:
            return [
                replace(
                    AuditRecord(**{k: getattr(r, k) for k in AuditRecord.__dataclass_fields__}),
                    at=as_utc(r.at),
                )
                for r in s.scalars(query)
            ]


@dataclass(frozen=True)
class EntrySource:
    dataset: str
    source_uri: str
    entry_id: str
    source_name: str
    size: int
    sha256: str
    source_mtime_ns: int | None

    @classmethod
    def from_row(cls, row: SourceRow) -> EntrySource:
        return cls(row.dataset, row.source_uri, row.entry_id, row.source_name, row.size,
                   row.sha256, row.source_mtime_ns)  # fmt: skip


@dataclass(frozen=True)
class Entry:
    id: str
    dataset: str
    source_uri: str
    source_name: str
    media_type: str
    size: int
    sha256: str
    source_mtime_ns: int | None
    object_key: str
    status: str
    reason: str | None
    pages: int | None
    chunks: int | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: EntryRow) -> Entry:
        return cls(
            id=row.id,
            dataset=row.dataset,
            source_uri=row.source_uri,
            source_name=row.source_name,
            media_type=row.media_type,
            size=row.size,
            sha256=row.sha256,
            source_mtime_ns=row.source_mtime_ns,
            object_key=row.object_key,
            status=row.status,
            reason=row.reason,
            pages=row.pages,
            chunks=row.chunks,
            metadata=dict(row.metadata_ or {}),
            created_at=as_utc(row.created_at),
            updated_at=as_utc(row.updated_at),
        )

    @property
    def attached_to(self) -> str | None:
        """The id of the email this entry came attached to (its own source), else None."""
        if not self.source_uri.startswith(ATTACHMENT_SCHEME):
            return None
        return self.source_uri[len(ATTACHMENT_SCHEME) :].split("/", 1)[0]

    def public(self) -> dict[str, Any]:
        """Metadata only, JSON-ready (no content)."""
        return {
            "entry_id": self.id,
            "dataset": self.dataset,
            "source_name": self.source_name,
            "attached_to": self.attached_to,
            "media_type": self.media_type,
            "size": self.size,
            "sha256": self.sha256,
            "status": self.status,
            "reason": self.reason,
            "pages": self.pages,
            "chunks": self.chunks,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


# The source URI of a file attached to an email entry: ``attachment:<email id>/<n>/<name>``.
ATTACHMENT_SCHEME = "attachment:"


def attachment_prefix(entry_id: str) -> str:
    """The prefix of the source URIs of the files attached to the email ``entry_id``."""
    return f"{ATTACHMENT_SCHEME}{entry_id}/"


@dataclass(frozen=True)
class ManifestRecord:
    entry_id: str
    input_hash: str
    source_sha256: str
    output_key: str | None = None
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def sqlite_engine(path: Path) -> Engine:
    """An engine on a SQLite file with WAL and a busy timeout (shared by embedded stores)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        f"sqlite:///{path}",
        connect_args={"check_same_thread": False, "timeout": 30},
        json_serializer=lambda obj: json.dumps(obj, separators=(",", ":")),
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class Catalog:
    """Catalog of one tenant. Every method is scoped to that tenant by construction."""

    def __init__(self, tenant: TenantId, engine: Engine) -> None:
        self.tenant = TenantId(tenant)
        self.engine = engine
        self._session = sessionmaker(engine, expire_on_commit=False)
        self.audit = AuditLog(engine)
        self.egress = EgressLedger(engine)

    @classmethod
    def embedded(cls, tenant: TenantId, path: Path) -> Catalog:
        return cls(tenant, sqlite_engine(path))

    # -- lifecycle -----------------------------------------------------------------------
    def upgrade_if_behind(self) -> bool:
        """Migrate a catalog made by older code; one query when it is current."""
        from resources.migrate import upgrade_if_behind

        return upgrade_if_behind(self.engine)

    def create(self) -> None:
        """Migrate the schema to the newest revision and add the tenant row (idempotent)."""
        from resources.migrate import upgrade

        upgrade(self.engine)
        with self._session.begin() as s:
            if s.get(TenantRow, str(self.tenant)) is None:
                s.add(TenantRow(id=str(self.tenant)))
        self.ensure_dataset(DEFAULT_DATASET)

    def close(self) -> None:
        self.engine.dispose()

    # -- datasets ------------------------------------------------------------------------
    def ensure_dataset(self, name: str, config: dict[str, Any] | None = None) -> None:
        validate_dataset(name)
        with self._session.begin() as s:
            if s.get(DatasetRow, name) is None:
                s.add(DatasetRow(name=name, config=config or {}))

    def dataset(self, name: str) -> Dataset | None:
        with self._session() as s:
            row = s.get(DatasetRow, name)
            return Dataset.from_row(row) if row else None

    def datasets(self, *, limit: int | None = None, offset: int = 0) -> list[Dataset]:
        query = select(DatasetRow).order_by(DatasetRow.name).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        with self._session() as s:
            return [Dataset.from_row(r) for r in s.scalars(query)]

    def create_dataset(self, name: str, config: dict[str, Any]) -> Dataset | None:
        """Create ``name``; None when it already exists (nothing is changed then)."""
        validate_dataset(name)
        now = utcnow()
        row = DatasetRow(name=name, config=config, created_at=now, updated_at=now)
        try:
            with self._session.begin() as s:
                s.add(row)
        except IntegrityError:
            return None
        return Dataset.from_row(row)

    def update_dataset(self, name: str, config: dict[str, Any]) -> Dataset | None:
        with self._session.begin() as s:
            row = s.get(DatasetRow, name)
            if row is None:
                return None
            row.config = config
            row.updated_at = utcnow()
            return Dataset.from_row(row)

    def delete_dataset(self, name: str) -> bool:
        """Remove the dataset row; its entries must have been deleted first."""
        with self._session.begin() as s:
            return s.execute(delete(DatasetRow).where(DatasetRow.name == name)).rowcount > 0

    # -- API keys ------------------------------------------------------------------------
    def add_api_key(
        self, key_id: str, name: str, secret_sha256: str, scopes: Sequence[str]
    ) -> ApiKey:
        row = ApiKeyRow(
            id=key_id,
            name=name,
            secret_sha256=secret_sha256,
            scopes=list(scopes),
            created_at=utcnow(),
        )
        with self._session.begin() as s:
            s.add(row)
        return ApiKey.from_row(row)

    def api_key(self, key_id: str) -> ApiKey | None:
        with self._session() as s:
            row = s.get(ApiKeyRow, key_id)
            return ApiKey.from_row(row) if row else None

    def api_keys(self) -> list[ApiKey]:
        with self._session() as s:
            return [
                ApiKey.from_row(r)
                for r in s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at))
            ]

    def revoke_api_key(self, key_id: str) -> bool:
        """Revoke a key (idempotent); False when no such key."""
        with self._session.begin() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                return False
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return True

    def ids_starting(self, kind: Literal["entry", "key"], prefix: str, limit: int = 2) -> list[str]:
        """Ids of entries (or API keys) that start with ``prefix``, at most ``limit``: a
        unique prefix names one, git-style."""
        column = EntryRow.id if kind == "entry" else ApiKeyRow.id
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = select(column).where(column.like(f"{escaped}%", escape="\\"))
        if kind == "entry":
            query = query.where(_live())
        with self._session() as s:
            return list(s.scalars(query.order_by(column).limit(limit)))

    # -- entries -------------------------------------------------------------------------
    def add_entry(
        self,
        *,
        dataset: str,
        source_uri: str,
        source_name: str,
        media_type: str,
        size: int,
        sha256: str,
        object_key: str,
        source_mtime_ns: int | None = None,
        entry_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Entry:
        now = utcnow()
        row = EntryRow(
            id=entry_id or str(uuid.uuid4()),
            dataset=dataset,
            source_uri=source_uri,
            source_name=source_name,
            media_type=media_type,
            size=size,
            sha256=sha256,
            source_mtime_ns=source_mtime_ns,
            object_key=object_key,
            status=EntryStatus.PENDING,
            metadata_=metadata or {},
            created_at=now,
            updated_at=now,
        )
        with self._session.begin() as s:
            s.add(row)
        return Entry.from_row(row)

    def update_entry(self, entry_id: str, **fields: Any) -> None:
        if "metadata" in fields:
            fields["metadata_"] = fields.pop("metadata")
        fields.setdefault("updated_at", utcnow())
        with self._session.begin() as s:  # a tombstone is never brought back
            s.execute(update(EntryRow).where(EntryRow.id == entry_id, _live()).values(**fields))

    def set_status(
        self,
        entry_ids: Iterable[str],
        status: str,
        reason: str | None = None,
        claim: str | None = None,
    ) -> None:
        """Set the entries' status (``processing`` with the claim of the run that works on
        them; any other status drops the claim)."""
        ids = list(entry_ids)
        if not ids:
            return
        with self._session.begin() as s:
            for batch in _batches(ids, 500):
                s.execute(
                    update(EntryRow)
                    .where(EntryRow.id.in_(batch), _live())
                    .values(status=status, reason=reason, claim=claim, updated_at=utcnow())
                )

    def get_entry(self, entry_id: str, *, deleting: bool = False) -> Entry | None:
        """The entry (one being deleted only if ``deleting``)."""
        with self._session() as s:
            row = s.get(EntryRow, entry_id)
            if row is None or (row.status == EntryStatus.DELETING and not deleting):
                return None
            return Entry.from_row(row)

    def find_entry(self, dataset: str, source_uri: str, *, deleting: bool = False) -> Entry | None:
        """The entry whose own source this is (one being deleted only if ``deleting``)."""
        query = select(EntryRow).where(
            EntryRow.dataset == dataset, EntryRow.source_uri == source_uri
        )
        with self._session() as s:
            row = s.scalar(query if deleting else query.where(_live()))
            return Entry.from_row(row) if row else None

    def mark_deleting(self, entry_id: str) -> Entry | None:
        """Turn the entry into a tombstone (readers stop seeing it at once); the entry as it
        was, or None if there is no such entry. Marking one already marked returns it."""
        with self._session.begin() as s:
            row = s.get(EntryRow, entry_id)
            if row is None:
                return None
            entry = Entry.from_row(row)
            row.status, row.claim, row.updated_at = EntryStatus.DELETING, None, utcnow()
            return entry

    def deleting(self, older_than: datetime | None = None, limit: int = 1000) -> list[Entry]:
        """Tombstones (marked before ``older_than``): deletions a crash left unfinished."""
        query = select(EntryRow).where(EntryRow.status == EntryStatus.DELETING)
        if older_than is not None:
            query = query.where(EntryRow.updated_at < older_than)
        with self._session() as s:
            return [Entry.from_row(r) for r in s.scalars(query.order_by(EntryRow.id).limit(limit))]

    def entries(
        self,
        *,
        dataset: str | None = None,
        status: str | None = None,
        ids: Sequence[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Entry]:
        """Entries, oldest first (not those being deleted)."""
        query = select(EntryRow).where(_live()).order_by(EntryRow.created_at, EntryRow.id)
        if dataset is not None:
            query = query.where(EntryRow.dataset == dataset)
        if status is not None:
            query = query.where(EntryRow.status == status)
        if ids is not None and limit is None and len(ids) > 500:  # bounded IN lists
            found = [e for batch in _batches(ids, 500) for e in self.entries(
                dataset=dataset, status=status, ids=batch)]  # fmt: skip
            return sorted(found, key=lambda e: (e.created_at, e.id))
        if ids is not None:
            query = query.where(EntryRow.id.in_(list(ids)))
        if limit is not None:
            query = query.limit(limit).offset(offset)
        with self._session() as s:
            return [Entry.from_row(r) for r in s.scalars(query)]

    def entry_ids(self, *, dataset: str | None = None, metadata: dict[str, Any]) -> set[str]:
        """Ids of the entries whose metadata has every pair of ``metadata``, types included."""
        query = select(EntryRow.id, EntryRow.metadata_).where(_live())
        if dataset is not None:
            query = query.where(EntryRow.dataset == dataset)
        for key, value in metadata.items():  # narrows in SQL; the exact test is below
            condition = _metadata_narrowing(key, value)
            if condition is not None:
                query = query.where(condition)
        with self._session() as s:
            return {
                eid
                for eid, meta in s.execute(query)
                if all(_same(meta.get(k, _MISSING), v) for k, v in metadata.items())
            }

    def entry_hashes(self) -> dict[str, str]:
        """entry id -> sha256 of its current content, for every entry not being deleted."""
        with self._session() as s:
            query = select(EntryRow.id, EntryRow.sha256).where(_live())
            return {eid: sha for eid, sha in s.execute(query)}

    def entry_kinds(self) -> dict[str, tuple[str, str]]:
        """entry id -> (dataset, media type) of every live entry: what per-dataset settings
        need to plan a step, without building entries."""
        with self._session() as s:
            query = select(EntryRow.id, EntryRow.dataset, EntryRow.media_type).where(_live())
            return {eid: (dataset, media) for eid, dataset, media in s.execute(query)}

    def entry_columns(self, *, status: str | None = None) -> list[tuple[str, str, str, int]]:
        """(id, status, original's object key, chunks) of every live entry, optionally of one
        status: the few columns the cross-store checks read, without building entries."""
        query = select(EntryRow.id, EntryRow.status, EntryRow.object_key, EntryRow.chunks)
        query = query.where(_live())
        if status is not None:
            query = query.where(EntryRow.status == status)
        with self._session() as s:
            return [(eid, st, key or "", int(n or 0)) for eid, st, key, n in s.execute(query)]

    def entry_stats(self) -> list[tuple[str, str, int, int, datetime | None]]:
        """(dataset, status, entries, bytes, latest update) per dataset and status."""
        query = (
            select(
                EntryRow.dataset,
                EntryRow.status,
                func.count(),
                func.coalesce(func.sum(EntryRow.size), 0),
                func.max(EntryRow.updated_at),
            )
            .where(_live())
            .group_by(EntryRow.dataset, EntryRow.status)
        )
        with self._session() as s:
            return [
                (d, st, int(n), int(b), as_utc(last) if last else None)
                for d, st, n, b, last in s.execute(query)
            ]

    def status_counts(self) -> dict[str, int]:
        with self._session() as s:
            query = select(EntryRow.status, func.count()).where(_live())
            rows = s.execute(query.group_by(EntryRow.status))
            return {status: count for status, count in rows}

    def release_processing(self, claim: str | None = None) -> int:
        """Entries a stopped run left ``processing`` go back to ``pending`` (the next run
        takes them up from the steps' manifests): that run's (``claim``), else all; how many."""
        query = update(EntryRow).where(EntryRow.status == EntryStatus.PROCESSING)
        if claim is not None:
            query = query.where(EntryRow.claim == claim)
        with self._session.begin() as s:
            result = s.execute(
                query.values(
                    status=EntryStatus.PENDING, reason=None, claim=None, updated_at=utcnow()
                )
            )
            return int(result.rowcount or 0)

    def renew_claim(self, claim: str) -> int:
        """The run holding ``claim`` is alive: its entries' claims are fresh again."""
        with self._session.begin() as s:
            result = s.execute(
                update(EntryRow)
                .where(EntryRow.status == EntryStatus.PROCESSING, EntryRow.claim == claim)
                .values(updated_at=utcnow())
            )
            return int(result.rowcount or 0)

    def claims(self) -> list[str]:
        """The runs that hold ``processing`` entries now."""
        with self._session() as s:
            return list(
                s.scalars(
                    select(EntryRow.claim)
                    .where(EntryRow.status == EntryStatus.PROCESSING, EntryRow.claim.is_not(None))
                    .distinct()
                )
            )

    def take_over_stale(self, older_than: datetime) -> list[Entry]:
        """Entries left ``processing`` by a run that stopped renewing its claim before
        ``older_than`` (killed, its machine gone): ``pending`` again, saying so in their
        reason; the entries as they were."""
        stale = (EntryRow.status == EntryStatus.PROCESSING) & (EntryRow.updated_at < older_than)
        with self._session.begin() as s:
            rows = [Entry.from_row(r) for r in s.scalars(select(EntryRow).where(stale))]
            for batch in _batches([e.id for e in rows], 500):
                s.execute(
                    update(EntryRow)
                    .where(EntryRow.id.in_(batch), stale)
                    .values(
                        status=EntryStatus.PENDING,
                        reason="taken over: the run working on it stopped without finishing",
                        claim=None,
                        updated_at=utcnow(),
                    )
                )
        return rows

    def unfinished(self, limit: int = 10_000) -> list[str]:
        """Ids of entries waiting for the pipeline or being worked on (at most ``limit``)."""
        waiting = (EntryStatus.PENDING, EntryStatus.PROCESSING)
        with self._session() as s:
            return list(
                s.scalars(select(EntryRow.id).where(EntryRow.status.in_(waiting)).limit(limit))
            )

    def has_unfinished(self) -> bool:
        """Whether any entry waits for the pipeline or was left mid-way by a stopped run."""
        return bool(self.unfinished(limit=1))

    def pending_marker(self, stale_before: datetime | None = None) -> str | None:
        """A cheap fingerprint of entries waiting for the pipeline, counting those whose
        claim went stale before ``stale_before`` (None when nothing waits)."""
        waiting = EntryRow.status == EntryStatus.PENDING
        if stale_before is not None:
            waiting = waiting | (
                (EntryRow.status == EntryStatus.PROCESSING) & (EntryRow.updated_at < stale_before)
            )
        with self._session() as s:
            count, latest = s.execute(
                select(func.count(), func.max(EntryRow.updated_at)).where(waiting)
            ).one()
        return f"{count}@{latest}" if count else None

    def delete_entry(self, entry_id: str) -> bool:
        with self._session.begin() as s:
            s.execute(delete(ManifestRow).where(ManifestRow.entry_id == entry_id))
            s.execute(delete(SourceRow).where(SourceRow.entry_id == entry_id))
            return s.execute(delete(EntryRow).where(EntryRow.id == entry_id)).rowcount > 0

    # -- sources: more paths (or doors) to an entry's bytes --------------------------------
    def find_by_content(self, dataset: str, sha256: str) -> Entry | None:
        """The entry of ``dataset`` holding these bytes (the oldest, should there be two)."""
        if not sha256:
            return None
        with self._session() as s:
            row = s.scalar(
                select(EntryRow)
                .where(EntryRow.dataset == dataset, EntryRow.sha256 == sha256, _live())
                .order_by(EntryRow.created_at, EntryRow.id)
                .limit(1)
            )
            return Entry.from_row(row) if row else None

    def find_source(self, dataset: str, source_uri: str) -> EntrySource | None:
        with self._session() as s:
            row = s.get(SourceRow, (dataset, source_uri))
            return EntrySource.from_row(row) if row else None

    def put_source(self, source: EntrySource) -> None:
        """Record (or move) ``source``: its URI now gives the bytes of its entry."""
        with self._session.begin() as s:
            s.merge(
                SourceRow(
                    dataset=source.dataset,
                    source_uri=source.source_uri,
                    entry_id=source.entry_id,
                    source_name=source.source_name,
                    size=source.size,
                    sha256=source.sha256,
                    source_mtime_ns=source.source_mtime_ns,
                )
            )

    def remove_source(self, dataset: str, source_uri: str) -> None:
        with self._session.begin() as s:
            s.execute(
                delete(SourceRow).where(
                    SourceRow.dataset == dataset, SourceRow.source_uri == source_uri
                )
            )

    def source_uris(self, dataset: str, prefix: str) -> set[str]:
        """Every source URI of ``dataset`` that starts with ``prefix``: entries' own and
        their other sources (a folder's files, for ``alien ingest --sync``)."""
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        own = select(EntryRow.source_uri).where(
            EntryRow.dataset == dataset, EntryRow.source_uri.like(pattern, escape="\\"), _live()
        )
        more = select(SourceRow.source_uri).where(
            SourceRow.dataset == dataset, SourceRow.source_uri.like(pattern, escape="\\")
        )
        with self._session() as s:
            found = set(s.scalars(own)) | set(s.scalars(more))
        return {uri for uri in found if uri.startswith(prefix)}  # SQLite's LIKE ignores case

    def sources(self, entry_id: str) -> list[EntrySource]:
        """The entry's other sources, oldest first (its own ``source_uri`` is not listed)."""
        with self._session() as s:
            rows = s.scalars(
                select(SourceRow)
                .where(SourceRow.entry_id == entry_id)
                .order_by(SourceRow.created_at, SourceRow.source_uri)
            )
            return [EntrySource.from_row(r) for r in rows]

    # -- vector spaces -------------------------------------------------------------------
    def vector_spaces(self) -> list[tuple[VectorSpace, bool]]:
        """Every space of the tenant and whether it is active in its scope (active first)."""
        query = select(*_SPACE_COLUMNS, VectorSpaceRow.active).order_by(
            VectorSpaceRow.active.desc(), VectorSpaceRow.created_at
        )
        with self._session() as s:
            return [(_space(row), bool(row[-1])) for row in s.execute(query)]

    def active_space(self, first: Callable[[], VectorSpace]) -> VectorSpace:
        """The default space searches read. A tenant without one (made before spaces
        existed, or new) records ``first()`` as its first: the collection it always had."""
        query = select(*_SPACE_COLUMNS).where(
            VectorSpaceRow.active.is_(True), VectorSpaceRow.dataset.is_(None)
        )
        with self._session() as s:
            row = s.execute(query).first()
        if row is not None:
            return _space(row)
        self.add_vector_space(first(), active=True)
        return self.active_space(first)

    def dataset_spaces(self) -> dict[str, VectorSpace]:
        """The active space of each dataset that searches its own (one query)."""
        query = select(*_SPACE_COLUMNS).where(
            VectorSpaceRow.active.is_(True), VectorSpaceRow.dataset.is_not(None)
        )
        with self._session() as s:
            return {space.dataset: space for space in map(_space, s.execute(query))}

    def embedded_with(self, asset: str) -> tuple[str, int] | None:
        """(model, dimension) of the oldest embeddings ``asset`` recorded, if any: what a
        tenant made before vector spaces existed holds in its collection."""
        query = (
            select(ManifestRow.meta)
            .where(ManifestRow.asset == asset, ManifestRow.error.is_(None))
            .order_by(ManifestRow.updated_at)
            .limit(1)
        )
        with self._session() as s:
            meta = s.scalar(query) or {}
        if "model" in meta and "dim" in meta:
            return str(meta["model"]), int(meta["dim"])
        return None

    def add_vector_space(self, space: VectorSpace, *, active: bool = False) -> None:
        """Record a space (idempotent); ``active`` only when its scope has no active one."""
        try:
            with self._session.begin() as s:
                if s.get(VectorSpaceRow, space.name) is not None:
                    return
                if active and s.scalar(
                    select(VectorSpaceRow.name).where(VectorSpaceRow.active, _scope(space.dataset))
                ):
                    active = False  # another process made the first one meanwhile
                row = VectorSpaceRow(
                    name=space.name, model=space.model, dim=space.dim, active=active, rechunk=False
                )
                row.chunker = space.chunker or None
                row.dataset = space.dataset or None
                row.activated_at = utcnow() if active else None
                s.add(row)
        except IntegrityError:
            pass  # recorded by another process at the same moment

    def activate_space(self, name: str, *, rechunk: bool = False) -> None:
        """Make ``name`` the active space of its scope, in one transaction: every reader sees
        the old one or the new one, never neither. ``rechunk``: its model cuts other chunks,
        which the next run makes (``rechunk_pending`` until then)."""
        with self._session.begin() as s:
            row = s.get(VectorSpaceRow, name)
            if row is None:
                raise KeyError(f"no vector space {name!r}")
            s.execute(update(VectorSpaceRow).where(_scope(row.dataset or "")).values(
                active=VectorSpaceRow.name == name,
                rechunk=(VectorSpaceRow.name == name) & rechunk,
                activated_at=case((VectorSpaceRow.name == name, utcnow()),
                                  else_=VectorSpaceRow.activated_at),
            ))  # fmt: skip

    def rechunk_pending(self) -> bool:
        """Whether some scope's active space still has its chunks to be cut (a switch to a
        model that cuts other chunks); one indexed lookup."""
        with self._session() as s:
            query = select(VectorSpaceRow.name).where(
                VectorSpaceRow.active.is_(True), VectorSpaceRow.rechunk.is_(True)
            )
            return s.execute(query.limit(1)).first() is not None

    def rechunked(self, chunked_as: str, dataset: str = "") -> None:
        """The chunks step cut every entry of the scope (the default, or ``dataset``'s own)
        as ``chunked_as`` says: done, if that is still the scope's active space's (a switch
        meanwhile leaves the flag for the next run)."""
        with self._session.begin() as s:
            s.execute(
                update(VectorSpaceRow)
                .where(
                    VectorSpaceRow.active.is_(True),
                    _scope(dataset),
                    func.coalesce(VectorSpaceRow.chunker, VectorSpaceRow.model) == chunked_as,
                )
                .values(rechunk=False)
            )

    def forget_space(self, name: str) -> None:
        """Forget a space: an inactive one, or a dataset's own (whose dataset then searches
        the default space again); the default scope's active space stays."""
        with self._session.begin() as s:
            s.execute(
                delete(VectorSpaceRow).where(
                    VectorSpaceRow.name == name,
                    VectorSpaceRow.active.is_(False) | VectorSpaceRow.dataset.is_not(None),
                )
            )

    # -- manifests -----------------------------------------------------------------------
    def manifest(self, asset: str, *, meta: bool = True) -> dict[str, ManifestRecord]:
        """Every entry's row of ``asset``'s manifest (plain rows, not ORM objects: a step
        reads one per run, and tenants hold a hundred thousand entries). ``meta=False``
        leaves each row's JSON ``meta`` unread (most of the cost): for planning."""
        columns = (
            ManifestRow.entry_id,
            ManifestRow.input_hash,
            ManifestRow.source_sha256,
            ManifestRow.output_key,
            ManifestRow.error,
            ManifestRow.meta if meta else ManifestRow.asset,
        )
        with self._session() as s:
            rows = s.execute(select(*columns).where(ManifestRow.asset == asset))
            return {
                eid: ManifestRecord(
                    eid, input_hash, sha, key, error, dict(extra or {}) if meta else {}
                )
                for eid, input_hash, sha, key, error, extra in rows
            }

    def record_manifest(self, asset: str, records: Iterable[ManifestRecord]) -> None:
        now = utcnow()
        with self._session.begin() as s:
            for rec in records:
                s.merge(
                    ManifestRow(
                        asset=asset,
                        entry_id=rec.entry_id,
                        input_hash=rec.input_hash,
                        source_sha256=rec.source_sha256,
                        output_key=rec.output_key,
                        error=rec.error,
                        meta=rec.meta,
                        updated_at=now,
                    )
                )

    def forget_manifest(self, asset: str, entry_ids: Iterable[str]) -> None:
        ids = list(entry_ids)
        with self._session.begin() as s:
            for batch in _batches(ids, 500):
                s.execute(
                    delete(ManifestRow).where(
                        ManifestRow.asset == asset, ManifestRow.entry_id.in_(batch)
                    )
                )


_MISSING = object()
_SPACE_COLUMNS = (
    VectorSpaceRow.name,
    VectorSpaceRow.model,
    VectorSpaceRow.dim,
    VectorSpaceRow.chunker,
    VectorSpaceRow.created_at,
    VectorSpaceRow.dataset,
)


def _space(row: Any) -> VectorSpace:
    created = as_utc(row[4]).isoformat()
    return VectorSpace(row[1], int(row[2]), row[0], row[3] or "", created, row[5] or "")


def _scope(dataset: str) -> Any:
    """The rows of one scope of vector spaces: the default (""), or a dataset's own."""
    if dataset:
        return VectorSpaceRow.dataset == dataset
    return VectorSpaceRow.dataset.is_(None)


def _same(stored: Any, wanted: Any) -> bool:
    """Equal and of the same JSON type (1, 1.0, "1" and true differ)."""
    return type(stored) is type(wanted) and stored == wanted


def _metadata_narrowing(key: str, value: Any) -> Any:
    """A SQL condition every entry with metadata[key] == value meets (None: no narrowing).

    Only string values narrow in SQL: casting a JSON field that holds another type fails on
    PostgreSQL, and SQLite compares JSON numbers and text as unequal. The exact, typed test
    runs on the candidates in Python.
    """
    if isinstance(value, str):
        return EntryRow.metadata_[key].as_string() == value
    return None


def _batches(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


_SQLITE_BUSY = ("database is locked", "unable to open database", "disk i/o error")


def unavailable(err: BaseException) -> str | None:
    """Why the catalog's server did not answer, if ``err`` says so (``resources.outages``):
    a lost or refused PostgreSQL connection, an exhausted pool, a SQLite file locked too long.
    An error in the SQL itself is not an outage."""
    from sqlalchemy.exc import DisconnectionError, InterfaceError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(err, DisconnectionError | InterfaceError | PoolTimeout):
        return str(getattr(err, "orig", None) or err)
    if isinstance(err, OperationalError):
        message = str(err.orig)
        if type(err.orig).__module__.startswith("sqlite3"):
            return message if any(m in message.lower() for m in _SQLITE_BUSY) else None
        # psycopg: "connection failed: connection to server at ..., port ... failed: <why>"
        return (message.strip().splitlines() or [""])[0].rsplit(": ", 1)[-1]
    return None
