"""deleting state: a replica whose payload is being deleted says so before the payload goes

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04 21:30:00

Expiry deleted payloads inside the transaction that marked their rows DELETED: a crash (kill -9, a
lost node) between the deletion and the commit left READY rows whose bytes were gone. Rows are now
marked DELETING and committed first; the payloads go outside any transaction; then the rows become
DELETED. A pass that finds DELETING rows (a crashed one's) finishes them (issue 25).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TYPE item_state ADD VALUE IF NOT EXISTS 'DELETING' BEFORE 'DELETED'")


def downgrade() -> None:
    # PostgreSQL cannot drop a value from an enum type; an earlier DLM never meets it unless a row has it.
    deleting = op.get_bind().scalar(sa.text("SELECT count(*) FROM data_item WHERE item_state = 'DELETING'"))
    if deleting:
        raise ValueError(
            f"revision 0016: {deleting} replicas are DELETING (their payloads being deleted): let an expiry pass "
            "finish them (dlm worker expiry --once) before downgrading"
        )
