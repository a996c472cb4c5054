"""Which run is working on an entry: a claim the run keeps fresh, taken over once stale.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 11:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A catalog made before migrations existed gets its tables from the current models.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("entries")}
    if "claim" not in columns:
        with op.batch_alter_table("entries") as batch:
            batch.add_column(sa.Column("claim", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("entries") as batch:
        batch.drop_column("claim")
