"""initial schema: the SKA-DLM tables made safe, plus the item history (trace)

Revision ID: 0001
Revises:
Create Date: 2026-11-24 15:08:32.268063
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


FACILITIES = ["SRC", "STFC", "AWS", "Google", "Pawsey Centre", "external", "local"]

ENUM_TYPES = [
    "phase_type",
    "location_type",
    "location_country",
    "storage_type",
    "storage_interface",
    "item_type",
    "item_state",
    "checksum_method",
    "migration_status",
    "config_type",
]

TRIGGERS = [
    # Who acted: set per transaction by DLM (`SELECT set_config('dlm.actor', ..., true)`), else the role.
    """
    CREATE FUNCTION dlm_actor() RETURNS text LANGUAGE sql STABLE AS $$
        SELECT coalesce(nullif(current_setting('dlm.actor', true), ''), session_user::text)
    $$
    """,
    """
    CREATE FUNCTION dlm_timestamp_text(value timestamptz) RETURNS text LANGUAGE sql IMMUTABLE AS $$
        SELECT to_char(value AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')
    $$
    """,
    # A new replica without an oid is a new logical item (oid = uid). One whose oid names an existing
    # uid joins that uid's item; every replica of an item shares the item's creation time.
    """
    CREATE FUNCTION dlm_resolve_oid() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        item_oid uuid;
        item_created timestamptz;
    BEGIN
        IF NEW.oid IS NULL THEN
            NEW.oid := NEW.uid;
            NEW.oid_creation := NEW.uid_creation;
            RETURN NEW;
        END IF;
        SELECT oid, oid_creation INTO item_oid, item_created FROM data_item WHERE uid = NEW.oid;
        IF NOT FOUND THEN
            SELECT oid, oid_creation INTO item_oid, item_created FROM data_item WHERE oid = NEW.oid LIMIT 1;
        END IF;
        NEW.oid := coalesce(item_oid, NEW.oid);
        NEW.oid_creation := coalesce(item_created, NEW.uid_creation);
        RETURN NEW;
    END
    $$
    """,
    """
    CREATE TRIGGER data_item_resolve_oid BEFORE INSERT ON data_item
    FOR EACH ROW EXECUTE FUNCTION dlm_resolve_oid()
    """,
    # The trace. Statement-level triggers with transition tables: one INSERT per statement, so a bulk
    # registration of thousands of items costs one extra statement, not thousands.
    """
    CREATE FUNCTION dlm_history_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO data_item_event (uid, oid, event, old_value, new_value, actor)
        SELECT n.uid, n.oid, e.event, NULL, e.new_value, dlm_actor()
        FROM new_rows n
        CROSS JOIN LATERAL (VALUES
            (1, 'created', n.item_state::text),
            (2, 'storage_id', n.storage_id::text),
            (3, 'uri', n.uri),
            (4, 'uid_phase', n.uid_phase::text),
            (5, 'target_phase', n.target_phase::text),
            (6, 'uid_expiration', dlm_timestamp_text(n.uid_expiration)),
            (7, 'oid_expiration', dlm_timestamp_text(n.oid_expiration))
        ) AS e(position, event, new_value)
        WHERE e.new_value IS NOT NULL
        ORDER BY n.uid, e.position;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE FUNCTION dlm_history_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO data_item_event (uid, oid, event, old_value, new_value, actor)
        SELECT n.uid, n.oid, e.event, e.old_value, e.new_value, dlm_actor()
        FROM new_rows n
        JOIN old_rows o ON o.uid = n.uid
        CROSS JOIN LATERAL (VALUES
            (1, 'item_state', o.item_state::text, n.item_state::text),
            (2, 'storage_id', o.storage_id::text, n.storage_id::text),
            (3, 'uri', o.uri, n.uri),
            (4, 'item_name', o.item_name, n.item_name),
            (5, 'uid_phase', o.uid_phase::text, n.uid_phase::text),
            (6, 'oid_phase', o.oid_phase::text, n.oid_phase::text),
            (7, 'target_phase', o.target_phase::text, n.target_phase::text),
            (8, 'uid_expiration', dlm_timestamp_text(o.uid_expiration), dlm_timestamp_text(n.uid_expiration)),
            (9, 'oid_expiration', dlm_timestamp_text(o.oid_expiration), dlm_timestamp_text(n.oid_expiration))
        ) AS e(position, event, old_value, new_value)
        WHERE e.old_value IS DISTINCT FROM e.new_value
        ORDER BY n.uid, e.position;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER data_item_history_insert AFTER INSERT ON data_item
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION dlm_history_on_insert()
    """,
    """
    CREATE TRIGGER data_item_history_update AFTER UPDATE ON data_item
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION dlm_history_on_update()
    """,
    # History is append-only: nobody, DLM included, rewrites the trace.
    """
    CREATE FUNCTION dlm_refuse_history_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'data_item_event is append-only: % is not allowed', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END
    $$
    """,
    """
    CREATE TRIGGER data_item_event_append_only BEFORE UPDATE OR DELETE ON data_item_event
    FOR EACH ROW EXECUTE FUNCTION dlm_refuse_history_change()
    """,
    """
    CREATE TRIGGER data_item_event_no_truncate BEFORE TRUNCATE ON data_item_event
    FOR EACH STATEMENT EXECUTE FUNCTION dlm_refuse_history_change()
    """,
]

DROP_TRIGGERS = [
    "DROP TRIGGER data_item_event_no_truncate ON data_item_event",
    "DROP TRIGGER data_item_event_append_only ON data_item_event",
    "DROP FUNCTION dlm_refuse_history_change()",
    "DROP TRIGGER data_item_history_update ON data_item",
    "DROP TRIGGER data_item_history_insert ON data_item",
    "DROP FUNCTION dlm_history_on_update()",
    "DROP FUNCTION dlm_history_on_insert()",
    "DROP TRIGGER data_item_resolve_oid ON data_item",
    "DROP FUNCTION dlm_resolve_oid()",
    "DROP FUNCTION dlm_timestamp_text(timestamptz)",
    "DROP FUNCTION dlm_actor()",
]


def upgrade() -> None:
    _create_tables()
    for statement in TRIGGERS:
        op.execute(statement)
    op.bulk_insert(
        sa.table("location_facility", sa.column("facility_name", sa.String)),
        [{"facility_name": name} for name in FACILITIES],
    )


def _create_tables() -> None:
    op.create_table(
        "data_item_event",
        sa.Column("event_id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column(
            "event_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.Column("uid", sa.UUID(), nullable=False),
        sa.Column("oid", sa.UUID(), nullable=False),
        sa.Column("event", sa.String(), nullable=False),
        sa.Column("old_value", sa.Text(), nullable=True),
        sa.Column("new_value", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_data_item_event")),
    )
    op.create_index("ix_data_item_event_oid_event_id", "data_item_event", ["oid", "event_id"], unique=False)
    op.create_index("ix_data_item_event_uid_event_id", "data_item_event", ["uid", "event_id"], unique=False)
    op.create_table(
        "location_facility",
        sa.Column("facility_name", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("facility_name", name=op.f("pk_location_facility")),
    )
    op.create_table(
        "phase_change",
        sa.Column("phase_change_id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("oid", sa.UUID(), nullable=False),
        sa.Column("final_phase", sa.Enum("PLASMA", "GAS", "LIQUID", "SOLID", name="phase_type"), nullable=False),
        sa.Column("request_creation", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column(
            "request_expiry",
            sa.DateTime(timezone=True),
            server_default=sa.text("now() + interval '24 hours'"),
            nullable=False,
        ),
        sa.Column("completed", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("phase_change_id", name=op.f("pk_phase_change")),
    )
    op.create_index(op.f("ix_phase_change_oid"), "phase_change", ["oid"], unique=False)
    op.create_table(
        "location",
        sa.Column("location_id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("location_name", sa.String(), nullable=False),
        sa.Column(
            "location_type",
            sa.Enum(
                "local-dev",
                "low-integration",
                "mid-integration",
                "low-operations",
                "mid-operations",
                name="location_type",
            ),
            nullable=False,
        ),
        sa.Column("location_country", sa.Enum("AU", "ZA", "UK", name="location_country"), nullable=True),
        sa.Column("location_city", sa.String(), nullable=True),
        sa.Column("location_facility", sa.String(), nullable=True),
        sa.Column("location_check_url", sa.String(), nullable=True),
        sa.Column("location_last_check", sa.DateTime(timezone=True), nullable=True),
        sa.Column("location_date", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["location_facility"],
            ["location_facility.facility_name"],
            name=op.f("fk_location_location_facility_location_facility"),
        ),
        sa.PrimaryKeyConstraint("location_id", name=op.f("pk_location")),
        sa.UniqueConstraint("location_name", name=op.f("uq_location_location_name")),
    )
    op.create_table(
        "storage",
        sa.Column("storage_id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("location_id", sa.UUID(), nullable=False),
        sa.Column("storage_name", sa.String(), nullable=False),
        sa.Column("root_directory", sa.String(), nullable=False),
        sa.Column("storage_type", sa.Enum("filesystem", "objectstore", "tape", name="storage_type"), nullable=False),
        sa.Column(
            "storage_interface",
            sa.Enum("posix", "s3", "sftp", "https", name="storage_interface"),
            nullable=False,
        ),
        sa.Column(
            "storage_phase",
            sa.Enum("PLASMA", "GAS", "LIQUID", "SOLID", name="phase_type"),
            server_default="GAS",
            nullable=False,
        ),
        sa.Column("storage_capacity", sa.BigInteger(), server_default="-1", nullable=False),
        sa.Column("storage_use_pct", sa.Numeric(precision=5, scale=2), server_default="0", nullable=False),
        sa.Column("storage_permissions", sa.String(), server_default="RW", nullable=False),
        sa.Column("storage_checked", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("storage_check_url", sa.String(), nullable=True),
        sa.Column("storage_last_checked", sa.DateTime(timezone=True), nullable=True),
        sa.Column("storage_num_objects", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("storage_available", sa.Boolean(), server_default="true", nullable=False),
        sa.Column("storage_retired", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("storage_retire_date", sa.DateTime(timezone=True), nullable=True),
        sa.Column("storage_date", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["location_id"], ["location.location_id"], name=op.f("fk_storage_location_id_location")
        ),
        sa.PrimaryKeyConstraint("storage_id", name=op.f("pk_storage")),
        sa.UniqueConstraint("storage_name", name=op.f("uq_storage_storage_name")),
    )
    op.create_index(op.f("ix_storage_location_id"), "storage", ["location_id"], unique=False)
    op.create_table(
        "data_item",
        sa.Column("uid", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("oid", sa.UUID(), nullable=False),
        sa.Column("item_version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("item_name", sa.String(), nullable=True),
        sa.Column("item_tags", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("storage_id", sa.UUID(), nullable=True),
        sa.Column("uri", sa.String(), nullable=True),
        sa.Column("item_value", sa.Text(), nullable=True),
        sa.Column(
            "item_type",
            sa.Enum("unknown", "file", "container", name="item_type"),
            server_default="file",
            nullable=False,
        ),
        sa.Column("item_format", sa.String(), server_default="unknown", nullable=True),
        sa.Column("item_encoding", sa.String(), server_default="unknown", nullable=True),
        sa.Column("item_mime_type", sa.String(), server_default="application/octet-stream", nullable=True),
        sa.Column("item_level", sa.SmallInteger(), server_default="-1", nullable=False),
        sa.Column(
            "uid_phase",
            sa.Enum("PLASMA", "GAS", "LIQUID", "SOLID", name="phase_type"),
            server_default="GAS",
            nullable=False,
        ),
        sa.Column(
            "oid_phase",
            sa.Enum("PLASMA", "GAS", "LIQUID", "SOLID", name="phase_type"),
            server_default="GAS",
            nullable=False,
        ),
        sa.Column(
            "target_phase",
            sa.Enum("PLASMA", "GAS", "LIQUID", "SOLID", name="phase_type"),
            server_default="SOLID",
            nullable=False,
        ),
        sa.Column(
            "item_state",
            sa.Enum("INITIALISED", "READY", "CORRUPTED", "EXPIRED", "DELETED", name="item_state"),
            server_default="INITIALISED",
            nullable=False,
        ),
        sa.Column("uid_creation", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("oid_creation", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "uid_expiration",
            sa.DateTime(timezone=True),
            server_default=sa.text("now() + interval '24 hours'"),
            nullable=False,
        ),
        sa.Column(
            "oid_expiration",
            sa.DateTime(timezone=True),
            server_default=sa.text("'2099-12-31 23:59:59+00'"),
            nullable=False,
        ),
        sa.Column("uid_deletion", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expired", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("deleted", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("last_access", sa.DateTime(timezone=True), nullable=True),
        sa.Column("item_checksum", sa.String(), nullable=True),
        sa.Column(
            "checksum_method",
            sa.Enum("none", "crc32c", "adler32", "md5", "sha256", "xxh3", name="checksum_method"),
            server_default="crc32c",
            nullable=False,
        ),
        sa.Column("last_check", sa.DateTime(timezone=True), nullable=True),
        sa.Column("item_owner", sa.String(), server_default="SKA", nullable=False),
        sa.Column("item_group", sa.String(), server_default="SKA", nullable=False),
        sa.Column("acl", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("activate_method", sa.String(), nullable=True),
        sa.Column("item_size", sa.BigInteger(), nullable=True),
        sa.Column("decompressed_size", sa.BigInteger(), nullable=True),
        sa.Column("compression_method", sa.String(), nullable=True),
        sa.Column("parents", sa.UUID(), nullable=True),
        sa.Column("children", sa.UUID(), nullable=True),
        sa.Column("metadata", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.ForeignKeyConstraint(["storage_id"], ["storage.storage_id"], name=op.f("fk_data_item_storage_id_storage")),
        sa.PrimaryKeyConstraint("uid", name=op.f("pk_data_item")),
    )
    op.create_index("ix_data_item_item_name", "data_item", ["item_name"], unique=False)
    op.create_index("ix_data_item_item_state", "data_item", ["item_state"], unique=False)
    op.create_index("ix_data_item_oid", "data_item", ["oid"], unique=False)
    op.create_index(
        "ix_data_item_oid_expiration_live",
        "data_item",
        ["oid_expiration"],
        unique=False,
        postgresql_where=sa.text("item_state <> 'DELETED'"),
    )
    op.create_index(
        "ix_data_item_parents",
        "data_item",
        ["parents"],
        unique=False,
        postgresql_where=sa.text("parents IS NOT NULL"),
    )
    op.create_index("ix_data_item_storage_id_item_state", "data_item", ["storage_id", "item_state"], unique=False)
    op.create_index("ix_data_item_uid_creation", "data_item", ["uid_creation"], unique=False)
    op.create_index(
        "ix_data_item_uid_expiration_live",
        "data_item",
        ["uid_expiration"],
        unique=False,
        postgresql_where=sa.text("item_state <> 'DELETED'"),
    )
    op.create_index(
        "uq_data_item_item_name_storage_id_live",
        "data_item",
        ["item_name", "storage_id"],
        unique=True,
        postgresql_where=sa.text("item_state <> 'DELETED'"),
    )
    op.create_table(
        "migration",
        sa.Column("migration_id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("oid", sa.UUID(), nullable=False),
        sa.Column("source_uid", sa.UUID(), nullable=True),
        sa.Column("destination_uid", sa.UUID(), nullable=True),
        sa.Column("source_storage_id", sa.UUID(), nullable=False),
        sa.Column("destination_storage_id", sa.UUID(), nullable=False),
        sa.Column("user", sa.String(), server_default="SKA", nullable=False),
        sa.Column("group", sa.String(), server_default="SKA", nullable=False),
        sa.Column("job_status", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("job_stats", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("complete", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("date", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("completion_date", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "status",
            sa.Enum("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", name="migration_status"),
            server_default="PENDING",
            nullable=False,
        ),
        sa.Column("bytes_total", sa.BigInteger(), nullable=True),
        sa.Column("bytes_done", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("lease_owner", sa.String(), nullable=True),
        sa.Column("lease_expires", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["destination_storage_id"],
            ["storage.storage_id"],
            name=op.f("fk_migration_destination_storage_id_storage"),
        ),
        sa.ForeignKeyConstraint(
            ["source_storage_id"], ["storage.storage_id"], name=op.f("fk_migration_source_storage_id_storage")
        ),
        sa.PrimaryKeyConstraint("migration_id", name=op.f("pk_migration")),
    )
    op.create_index(
        "ix_migration_claimable",
        "migration",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('PENDING', 'RUNNING')"),
    )
    op.create_index(op.f("ix_migration_date"), "migration", ["date"], unique=False)
    op.create_index(op.f("ix_migration_destination_storage_id"), "migration", ["destination_storage_id"], unique=False)
    op.create_index(op.f("ix_migration_oid"), "migration", ["oid"], unique=False)
    op.create_index(op.f("ix_migration_source_storage_id"), "migration", ["source_storage_id"], unique=False)
    op.create_table(
        "storage_config",
        sa.Column("config_id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("storage_id", sa.UUID(), nullable=False),
        sa.Column("config", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "config_type",
            sa.Enum("rclone", "ssh", "aws", "gcs", name="config_type"),
            server_default="rclone",
            nullable=False,
        ),
        sa.Column("config_date", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["storage_id"], ["storage.storage_id"], name=op.f("fk_storage_config_storage_id_storage")
        ),
        sa.PrimaryKeyConstraint("config_id", name=op.f("pk_storage_config")),
    )
    op.create_index(op.f("ix_storage_config_storage_id"), "storage_config", ["storage_id"], unique=False)


def downgrade() -> None:
    for statement in DROP_TRIGGERS:
        op.execute(statement)
    op.drop_index(op.f("ix_storage_config_storage_id"), table_name="storage_config")
    op.drop_table("storage_config")
    op.drop_index(op.f("ix_migration_source_storage_id"), table_name="migration")
    op.drop_index(op.f("ix_migration_oid"), table_name="migration")
    op.drop_index(op.f("ix_migration_destination_storage_id"), table_name="migration")
    op.drop_index(op.f("ix_migration_date"), table_name="migration")
    op.drop_index(
        "ix_migration_claimable",
        table_name="migration",
        postgresql_where=sa.text("status IN ('PENDING', 'RUNNING')"),
    )
    op.drop_table("migration")
    op.drop_index(
        "uq_data_item_item_name_storage_id_live",
        table_name="data_item",
        postgresql_where=sa.text("item_state <> 'DELETED'"),
    )
    op.drop_index(
        "ix_data_item_uid_expiration_live",
        table_name="data_item",
        postgresql_where=sa.text("item_state <> 'DELETED'"),
    )
    op.drop_index("ix_data_item_uid_creation", table_name="data_item")
    op.drop_index("ix_data_item_storage_id_item_state", table_name="data_item")
    op.drop_index("ix_data_item_parents", table_name="data_item", postgresql_where=sa.text("parents IS NOT NULL"))
    op.drop_index(
        "ix_data_item_oid_expiration_live",
        table_name="data_item",
        postgresql_where=sa.text("item_state <> 'DELETED'"),
    )
    op.drop_index("ix_data_item_oid", table_name="data_item")
    op.drop_index("ix_data_item_item_state", table_name="data_item")
    op.drop_index("ix_data_item_item_name", table_name="data_item")
    op.drop_table("data_item")
    op.drop_index(op.f("ix_storage_location_id"), table_name="storage")
    op.drop_table("storage")
    op.drop_table("location")
    op.drop_index(op.f("ix_phase_change_oid"), table_name="phase_change")
    op.drop_table("phase_change")
    op.drop_table("location_facility")
    op.drop_index("ix_data_item_event_uid_event_id", table_name="data_item_event")
    op.drop_index("ix_data_item_event_oid_event_id", table_name="data_item_event")
    op.drop_table("data_item_event")
    for enum_type in ENUM_TYPES:
        op.execute(f"DROP TYPE {enum_type}")
