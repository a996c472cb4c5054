"""Vector spaces of a dataset's own: a dataset with its own embedding model searches a space
of its own, the other datasets the tenant's default one.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 07:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A catalog made before migrations existed gets its tables from the current models.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("vector_spaces")}
    if "dataset" not in columns:
        op.add_column("vector_spaces", sa.Column("dataset", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vector_spaces") as batch:
        batch.drop_column("dataset")
