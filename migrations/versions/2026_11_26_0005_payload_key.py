"""one live replica per payload, however its uri is written: "/x" and "x" are the same payload

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 04:00:00

SKA-DLM writes uris from the storage root with a leading "/"; DLM reads them as paths below the root,
so "/obs/x" and "obs/x" name one payload and must not back two live replicas. A database holding such
a pair fails this upgrade with each pair named; mark one of each DELETED (its payload stays) and
upgrade again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = sa.text("item_state <> 'DELETED'")

SHARED_PAYLOADS = """
    SELECT s.storage_name, ltrim(d.uri, '/') AS payload,
           string_agg(format('%L (uid %s, uri %L)', d.item_name, d.uid, d.uri), ' and ' ORDER BY d.uid) AS items
    FROM data_item AS d JOIN storage AS s ON s.storage_id = d.storage_id
    WHERE d.item_state <> 'DELETED' AND d.uri IS NOT NULL
    GROUP BY s.storage_name, ltrim(d.uri, '/')
    HAVING count(*) > 1
    ORDER BY 1, 2
    LIMIT 20
"""


def upgrade() -> None:
    shared = op.get_bind().execute(sa.text(SHARED_PAYLOADS)).all()
    if shared:
        pairs = "; ".join(f"storage {row.storage_name!r}, payload {row.payload!r}: {row.items}" for row in shared)
        raise ValueError(
            f"revision 0005 needs each payload to back one live replica, and these share one: {pairs}. "
            "Mark one of each DELETED (UPDATE data_item SET item_state = 'DELETED' WHERE uid = '...'; its payload "
            "stays) and run the upgrade again"
        )
    op.create_index(
        "uq_data_item_storage_id_payload_live",
        "data_item",
        ["storage_id", sa.text("ltrim(uri, '/')")],
        unique=True,
        postgresql_where=LIVE,
    )
    op.drop_index("uq_data_item_storage_id_uri_live", table_name="data_item", postgresql_where=LIVE)


def downgrade() -> None:
    op.create_index(
        "uq_data_item_storage_id_uri_live", "data_item", ["storage_id", "uri"], unique=True, postgresql_where=LIVE
    )
    op.drop_index("uq_data_item_storage_id_payload_live", table_name="data_item", postgresql_where=LIVE)
