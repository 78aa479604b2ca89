"""storage max_transfers: how many copies a storage carries at once

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-05 03:00:00

Issue 25. A storage's limit on the transfers reading from or writing to it at once (NULL: none): a
tape-backed file system or a small SFTP host takes few, an object store many, where one worker count
for the whole deployment fitted neither.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Expand: a nullable column older DLM does not read.
serves_from: str = "0020"


def upgrade() -> None:
    op.add_column("storage", sa.Column("max_transfers", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("storage", "max_transfers")
