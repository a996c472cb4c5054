"""PostgreSQL for the catalog in cluster mode: a database and a role per tenant.

From the admin connection (``ALIEN_POSTGRES_URL``) the provisioner creates, for tenant T, the
role ``alien_T`` (login, password derived from the cluster secret) and the database
``alien_T`` owned by it, with ``CONNECT`` and ``TEMPORARY`` revoked from ``PUBLIC``: another
tenant's role cannot even connect. Every step is idempotent. The tenant's catalog then
connects as its own role through a small connection pool.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import IntegrityError, ProgrammingError
from sqlalchemy.pool import NullPool

from resources.tenancy import TenantId

PREFIX = "alien_"
# Databases of the cluster itself on the same server (the registry's is a setting too).
DAGSTER_DATABASE = "alien_dagster"
CLUSTER_DATABASES = frozenset({"alien_cluster", DAGSTER_DATABASE})


@dataclass(frozen=True)
class TenantDatabase:
    tenant: TenantId
    database: str
    role: str
    password: str
    url: URL  # the tenant's own connection (its role, its database)


def sqlalchemy_url(url: str | URL) -> URL:
    """The URL with the psycopg 3 driver (``postgresql://`` alone means psycopg2)."""
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.set(drivername="postgresql+psycopg")


def identifier(tenant: TenantId) -> str:
    """Database and role name of a tenant (tenant ids are [a-z0-9-]: safe once mapped)."""
    return PREFIX + str(TenantId(tenant)).replace("-", "_")


def role_password(secret: str, tenant: TenantId, generation: str = "") -> str:
    """The tenant role's password: derived, so nothing stores it (the operator writes it
    into the tenant namespace's Secret). The tenant's generation is part of it, so a tenant
    deleted and created again under the same name never takes its old password back."""
    context = f"postgres-role:{tenant}" + (f":{generation}" if generation else "")
    return hmac.new(secret.encode(), context.encode(), hashlib.sha256).hexdigest()


def tenant_engine(url: URL) -> Engine:
    """A pooled engine for one tenant's catalog."""
    return create_engine(
        url,
        pool_size=5,
        max_overflow=5,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


class PostgresProvisioner:
    """Creates, finds and drops tenants' databases and roles through the admin connection."""

    def __init__(self, admin_url: str, secret: str) -> None:
        self.admin_url = sqlalchemy_url(admin_url)
        self.secret = secret
        self.engine = create_engine(
            self.admin_url, isolation_level="AUTOCOMMIT", pool_size=2, pool_pre_ping=True
        )

    def describe(self, tenant: TenantId, generation: str = "") -> TenantDatabase:
        name = identifier(tenant)
        password = role_password(self.secret, tenant, generation)
        url = self.admin_url.set(username=name, password=password, database=name)
        return TenantDatabase(TenantId(tenant), name, name, password, url)

    def exists(self, tenant: TenantId) -> bool:
        with self.engine.connect() as conn:
            found = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": identifier(tenant)}
            ).first()
        return found is not None

    def create(self, tenant: TenantId, generation: str = "") -> TenantDatabase:
        """Role, database and privileges for the tenant (idempotent; repairs a drifted password)."""
        db = self.describe(tenant, generation)
        quoted = f'"{db.role}"'
        with self.engine.connect() as conn:
            role_exists = conn.execute(
                text("SELECT 1 FROM pg_roles WHERE rolname = :n"), {"n": db.role}
            ).first()
            verb = "ALTER" if role_exists else "CREATE"
            # DDL takes no bind parameters; the password is hex, the names are derived.
            conn.execute(text(f"{verb} ROLE {quoted} LOGIN PASSWORD '{db.password}'"))
            db_exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": db.database}
            ).first()
            if not db_exists:
                conn.execute(text(f'CREATE DATABASE "{db.database}" OWNER {quoted}'))
            conn.execute(text(f'REVOKE ALL ON DATABASE "{db.database}" FROM PUBLIC'))
            conn.execute(text(f'GRANT CONNECT, TEMPORARY ON DATABASE "{db.database}" TO {quoted}'))
        return db

    def drop(self, tenant: TenantId) -> bool:
        """Close the tenant's sessions, drop its database and role (idempotent)."""
        db = self.describe(tenant)
        with self.engine.connect() as conn:
            existed = self.exists(tenant)
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": db.database},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db.database}"'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{db.role}"'))
        return existed

    def close(self) -> None:
        self.engine.dispose()


def ensure_database(admin_url: str, name: str) -> URL:
    """A database of the cluster itself (not a tenant's), owned by the admin role, that no
    other role may connect to (tenants' roles included); its URL."""
    url = sqlalchemy_url(admin_url)
    engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).first()
            if not found:
                try:
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
                except (ProgrammingError, IntegrityError) as err:  # made meanwhile elsewhere
                    if "already exists" not in str(err) and "duplicate" not in str(err):
                        raise
            conn.execute(text(f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC'))
    finally:
        engine.dispose()
    return url.set(database=name)
