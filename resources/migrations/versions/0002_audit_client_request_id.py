"""Audit log: the caller's own request id beside the server-generated one.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 05:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _has_column() -> bool:
    columns = sa.inspect(op.get_bind()).get_columns("audit_log")
    return any(c["name"] == "client_request_id" for c in columns)


def upgrade() -> None:
    # A catalog made before migrations existed gets its missing tables from the current
    # models before it is stamped at 0001: its audit_log may hold the column already.
    if _has_column():
        return
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("client_request_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_column("client_request_id")
