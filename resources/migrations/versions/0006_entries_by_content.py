"""Entries found by content within a dataset through one index (dataset, sha256).

With an index on each column alone, SQLite picked the dataset's (every entry of a one-dataset
tenant) and scanned it for each registration: registering the 100,000th file cost 100,000 row
reads.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 12:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A catalog made before migrations existed gets its indexes from the current models.
    indexes = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("entries")}
    if "ix_entries_dataset_sha256" not in indexes:
        op.create_index("ix_entries_dataset_sha256", "entries", ["dataset", "sha256"])


def downgrade() -> None:
    op.drop_index("ix_entries_dataset_sha256", table_name="entries")
