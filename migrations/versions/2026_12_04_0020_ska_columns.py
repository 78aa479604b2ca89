"""ska columns: data items' oid_deletion, copies' url and command, as SKA-DLM's rows have them

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-04 22:20:00

SKA-DLM's rows carry columns DLM's lacked (issue 26): ``data_item.oid_deletion``, when the item's last
replica was deleted (set on all its rows then), and ``migration.url`` and ``migration.command``, the
rclone daemon and the command it was given. DLM has no daemon (``url`` stays empty); ``command`` says
what DLM did in rclone's terms: operations/copyfile or sync/copy, operations/movefile or sync/move.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTIONS = [
    """
    CREATE FUNCTION dlm_migration_command() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.command IS NULL THEN
            NEW.command := CASE
                WHEN (SELECT item_type FROM data_item WHERE uid = NEW.source_uid) = 'container'
                THEN CASE WHEN NEW.move THEN 'sync/move' ELSE 'sync/copy' END
                ELSE CASE WHEN NEW.move THEN 'operations/movefile' ELSE 'operations/copyfile' END
            END;
        END IF;
        RETURN NEW;
    END
    $$
    """,
    # An item whose last live replica went in this statement: its deletion time on every row.
    """
    CREATE FUNCTION dlm_oid_deletion() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        gone uuid[];
    BEGIN
        -- Only a statement that deleted replicas (not this function's own update, which fires it again).
        SELECT array_agg(DISTINCT n.oid) INTO gone FROM new_rows n JOIN old_rows o ON o.uid = n.uid
        WHERE n.item_state = 'DELETED' AND o.item_state <> 'DELETED';
        IF gone IS NULL THEN
            RETURN NULL;
        END IF;
        UPDATE data_item AS d SET oid_deletion = now()
        WHERE d.oid = ANY (gone) AND d.oid_deletion IS NULL
          AND NOT EXISTS (
              SELECT 1 FROM data_item AS live WHERE live.oid = d.oid AND live.item_state <> 'DELETED'
          );
        RETURN NULL;
    END
    $$
    """,
]
TRIGGERS = [
    """
    CREATE TRIGGER migration_command BEFORE INSERT ON migration
    FOR EACH ROW EXECUTE FUNCTION dlm_migration_command()
    """,
    """
    CREATE TRIGGER data_item_oid_deletion AFTER UPDATE ON data_item
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION dlm_oid_deletion()
    """,
]


def upgrade() -> None:
    op.add_column("data_item", sa.Column("oid_deletion", sa.DateTime(timezone=True), nullable=True))
    op.add_column("migration", sa.Column("url", sa.String(), nullable=True))
    op.add_column("migration", sa.Column("command", sa.String(), nullable=True))
    # Items gone before this revision, as far as their rows tell; copies made before it.
    op.execute(
        "UPDATE data_item AS d SET oid_deletion = gone.last FROM ("
        " SELECT oid, max(uid_deletion) AS last FROM data_item GROUP BY oid"
        " HAVING bool_and(item_state = 'DELETED')) AS gone WHERE d.oid = gone.oid"
    )
    op.execute(
        "UPDATE migration AS m SET command = CASE WHEN s.item_type = 'container' "
        "THEN CASE WHEN m.move THEN 'sync/move' ELSE 'sync/copy' END "
        "ELSE CASE WHEN m.move THEN 'operations/movefile' ELSE 'operations/copyfile' END END "
        "FROM data_item AS s WHERE s.uid = m.source_uid"
    )
    for statement in FUNCTIONS + TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TRIGGER data_item_oid_deletion ON data_item")
    op.execute("DROP TRIGGER migration_command ON migration")
    op.execute("DROP FUNCTION dlm_oid_deletion()")
    op.execute("DROP FUNCTION dlm_migration_command()")
    op.drop_column("migration", "command")
    op.drop_column("migration", "url")
    op.drop_column("data_item", "oid_deletion")
