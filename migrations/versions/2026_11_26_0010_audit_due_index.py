"""audit: claim the next replica to check from an index, not a scan and sort of every READY row

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26 09:00:00

At a million READY replicas each audit claim sorted them all by last_check (3.5 s per replica, issue
16). The partial index holds the audit's candidates in its order, so a claim reads its first entry.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_data_item_audit_due",
        "data_item",
        [sa.text("last_check NULLS FIRST"), "uid"],
        postgresql_where=sa.text("item_state = 'READY' AND storage_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_data_item_audit_due", table_name="data_item")
