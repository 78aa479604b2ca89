"""move force: a move an admin forced removes its source even below the item's target phase

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 12:00:00

A move is now refused before it is queued when removing its source would leave the item below its
target phase (it used to copy, then keep the source); an admin's force=true overrides that, and the
job remembers it for its last step.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("migration", sa.Column("move_force", sa.Boolean(), server_default="false", nullable=False))


def downgrade() -> None:
    op.drop_column("migration", "move_force")
