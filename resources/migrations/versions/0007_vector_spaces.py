"""The tenant's vector spaces: which model's collection search reads, which one is filling.

A model change fills a new space while search keeps reading the active one; the switch is
one update of this table, seen by every process on its next search.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 15:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A catalog made before migrations existed gets its tables from the current models.
    if "vector_spaces" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "vector_spaces",
        sa.Column("name", sa.String(length=64), primary_key=True),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("chunker", sa.Text(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("rechunk", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("vector_spaces")
