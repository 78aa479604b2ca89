"""sites: where storages can be reached from, limits per link between locations, and where workers run

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-05 00:00:00

Issue 28. ``storage.reachable_from`` names the locations whose workers reach a storage directly (NULL:
a POSIX storage only from its own location, S3 and SFTP from anywhere); ``location_link`` limits the
copies from one location to another; ``worker_presence`` says which DLM processes run copy workers
where, so that a copy no worker can reach is reported rather than left waiting.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, UUID

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Expand: a nullable column and two tables older DLM does not read.
serves_from: str = "0020"


def upgrade() -> None:
    op.add_column("storage", sa.Column("reachable_from", ARRAY(sa.String()), nullable=True))
    op.create_table(
        "location_link",
        sa.Column("source_location_id", UUID(as_uuid=True), nullable=False),
        sa.Column("destination_location_id", UUID(as_uuid=True), nullable=False),
        sa.Column("max_transfers", sa.Integer(), nullable=True),
        sa.Column("max_bytes_per_second", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["source_location_id"], ["location.location_id"], name=op.f("fk_location_link_source_location_id_location")
        ),
        sa.ForeignKeyConstraint(
            ["destination_location_id"],
            ["location.location_id"],
            name=op.f("fk_location_link_destination_location_id_location"),
        ),
        sa.PrimaryKeyConstraint("source_location_id", "destination_location_id", name=op.f("pk_location_link")),
    )
    op.create_table(
        "worker_presence",
        sa.Column("process", sa.String(), nullable=False),
        sa.Column("location_id", UUID(as_uuid=True), nullable=True),
        sa.Column("copies", sa.Integer(), nullable=False),
        sa.Column("started", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("process", name=op.f("pk_worker_presence")),
    )


def downgrade() -> None:
    op.drop_table("worker_presence")
    op.drop_table("location_link")
    op.drop_column("storage", "reachable_from")
