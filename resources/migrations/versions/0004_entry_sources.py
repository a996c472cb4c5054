"""More sources for one entry: the same bytes from another path or door are the same entry.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 09:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A catalog made before migrations existed gets its missing tables from the current
    # models before it is stamped at 0001: it may hold this table already.
    if sa.inspect(op.get_bind()).has_table("entry_sources"):
        return
    op.create_table(
        "entry_sources",
        sa.Column("dataset", sa.String(length=255), nullable=False),
        sa.Column("source_uri", sa.String(length=2048), nullable=False),
        sa.Column("entry_id", sa.String(length=36), nullable=False),
        sa.Column("source_name", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("source_mtime_ns", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("dataset", "source_uri"),
    )
    op.create_index("ix_entry_sources_entry_id", "entry_sources", ["entry_id"])


def downgrade() -> None:
    op.drop_index("ix_entry_sources_entry_id", table_name="entry_sources")
    op.drop_table("entry_sources")
