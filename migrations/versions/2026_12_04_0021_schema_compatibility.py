"""schema compatibility: the oldest DLM that can serve the schema, for upgrades without downtime

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-04 23:50:00

From here on each revision says which DLM can still serve the schema it leaves (``serves_from``: the
oldest head revision whose code works on it), and an upgrade writes that into ``schema_compatibility``.
A DLM that finds a schema newer than its own reads it there: at or past ``serves_from`` it serves on, so
a rolling update runs old and new DLM side by side while the new revisions apply (expand), and only a
revision that removes what older code reads (contract) makes them stop (docs/operations.md).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Adds a table no older DLM reads: 0020's DLM serves on it.
serves_from: str = "0020"


def upgrade() -> None:
    op.create_table(
        "schema_compatibility",
        sa.Column("serves_from", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("serves_from", name=op.f("pk_schema_compatibility")),
    )


def downgrade() -> None:
    op.drop_table("schema_compatibility")
