"""one live replica per payload: (storage_id, uri) unique among replicas not DELETED

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 22:00:00

Two live replicas naming the same payload meant that deleting one (expiry, capacity, a user) deleted
the bytes the other still counted on. An existing database holding such pairs fails this upgrade
with the pair named in PostgreSQL's error; mark one of each pair DELETED without deleting its
payload (`UPDATE data_item SET item_state = 'DELETED' WHERE uid = ...`) and upgrade again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "uq_data_item_storage_id_uri_live",
        "data_item",
        ["storage_id", "uri"],
        unique=True,
        postgresql_where=sa.text("item_state <> 'DELETED'"),
    )


def downgrade() -> None:
    op.drop_index(
        "uq_data_item_storage_id_uri_live",
        table_name="data_item",
        postgresql_where=sa.text("item_state <> 'DELETED'"),
    )
