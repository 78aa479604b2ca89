"""ska import sync: what each imported replica looked like, on both sides, at its last import

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-04 22:10:00

`dlm db import-ska` becomes a repeatable sync for a rehearsal and a cut-over: a second run brings over
what changed in SKA-DLM since the first (item_tags, say) where DLM left the row alone, and reports the
rows both sides changed. It needs to know what each row was when it was last imported: a digest of
the synced columns as SKA-DLM had them, and as DLM stored them (issue 26).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ska_import_row",
        sa.Column("uid", UUID(as_uuid=True), primary_key=True),
        sa.Column("source_digest", sa.String(), nullable=False),
        sa.Column("imported_digest", sa.String(), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ska_import_row")
