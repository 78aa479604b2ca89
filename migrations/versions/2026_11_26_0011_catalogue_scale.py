"""catalogue scale: running tallies instead of counting, indexes for the engines' idle passes

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26 10:00:00

Measured on a catalogue of a million items (bench/catalogue_queries.py, issue 17), each engine's pass
with nothing to do read the whole catalogue: expiry and replication walked data_item in uid/oid order
filtering every row (3 s), the capacity pass and the metrics summed every replica of every storage,
the operator page counted every replica by state and phase. These grow with the catalogue; DLM's
answers must not.

- replica_tally and migration_tally hold running counts written by statement-level triggers: each
  statement appends its change as a few rows (no row is updated, so writers never queue on a
  counter); dlm.db.tally folds them. They start from a count of what is there.
- ix_data_item_below_target: the replication engine's candidates (below target, or corrupted);
  usually empty, so an idle pass reads nothing.
- ix_data_item_event_kept: the expiry engine's question "was this expired replica already kept?"
  without reading the history.
- The two expiry indexes gain the uid: the sweep pages through them by (expiry, uid), and when many
  replicas share one expiry (a bulk registration's) each page otherwise read all of them again.
- ix_data_item_deleted: query_deleted in its own order.
- ix_migration_succeeded: the copies of the last hours (the operator page's chart) among millions.
- ix_migration_leased: the copies workers hold, searched for leases run out every few seconds.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ENUM, UUID

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each statement's change, grouped by key; nothing is written when the statement changed no count
# (an update of other columns: the audit stamping last_check, a copy's progress).
FUNCTIONS = [
    """
    CREATE FUNCTION dlm_tally_replicas() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO replica_tally (storage_id, item_state, oid_phase, replicas, bytes)
            SELECT storage_id, item_state, oid_phase, count(*), coalesce(sum(item_size), 0)
            FROM new_rows GROUP BY 1, 2, 3;
        ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO replica_tally (storage_id, item_state, oid_phase, replicas, bytes)
            SELECT storage_id, item_state, oid_phase, -count(*), -coalesce(sum(item_size), 0)
            FROM old_rows GROUP BY 1, 2, 3;
        ELSE
            INSERT INTO replica_tally (storage_id, item_state, oid_phase, replicas, bytes)
            SELECT storage_id, item_state, oid_phase, sum(replicas), sum(bytes)
            FROM (
                SELECT storage_id, item_state, oid_phase, 1 AS replicas, coalesce(item_size, 0) AS bytes
                FROM new_rows
                UNION ALL
                SELECT storage_id, item_state, oid_phase, -1, -coalesce(item_size, 0) FROM old_rows
            ) AS change
            GROUP BY 1, 2, 3
            HAVING sum(replicas) <> 0 OR sum(bytes) <> 0;
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE FUNCTION dlm_tally_migrations() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO migration_tally (status, migrations) SELECT status, count(*) FROM new_rows GROUP BY 1;
        ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO migration_tally (status, migrations) SELECT status, -count(*) FROM old_rows GROUP BY 1;
        ELSE
            INSERT INTO migration_tally (status, migrations)
            SELECT status, sum(migrations)
            FROM (
                SELECT status, 1 AS migrations FROM new_rows
                UNION ALL
                SELECT status, -1 FROM old_rows
            ) AS change
            GROUP BY 1
            HAVING sum(migrations) <> 0;
        END IF;
        RETURN NULL;
    END
    $$
    """,
]


def triggers(table: str, function: str) -> list[str]:
    # A trigger with transition tables takes one event.
    return [
        f"CREATE TRIGGER {table}_tally_insert AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
        f"CREATE TRIGGER {table}_tally_update AFTER UPDATE ON {table} "
        f"REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
        f"CREATE TRIGGER {table}_tally_delete AFTER DELETE ON {table} REFERENCING OLD TABLE AS old_rows "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
    ]


def upgrade() -> None:
    item_state = ENUM(name="item_state", create_type=False)
    phase = ENUM(name="phase_type", create_type=False)
    status = ENUM(name="migration_status", create_type=False)
    op.create_table(
        "replica_tally",
        sa.Column("storage_id", UUID(), nullable=True),
        sa.Column("item_state", item_state, nullable=False),
        sa.Column("oid_phase", phase, nullable=False),
        sa.Column("replicas", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "migration_tally",
        sa.Column("status", status, nullable=False),
        sa.Column("migrations", sa.BigInteger(), nullable=False),
    )
    # The counts start from what is there; the tables are locked meanwhile so that none is missed.
    op.execute("LOCK TABLE data_item, migration IN SHARE MODE")
    for statement in (
        FUNCTIONS + triggers("data_item", "dlm_tally_replicas") + triggers("migration", "dlm_tally_migrations")
    ):
        op.execute(statement)
    op.execute(
        "INSERT INTO replica_tally (storage_id, item_state, oid_phase, replicas, bytes) "
        "SELECT storage_id, item_state, oid_phase, count(*), coalesce(sum(item_size), 0) FROM data_item "
        "GROUP BY 1, 2, 3"
    )
    op.execute("INSERT INTO migration_tally (status, migrations) SELECT status, count(*) FROM migration GROUP BY 1")

    for column in ("uid_expiration", "oid_expiration"):
        op.drop_index(f"ix_data_item_{column}_live", table_name="data_item")
        op.create_index(
            f"ix_data_item_{column}_live",
            "data_item",
            [column, "uid"],
            postgresql_where=sa.text("item_state <> 'DELETED'"),
        )
    op.create_index(
        "ix_data_item_below_target",
        "data_item",
        ["oid"],
        postgresql_where=sa.text("item_state = 'CORRUPTED' OR (item_state = 'READY' AND oid_phase < target_phase)"),
    )
    op.create_index(
        "ix_data_item_deleted", "data_item", ["uid_deletion", "uid"], postgresql_where=sa.text("item_state = 'DELETED'")
    )
    op.create_index(
        "ix_migration_succeeded",
        "migration",
        ["completion_date"],
        postgresql_where=sa.text("status = 'SUCCEEDED'"),
    )
    op.create_index(
        "ix_migration_leased", "migration", ["lease_expires"], postgresql_where=sa.text("lease_owner IS NOT NULL")
    )
    op.create_index(
        "ix_data_item_event_kept", "data_item_event", ["uid"], postgresql_where=sa.text("event = 'expiry_kept'")
    )


def downgrade() -> None:
    op.drop_index("ix_data_item_event_kept", table_name="data_item_event")
    op.drop_index("ix_migration_succeeded", table_name="migration")
    op.drop_index("ix_migration_leased", table_name="migration")
    op.drop_index("ix_data_item_deleted", table_name="data_item")
    op.drop_index("ix_data_item_below_target", table_name="data_item")
    for column in ("uid_expiration", "oid_expiration"):
        op.drop_index(f"ix_data_item_{column}_live", table_name="data_item")
        op.create_index(
            f"ix_data_item_{column}_live", "data_item", [column], postgresql_where=sa.text("item_state <> 'DELETED'")
        )
    for table in ("data_item", "migration"):
        for event in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER {table}_tally_{event} ON {table}")
    op.execute("DROP FUNCTION dlm_tally_migrations()")
    op.execute("DROP FUNCTION dlm_tally_replicas()")
    op.drop_table("migration_tally")
    op.drop_table("replica_tally")
