"""outbox: notifications written by triggers in the transaction of the change they tell of

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 05:00:00

Every transaction names the sinks it writes events for in the setting ``dlm.event_sinks`` (set by
``dlm.db.engine.set_context``; unset: no events). Triggers then add, in the same transaction:
- ``dlm.migration.update`` with the migration row (as SKA-DLM publishes it) when a migration is
  created or its status or ``complete`` changes;
- ``dlm.item.state`` (``dlm.item.expired`` when the expiry engine deletes) per statement, for the
  replicas whose state it set, in chunks of 1000;
- ``dlm.storage.event`` for each storage event (creation, config change, capacity, retirement).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ITEMS_PER_EVENT = 1000

FUNCTIONS = [
    """
    CREATE FUNCTION dlm_event_sinks() RETURNS text[] LANGUAGE sql STABLE AS $$
        SELECT string_to_array(nullif(current_setting('dlm.event_sinks', true), ''), ',')
    $$
    """,
    """
    CREATE FUNCTION dlm_outbox_migration() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF dlm_event_sinks() IS NOT NULL THEN
            INSERT INTO outbox_event (event_type, payload, pending)
            VALUES ('dlm.migration.update', to_jsonb(NEW), dlm_event_sinks());
        END IF;
        RETURN NULL;
    END
    $$
    """,
    # One statement's state changes, grouped by the state reached, at most ITEMS_PER_EVENT replicas an
    # event: a bulk registration of 100,000 items is 100 events.
    f"""
    CREATE FUNCTION dlm_outbox_item_state() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        changes jsonb;
    BEGIN
        IF dlm_event_sinks() IS NULL THEN
            RETURN NULL;
        END IF;
        IF TG_OP = 'INSERT' THEN
            SELECT jsonb_agg(jsonb_build_object('uid', n.uid, 'oid', n.oid, 'item_name', n.item_name,
                                                'storage_id', n.storage_id, 'uri', n.uri,
                                                'item_state', n.item_state, 'previous_state', NULL))
            INTO changes FROM new_rows n;
        ELSE
            SELECT jsonb_agg(jsonb_build_object('uid', n.uid, 'oid', n.oid, 'item_name', n.item_name,
                                                'storage_id', n.storage_id, 'uri', n.uri,
                                                'item_state', n.item_state, 'previous_state', o.item_state))
            INTO changes
            FROM new_rows n JOIN old_rows o ON o.uid = n.uid
            WHERE o.item_state IS DISTINCT FROM n.item_state;
        END IF;
        INSERT INTO outbox_event (event_type, payload, pending)
        SELECT CASE WHEN grouped.item_state = 'DELETED' AND dlm_actor() = 'expiry'
                    THEN 'dlm.item.expired' ELSE 'dlm.item.state' END,
               jsonb_build_object('item_state', grouped.item_state, 'actor', dlm_actor(), 'items', grouped.items),
               dlm_event_sinks()
        FROM (
            SELECT numbered.item_state, jsonb_agg(numbered.item - 'item_state' ORDER BY numbered.position) AS items
            FROM (
                SELECT change AS item, change ->> 'item_state' AS item_state,
                       row_number() OVER (PARTITION BY change ->> 'item_state' ORDER BY change ->> 'uid') AS position
                FROM jsonb_array_elements(coalesce(changes, '[]'::jsonb)) AS change
            ) AS numbered
            GROUP BY numbered.item_state, (numbered.position - 1) / {ITEMS_PER_EVENT}
        ) AS grouped;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE FUNCTION dlm_outbox_storage_event() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF dlm_event_sinks() IS NOT NULL THEN
            INSERT INTO outbox_event (event_type, payload, pending)
            SELECT 'dlm.storage.event', to_jsonb(NEW) || jsonb_build_object('storage_name', s.storage_name),
                   dlm_event_sinks()
            FROM storage s WHERE s.storage_id = NEW.storage_id;
        END IF;
        RETURN NULL;
    END
    $$
    """,
]

TRIGGERS = [
    """
    CREATE TRIGGER migration_outbox_insert AFTER INSERT ON migration
    FOR EACH ROW EXECUTE FUNCTION dlm_outbox_migration()
    """,
    """
    CREATE TRIGGER migration_outbox_update AFTER UPDATE ON migration
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.complete IS DISTINCT FROM NEW.complete)
    EXECUTE FUNCTION dlm_outbox_migration()
    """,
    """
    CREATE TRIGGER data_item_outbox_insert AFTER INSERT ON data_item
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION dlm_outbox_item_state()
    """,
    """
    CREATE TRIGGER data_item_outbox_update AFTER UPDATE ON data_item
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION dlm_outbox_item_state()
    """,
    """
    CREATE TRIGGER storage_event_outbox AFTER INSERT ON storage_event
    FOR EACH ROW EXECUTE FUNCTION dlm_outbox_storage_event()
    """,
]

DROP = [
    "DROP TRIGGER storage_event_outbox ON storage_event",
    "DROP TRIGGER data_item_outbox_update ON data_item",
    "DROP TRIGGER data_item_outbox_insert ON data_item",
    "DROP TRIGGER migration_outbox_update ON migration",
    "DROP TRIGGER migration_outbox_insert ON migration",
    "DROP FUNCTION dlm_outbox_storage_event()",
    "DROP FUNCTION dlm_outbox_item_state()",
    "DROP FUNCTION dlm_outbox_migration()",
    "DROP FUNCTION dlm_event_sinks()",
]


def upgrade() -> None:
    op.create_table(
        "outbox_event",
        sa.Column("event_id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("event_type", sa.String(), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("pending", postgresql.ARRAY(sa.String()), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_outbox_event")),
    )
    op.create_index(
        "ix_outbox_event_due", "outbox_event", ["next_attempt_at"], postgresql_where=sa.text("cardinality(pending) > 0")
    )
    for statement in FUNCTIONS + TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    for statement in DROP:
        op.execute(statement)
    op.drop_index(
        "ix_outbox_event_due", table_name="outbox_event", postgresql_where=sa.text("cardinality(pending) > 0")
    )
    op.drop_table("outbox_event")
