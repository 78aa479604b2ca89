"""failed copies index: the operator page groups the latest failed copies by error and storage

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04 21:40:00

The backlog on the operator page (issue 27) groups the most recent failed copies by destination and
error; among millions of copies this index finds them without reading the table.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_migration_failed", "migration", ["completion_date"], postgresql_where=sa.text("status = 'FAILED'")
    )


def downgrade() -> None:
    op.drop_index("ix_migration_failed", table_name="migration")
