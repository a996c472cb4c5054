"""Egress budgets in the catalog, shared by every replica of a tenant's Data API.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 05:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A catalog made before migrations existed gets its missing tables from the current
    # models before it is stamped at 0001: it may hold this table already.
    if sa.inspect(op.get_bind()).has_table("egress_buckets"):
        return
    op.create_table(
        "egress_buckets",
        sa.Column("principal", sa.String(length=64), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("principal"),
    )


def downgrade() -> None:
    op.drop_table("egress_buckets")
