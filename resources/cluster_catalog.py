"""The cluster catalog: the one registry of tenants, and each tenant's provisioning state.

A tenant exists because it has a row here, never because some store holds a name that looks
like one (Dagster's own database ``alien_dagster`` once passed for a tenant ``dagster``). The
catalog is SQLite under ``ALIEN_HOME/system`` in embedded mode and a database of the cluster's
own (``ALIEN_CLUSTER_DATABASE``, default ``alien_cluster``) on the PostgreSQL server in
cluster mode. Only the control plane opens it: a tenant's data plane knows its one tenant
from its settings and holds no credential for this database.

Each tenant row has a *generation*, new each time the name is created afresh, so a process
that cached handles of a tenant notices that it was retired or re-created elsewhere. Each
store's provisioning state has a row of its own, so a creation that failed half-way says
where, and the next ``create`` resumes from there.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from resources.tenancy import InvalidTenantError, TenantId

# Names a tenant may never take: they are the cluster's own (databases, roles, buckets and
# indexes are named after tenants) or read as something other than a customer.
RESERVED_TENANTS = frozenset(
    {
        "admin", "alien", "api", "cluster", "control", "dagster", "default", "health",
        "internal", "kube-system", "metrics", "operator", "platform", "postgres", "public",
        "ready", "root", "system", "template0", "template1",
    }
)  # fmt: skip

# provisioning -> ready -> (retiring -> gone) | retained; only ready tenants are served.
TenantState = Literal["provisioning", "ready", "retiring", "retained"]
StoreState = Literal["pending", "ready", "failed"]


class ReservedTenantError(InvalidTenantError):
    """A well-formed tenant name that belongs to the cluster itself."""


def tenant_name(value: str) -> TenantId:
    """A tenant id that a new tenant may take: well formed and not reserved."""
    tenant = TenantId(value)
    if tenant in RESERVED_TENANTS:
        raise ReservedTenantError(f"tenant name {tenant!r} is reserved for the cluster itself")
    return tenant


_metadata = sa.MetaData()
tenants_table = sa.Table(
    "tenants",
    _metadata,
    sa.Column("tenant", sa.String(40), primary_key=True),
    sa.Column("generation", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
stores_table = sa.Table(
    "tenant_stores",
    _metadata,
    sa.Column("tenant", sa.String(40), primary_key=True),
    sa.Column("store", sa.String(32), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("detail", sa.Text, nullable=False, default=""),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class TenantRecord:
    tenant: TenantId
    generation: str
    state: TenantState
    created_at: datetime.datetime
    updated_at: datetime.datetime
    stores: dict[str, tuple[StoreState, str]] = field(default_factory=dict)

    def public(self) -> dict[str, object]:
        return {
            "tenant": str(self.tenant),
            "state": self.state,
            "generation": self.generation,
            "created_at": self.created_at.isoformat(),
            "stores": {k: {"state": s, "detail": d} for k, (s, d) in sorted(self.stores.items())},
        }


class ClusterCatalog:
    """Tenant rows and per-store provisioning states, on one SQLAlchemy engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        try:
            _metadata.create_all(engine)
        except (IntegrityError, ProgrammingError, OperationalError):
            # Two processes creating a new catalog at once: the other one won; check again.
            _metadata.create_all(engine)

    @classmethod
    def sqlite(cls, path: Path, adopt_from: Path | None = None) -> ClusterCatalog:
        """The embedded catalog; a new one adopts tenant directories made before it existed."""
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", _sqlite_wal)
        catalog = cls(engine)
        if new and adopt_from is not None and adopt_from.is_dir():
            for child in sorted(adopt_from.iterdir()):
                if (child / "catalog.db").is_file():
                    try:
                        catalog.begin(tenant_name(child.name))
                    except InvalidTenantError:
                        continue
                    catalog.set_state(child.name, "ready")
        return catalog

    @classmethod
    def postgres(cls, admin_url: str, database: str) -> ClusterCatalog:
        from resources.postgres import ensure_database

        url = ensure_database(admin_url, database)
        return cls(sa.create_engine(url, pool_size=2, max_overflow=2, pool_pre_ping=True))

    # -- reads ---------------------------------------------------------------------------
    def get(self, tenant: str) -> TenantRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(tenants_table).where(tenants_table.c.tenant == str(tenant))
            ).first()
            if row is None:
                return None
            stores = conn.execute(
                sa.select(stores_table).where(stores_table.c.tenant == str(tenant))
            ).all()
        return _record(row, {s.store: (s.state, s.detail) for s in stores})

    def generation(self, tenant: str) -> tuple[str, str] | None:
        """``(generation, state)`` of the tenant, or None: the cheap check before each use."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(tenants_table.c.generation, tenants_table.c.state).where(
                    tenants_table.c.tenant == str(tenant)
                )
            ).first()
        return None if row is None else (row.generation, row.state)

    def names(self, states: Iterable[TenantState] = ("ready",)) -> list[TenantId]:
        """The tenants in these states, names only (what the loops over tenants need)."""
        query = (
            sa.select(tenants_table.c.tenant)
            .where(tenants_table.c.state.in_(list(states)))
            .order_by(tenants_table.c.tenant)
        )
        with self.engine.connect() as conn:
            return [TenantId(name) for name in conn.execute(query).scalars()]

    def list(self, states: Iterable[TenantState] | None = ("ready",)) -> list[TenantRecord]:
        query = sa.select(tenants_table).order_by(tenants_table.c.tenant)
        if states is not None:
            query = query.where(tenants_table.c.state.in_(list(states)))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
            stores: dict[str, dict[str, tuple[StoreState, str]]] = {}
            for s in conn.execute(sa.select(stores_table)).all():
                stores.setdefault(s.tenant, {})[s.store] = (s.state, s.detail)
        return [_record(row, stores.get(row.tenant, {})) for row in rows]

    # -- writes --------------------------------------------------------------------------
    def begin(self, tenant: str) -> TenantRecord:
        """The tenant's row, made now in state ``provisioning`` if it has none (idempotent).

        A retained tenant (or one whose retirement stopped half-way) being created again goes
        back to ``provisioning``, keeping its generation: its stores are the same ones.
        """
        tenant = tenant_name(tenant)
        now = _now()
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    tenants_table.insert().values(
                        tenant=str(tenant),
                        generation=uuid.uuid4().hex,
                        state="provisioning",
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:  # there already (or made by a concurrent create)
            with self.engine.begin() as conn:
                conn.execute(
                    tenants_table.update()
                    .where(tenants_table.c.tenant == str(tenant))
                    .where(tenants_table.c.state.in_(["retained", "retiring"]))
                    .values(state="provisioning", updated_at=now)
                )
        record = self.get(tenant)
        assert record is not None
        return record

    def record_store(self, tenant: str, store: str, state: StoreState, detail: str = "") -> None:
        values = {"state": state, "detail": detail[:2000], "updated_at": _now()}
        with self.engine.begin() as conn:
            done = conn.execute(
                stores_table.update()
                .where(stores_table.c.tenant == str(tenant))
                .where(stores_table.c.store == store)
                .values(**values)
            ).rowcount
            if not done:
                conn.execute(
                    stores_table.insert().values(tenant=str(tenant), store=store, **values)
                )

    def set_state(self, tenant: str, state: TenantState) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                tenants_table.update()
                .where(tenants_table.c.tenant == str(tenant))
                .values(state=state, updated_at=_now())
            )

    def remove(self, tenant: str) -> bool:
        """Forget the tenant entirely (after its stores are gone); whether it had a row."""
        with self.engine.begin() as conn:
            conn.execute(stores_table.delete().where(stores_table.c.tenant == str(tenant)))
            gone = conn.execute(
                tenants_table.delete().where(tenants_table.c.tenant == str(tenant))
            ).rowcount
        return bool(gone)

    def close(self) -> None:
        self.engine.dispose()


def _record(row: sa.Row, stores: dict[str, tuple[StoreState, str]]) -> TenantRecord:
    def aware(value: datetime.datetime) -> datetime.datetime:
        return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)

    return TenantRecord(
        tenant=TenantId(row.tenant),
        generation=row.generation,
        state=row.state,
        created_at=aware(row.created_at),
        updated_at=aware(row.updated_at),
        stores=stores,
    )


def _sqlite_wal(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
