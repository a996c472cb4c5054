"""On a PostgreSQL cluster with password authentication (started by the test), one tenant's
credentials cannot reach another tenant's database."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from resources.catalog import Catalog
from resources.postgres import PostgresProvisioner, tenant_engine
from resources.tenancy import TenantId

BIN = Path("/usr/lib/postgresql/15/bin")
ADMIN_PASSWORD = "admin-password-for-this-test"


def _as_postgres(*args: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)


@pytest.fixture(scope="module")
def password_cluster() -> Iterator[str]:
    if not (BIN / "initdb").exists():
        pytest.skip(f"needs PostgreSQL's server binaries at {BIN} (Debian package postgresql-15)")
    root = Path(tempfile.mkdtemp(prefix="alien-pg-"))
    data, pwfile, log = root / "data", root / "pw", root / "log"
    pwfile.write_text(ADMIN_PASSWORD)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        _as_postgres(
            str(BIN / "initdb"), "-D", str(data), "-A", "scram-sha-256",
            f"--pwfile={pwfile}", "-U", "postgres",
        ),
        check=True, capture_output=True,
    )  # fmt: skip
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    subprocess.run(
        _as_postgres(str(BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w",
                     "start"),
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield f"postgresql://postgres:{ADMIN_PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres(str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def test_one_tenants_role_cannot_connect_to_anothers_database(password_cluster: str) -> None:
    provisioner = PostgresProvisioner(password_cluster, "cluster-secret")
    a, b = TenantId("tenant-a"), TenantId("tenant-b")
    try:
        for tenant in (a, b):
            provisioner.create(tenant)
            catalog = Catalog(tenant, tenant_engine(provisioner.describe(tenant).url))
            catalog.create()  # the schema, migrated as the tenant's own role
            catalog.close()
        own_a, own_b = provisioner.describe(a), provisioner.describe(b)

        # A's role in A's database: works, and sees its catalog.
        engine = create_engine(own_a.url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT id FROM tenant")).scalar() == "tenant-a"
        engine.dispose()

        # A's role and password, B's database: refused at connection.
        crossed = create_engine(own_a.url.set(database=own_b.database))
        with pytest.raises(OperationalError, match="permission denied for database"):
            crossed.connect()
        crossed.dispose()

        # B's role with A's password, and A's role with a guessed password: refused.
        for url in (
            own_b.url.set(password=own_a.password),
            own_a.url.set(password="guess"),
        ):
            wrong = create_engine(url)
            with pytest.raises(OperationalError, match="password authentication failed"):
                wrong.connect()
            wrong.dispose()

        # PUBLIC holds no CONNECT on a tenant database: a fresh role is refused too.
        with provisioner.engine.connect() as conn:
            conn.execute(text("CREATE ROLE stranger LOGIN PASSWORD 'stranger-pw'"))
        stranger = create_engine(own_a.url.set(username="stranger", password="stranger-pw"))
        with pytest.raises(OperationalError, match="permission denied for database"):
            stranger.connect()
        stranger.dispose()

    finally:
        with provisioner.engine.connect() as conn:
            conn.execute(text("DROP ROLE IF EXISTS stranger"))
        provisioner.drop(a)
        provisioner.drop(b)
        provisioner.close()
