"""move: a migration that deletes its source replica once the copy is READY

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("migration", sa.Column("move", sa.Boolean(), server_default="false", nullable=False))


def downgrade() -> None:
    op.drop_column("migration", "move")
