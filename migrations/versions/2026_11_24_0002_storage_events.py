"""storage events: what the engines report about a storage (capacity warnings), append-only

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 21:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY = [
    """
    CREATE FUNCTION dlm_refuse_storage_event_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'storage_event is append-only: % is not allowed', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END
    $$
    """,
    """
    CREATE TRIGGER storage_event_append_only BEFORE UPDATE OR DELETE ON storage_event
    FOR EACH ROW EXECUTE FUNCTION dlm_refuse_storage_event_change()
    """,
    """
    CREATE TRIGGER storage_event_no_truncate BEFORE TRUNCATE ON storage_event
    FOR EACH STATEMENT EXECUTE FUNCTION dlm_refuse_storage_event_change()
    """,
]


def upgrade() -> None:
    op.create_table(
        "storage_event",
        sa.Column("event_id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column(
            "event_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.Column("storage_id", sa.UUID(), nullable=False),
        sa.Column("event", sa.String(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(
            ["storage_id"], ["storage.storage_id"], name=op.f("fk_storage_event_storage_id_storage")
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_storage_event")),
    )
    op.create_index("ix_storage_event_storage_id_event_id", "storage_event", ["storage_id", "event_id"])
    for statement in APPEND_ONLY:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TRIGGER storage_event_no_truncate ON storage_event")
    op.execute("DROP TRIGGER storage_event_append_only ON storage_event")
    op.execute("DROP FUNCTION dlm_refuse_storage_event_change()")
    op.drop_index("ix_storage_event_storage_id_event_id", table_name="storage_event")
    op.drop_table("storage_event")
