"""one live replica per payload: (storage_id, uri) unique among replicas not DELETED

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 22:00:00

Two live replicas naming the same payload meant that deleting one (expiry, capacity, a user) deleted
the bytes the other still counted on. An existing database holding such pairs fails this upgrade
with every pair named (storage, uri, items and uids); mark one of each pair DELETED without deleting
its payload (`UPDATE data_item SET item_state = 'DELETED' WHERE uid = ...`) and upgrade again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


SHARED_PAYLOADS = """
    SELECT s.storage_name, d.uri,
           string_agg(format('%L (uid %s)', d.item_name, d.uid), ' and ' ORDER BY d.uid) AS items
    FROM data_item AS d JOIN storage AS s ON s.storage_id = d.storage_id
    WHERE d.item_state <> 'DELETED' AND d.uri IS NOT NULL
    GROUP BY s.storage_name, d.uri
    HAVING count(*) > 1
    ORDER BY s.storage_name, d.uri
    LIMIT 20
"""


def upgrade() -> None:
    shared = op.get_bind().execute(sa.text(SHARED_PAYLOADS)).all()
    if shared:
        pairs = "; ".join(f"storage {row.storage_name!r}, uri {row.uri!r}: items {row.items}" for row in shared)
        raise ValueError(
            f"revision 0003 needs each payload to back one live replica, and these share one: {pairs}. "
            "Mark one of each DELETED (UPDATE data_item SET item_state = 'DELETED' WHERE uid = '...'; its payload "
            "stays) and run the upgrade again"
        )
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
