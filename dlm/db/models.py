"""DLM's tables. Together with the Alembic revisions in ``migrations/`` this is the one place where the
schema is defined; the SQL functions and triggers that write the history live in the revisions."""

import datetime
import uuid
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Enum,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dlm.enums import (
    ChecksumMethod,
    ConfigType,
    ItemState,
    ItemType,
    LocationCountry,
    LocationType,
    MigrationStatus,
    Phase,
    Role,
    StorageInterface,
    StorageType,
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def pg_enum(enum_class: type, name: str) -> Enum:
    # Store the enum's values ("file", "local-dev"), not its Python member names.
    return Enum(enum_class, name=name, values_callable=lambda members: [m.value for m in members])


PHASE = pg_enum(Phase, "phase_type")
# SKA-DLM's owner and group of an item nobody claimed (open mode, or SKA's clients without a token).
DEFAULT_OWNER = "SKA"
DEFAULT_MIME_TYPE = "application/octet-stream"
UTC_NOW = text("now()")


def timestamp(**kwargs: Any) -> Mapped[datetime.datetime]:
    return mapped_column(DateTime(timezone=True), **kwargs)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class LocationFacility(Base):
    __tablename__ = "location_facility"

    facility_name: Mapped[str] = mapped_column(String, primary_key=True)


class Location(Base):
    __tablename__ = "location"

    location_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, server_default=text("gen_random_uuid()"))
    location_name: Mapped[str] = mapped_column(String, unique=True)
    location_type: Mapped[LocationType] = mapped_column(pg_enum(LocationType, "location_type"))
    location_country: Mapped[LocationCountry | None] = mapped_column(pg_enum(LocationCountry, "location_country"))
    location_city: Mapped[str | None] = mapped_column(String)
    location_facility: Mapped[str | None] = mapped_column(ForeignKey("location_facility.facility_name"))
    location_check_url: Mapped[str | None] = mapped_column(String)
    location_last_check: Mapped[datetime.datetime | None] = timestamp()
    location_date: Mapped[datetime.datetime] = timestamp(server_default=UTC_NOW)


class Storage(Base):
    __tablename__ = "storage"

    storage_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, server_default=text("gen_random_uuid()"))
    location_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("location.location_id"), index=True)
    storage_name: Mapped[str] = mapped_column(String, unique=True)
    root_directory: Mapped[str] = mapped_column(String)
    storage_type: Mapped[StorageType] = mapped_column(pg_enum(StorageType, "storage_type"))
    storage_interface: Mapped[StorageInterface] = mapped_column(pg_enum(StorageInterface, "storage_interface"))
    storage_phase: Mapped[Phase] = mapped_column(PHASE, server_default=Phase.GAS.value)
    # Bytes DLM may use on this storage; -1 means no limit was set.
    storage_capacity: Mapped[int] = mapped_column(BigInteger, server_default="-1")
    storage_use_pct: Mapped[float] = mapped_column(Numeric(5, 2), server_default="0")
    storage_permissions: Mapped[str] = mapped_column(String, server_default="RW")
    storage_checked: Mapped[bool] = mapped_column(Boolean, server_default="false")
    storage_check_url: Mapped[str | None] = mapped_column(String)
    storage_last_checked: Mapped[datetime.datetime | None] = timestamp()
    storage_num_objects: Mapped[int] = mapped_column(BigInteger, server_default="0")
    storage_available: Mapped[bool] = mapped_column(Boolean, server_default="true")
    storage_retired: Mapped[bool] = mapped_column(Boolean, server_default="false")
    storage_retire_date: Mapped[datetime.datetime | None] = timestamp()
    storage_date: Mapped[datetime.datetime] = timestamp(server_default=UTC_NOW)
    # The locations whose workers reach this storage directly, by name ("*": every location). NULL: a
    # POSIX storage only from its own location (a mount), S3 and SFTP from anywhere (dlm.sites).
    reachable_from: Mapped[list[str] | None] = mapped_column(ARRAY(String))
    # Transfers reading from or writing to it at once (a worker's copy, or its batch, is one); NULL: no limit.
    max_transfers: Mapped[int | None] = mapped_column(Integer)


class LocationLink(Base):
    """Limits on the copies from one location to another (dlm.sites): how many at once, and how many
    bytes a second in all. A pair without a row has no limit."""

    __tablename__ = "location_link"

    source_location_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("location.location_id"), primary_key=True)
    destination_location_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("location.location_id"), primary_key=True)
    max_transfers: Mapped[int | None] = mapped_column(Integer)
    max_bytes_per_second: Mapped[int | None] = mapped_column(BigInteger)


class WorkerPresence(Base):
    """A DLM process running copy workers, where it runs: renewed while it runs, removed when it stops
    (one not renewed for a while has died). What decides whether a queued copy can be placed."""

    __tablename__ = "worker_presence"

    process: Mapped[str] = mapped_column(String, primary_key=True)
    location_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    copies: Mapped[int] = mapped_column(Integer)
    started: Mapped[datetime.datetime] = timestamp(server_default=UTC_NOW)
    last_seen: Mapped[datetime.datetime] = timestamp(server_default=UTC_NOW)


class StorageConfig(Base):
    __tablename__ = "storage_config"

    config_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, server_default=text("gen_random_uuid()"))
    storage_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("storage.storage_id"), index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSONB)
    config_type: Mapped[ConfigType] = mapped_column(
        pg_enum(ConfigType, "config_type"), server_default=ConfigType.RCLONE.value
    )
    config_date: Mapped[datetime.datetime] = timestamp(server_default=UTC_NOW)


NOT_DELETED = text("item_state <> 'DELETED'")


class DataItem(Base):
    """One replica: a payload on one storage. Replicas of one logical item share ``oid``."""

    __tablename__ = "data_item"

    uid: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, server_default=text("gen_random_uuid()"))
    # Set by the dlm_resolve_oid trigger: a new item's own uid, or the oid of the uid it names.
    oid: Mapped[uuid.UUID] = mapped_column(UUID)
    item_version: Mapped[int] = mapped_column(Integer, server_default="1")
    item_name: Mapped[str | None] = mapped_column(String)
    item_tags: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    storage_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("storage.storage_id"))
    uri: Mapped[str | None] = mapped_column(String)
    item_value: Mapped[str | None] = mapped_column(Text)
    item_type: Mapped[ItemType] = mapped_column(pg_enum(ItemType, "item_type"), server_default=ItemType.FILE.value)
    item_format: Mapped[str | None] = mapped_column(String, server_default="unknown")
    item_encoding: Mapped[str | None] = mapped_column(String, server_default="unknown")
    item_mime_type: Mapped[str | None] = mapped_column(String, server_default=DEFAULT_MIME_TYPE)
    item_level: Mapped[int] = mapped_column(SmallInteger, server_default="-1")
    uid_phase: Mapped[Phase] = mapped_column(PHASE, server_default=Phase.GAS.value)
    oid_phase: Mapped[Phase] = mapped_column(PHASE, server_default=Phase.GAS.value)
    target_phase: Mapped[Phase] = mapped_column(PHASE, server_default=Phase.SOLID.value)
    item_state: Mapped[ItemState] = mapped_column(
        pg_enum(ItemState, "item_state"), server_default=ItemState.INITIALISED.value
    )
    uid_creation: Mapped[datetime.datetime] = timestamp(server_default=UTC_NOW)
    oid_creation: Mapped[datetime.datetime | None] = timestamp()
    uid_expiration: Mapped[datetime.datetime] = timestamp(server_default=text("now() + interval '24 hours'"))
    oid_expiration: Mapped[datetime.datetime] = timestamp(server_default=text("'2099-12-31 23:59:59+00'"))
    uid_deletion: Mapped[datetime.datetime | None] = timestamp()
    # When the item's last replica was deleted (on every row of the item; SKA-DLM's column).
    oid_deletion: Mapped[datetime.datetime | None] = timestamp()
    expired: Mapped[bool] = mapped_column(Boolean, server_default="false")
    deleted: Mapped[bool] = mapped_column(Boolean, server_default="false")
    last_access: Mapped[datetime.datetime | None] = timestamp()
    item_checksum: Mapped[str | None] = mapped_column(String)
    checksum_method: Mapped[ChecksumMethod] = mapped_column(
        pg_enum(ChecksumMethod, "checksum_method"), server_default=ChecksumMethod.CRC32C.value
    )
    last_check: Mapped[datetime.datetime | None] = timestamp()
    item_owner: Mapped[str] = mapped_column(String, server_default=DEFAULT_OWNER)
    item_group: Mapped[str] = mapped_column(String, server_default=DEFAULT_OWNER)
    acl: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    activate_method: Mapped[str | None] = mapped_column(String)
    item_size: Mapped[int | None] = mapped_column(BigInteger)
    decompressed_size: Mapped[int | None] = mapped_column(BigInteger)
    compression_method: Mapped[str | None] = mapped_column(String)
    # oid of the container this item belongs to.
    parents: Mapped[uuid.UUID | None] = mapped_column(UUID)
    children: Mapped[uuid.UUID | None] = mapped_column(UUID)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB)
    # What DLM's metadata plugins found at registration, by plugin (dlm.metadata); ``metadata`` stays
    # the caller's.
    extracted_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # When the payload was last modified, as its storage said at registration.
    payload_modified: Mapped[datetime.datetime | None] = timestamp()

    __table_args__ = (
        Index("ix_data_item_item_name", "item_name"),
        Index("ix_data_item_oid", "oid"),
        Index("ix_data_item_storage_id_item_state", "storage_id", "item_state"),
        Index("ix_data_item_item_state", "item_state"),
        Index("ix_data_item_uid_creation", "uid_creation"),
        Index("ix_data_item_parents", "parents", postgresql_where=text("parents IS NOT NULL")),
        # The expiry sweeps: only live replicas are ever candidates.
        # The uid as well: the sweep pages by (expiry, uid), and many items share one expiry.
        Index("ix_data_item_uid_expiration_live", "uid_expiration", "uid", postgresql_where=NOT_DELETED),
        Index("ix_data_item_oid_expiration_live", "oid_expiration", "uid", postgresql_where=NOT_DELETED),
        # What the replication engine has to act on: replicas below their item's target phase (phases
        # are declared in weight order, so the enum's order compares them), and corrupted ones.
        Index(
            "ix_data_item_below_target",
            "oid",
            postgresql_where=text("item_state = 'CORRUPTED' OR (item_state = 'READY' AND oid_phase < target_phase)"),
        ),
        Index("ix_data_item_deleted", "uid_deletion", "uid", postgresql_where=text("item_state = 'DELETED'")),
        # The audit's next replicas to check, least recently checked first (never checked before all).
        Index(
            "ix_data_item_audit_due",
            text("last_check NULLS FIRST"),
            "uid",
            postgresql_where=text("item_state = 'READY' AND storage_id IS NOT NULL"),
        ),
        # A name is registered at most once per storage among live replicas.
        Index(
            "uq_data_item_item_name_storage_id_live",
            "item_name",
            "storage_id",
            unique=True,
            postgresql_where=NOT_DELETED,
        ),
        # A payload belongs to one live replica: otherwise deleting one item's replica (expiry, capacity,
        # a user) would delete the bytes another item still counts on.
        # "/x" and "x" name the same payload (dlm.transfer.paths.payload_key).
        Index(
            "uq_data_item_storage_id_payload_live",
            "storage_id",
            text("ltrim(uri, '/')"),
            unique=True,
            postgresql_where=NOT_DELETED,
        ),
    )


class DataItemEvent(Base):
    """DLM's trace: an append-only record of every change of state, phase, uri, storage or expiry,
    written by database triggers so that no code path can forget it."""

    __tablename__ = "data_item_event"

    event_id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    event_time: Mapped[datetime.datetime] = timestamp(server_default=text("clock_timestamp()"))
    uid: Mapped[uuid.UUID] = mapped_column(UUID)
    oid: Mapped[uuid.UUID] = mapped_column(UUID)
    event: Mapped[str] = mapped_column(String)
    old_value: Mapped[str | None] = mapped_column(Text)
    new_value: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String)
    # A ``created`` event's other initial values (storage_id, uri, phases, expiries), as a JSON object.
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    __table_args__ = (
        Index("ix_data_item_event_uid_event_id", "uid", "event_id"),
        Index("ix_data_item_event_oid_event_id", "oid", "event_id"),
        # Expired replicas kept for their item (dlm.lifecycle.expiry.KEPT_EVENT): the expiry engine asks
        # of every expired candidate whether it was, among a history of a hundred million entries.
        Index("ix_data_item_event_kept", "uid", postgresql_where=text("event = 'expiry_kept'")),
    )


class StorageEvent(Base):
    """What the engines have to say about a storage rather than an item: that it stays above its
    high watermark, and when it is relieved. Append-only, like the item history."""

    __tablename__ = "storage_event"

    event_id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    event_time: Mapped[datetime.datetime] = timestamp(server_default=text("clock_timestamp()"))
    storage_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("storage.storage_id"))
    event: Mapped[str] = mapped_column(String)
    detail: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String)

    __table_args__ = (Index("ix_storage_event_storage_id_event_id", "storage_id", "event_id"),)


class Migration(Base):
    """A copy of an item between storages, run as a durable job that any DLM process may claim."""

    __tablename__ = "migration"

    migration_id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    job_id: Mapped[int | None] = mapped_column(BigInteger)
    oid: Mapped[uuid.UUID] = mapped_column(UUID, index=True)
    source_uid: Mapped[uuid.UUID | None] = mapped_column(UUID)
    destination_uid: Mapped[uuid.UUID | None] = mapped_column(UUID)
    source_storage_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("storage.storage_id"), index=True)
    destination_storage_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("storage.storage_id"), index=True)
    user: Mapped[str] = mapped_column(String, server_default="SKA")
    group: Mapped[str] = mapped_column(String, server_default="SKA")
    job_status: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    job_stats: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    complete: Mapped[bool] = mapped_column(Boolean, server_default="false")
    date: Mapped[datetime.datetime] = timestamp(server_default=UTC_NOW, index=True)
    completion_date: Mapped[datetime.datetime | None] = timestamp()
    status: Mapped[MigrationStatus] = mapped_column(
        pg_enum(MigrationStatus, "migration_status"), server_default=MigrationStatus.PENDING.value
    )
    bytes_total: Mapped[int | None] = mapped_column(BigInteger)
    bytes_done: Mapped[int] = mapped_column(BigInteger, server_default="0")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime.datetime] = timestamp(server_default=UTC_NOW)
    lease_owner: Mapped[str | None] = mapped_column(String)
    lease_expires: Mapped[datetime.datetime | None] = timestamp()
    # A move: once the copy is READY, the source replica is deleted in the same job.
    move: Mapped[bool] = mapped_column(Boolean, server_default="false")
    # An admin's forced move: its source goes even if that leaves the item below its target phase.
    move_force: Mapped[bool] = mapped_column(Boolean, server_default="false")
    # SKA-DLM's: its rclone daemon (DLM has none: empty) and the command, in rclone's terms (set by
    # a trigger: operations/copyfile, sync/copy, operations/movefile, sync/move).
    url: Mapped[str | None] = mapped_column(String)
    command: Mapped[str | None] = mapped_column(String)

    __table_args__ = (
        Index(
            "ix_migration_claimable",
            "next_attempt_at",
            postgresql_where=text("status IN ('PENDING', 'RUNNING')"),
        ),
        # Copies a worker holds (running, or cancelled while running): the search for leases run out.
        Index("ix_migration_leased", "lease_expires", postgresql_where=text("lease_owner IS NOT NULL")),
        # What was copied lately (the operator page's bytes per hour).
        Index("ix_migration_succeeded", "completion_date", postgresql_where=text("status = 'SUCCEEDED'")),
        # The latest failures (the operator page's backlog groups them by error and storage).
        Index("ix_migration_failed", "completion_date", postgresql_where=text("status = 'FAILED'")),
    )


# Running counts kept by triggers (revision 0011), so that how much lies on each storage and how many
# replicas and copies are in each state is read from a few rows, not counted over the catalogue. Each
# statement that changes data_item or migration appends its change (+/-) here: no row is updated, so
# concurrent writers never wait for one another. dlm.db.tally folds the rows into one per key.
REPLICA_TALLY = Table(
    "replica_tally",
    Base.metadata,
    Column("storage_id", UUID),  # NULL: replicas with no storage yet
    Column("item_state", pg_enum(ItemState, "item_state"), nullable=False),
    Column("oid_phase", PHASE, nullable=False),
    Column("replicas", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
)
MIGRATION_TALLY = Table(
    "migration_tally",
    Base.metadata,
    Column("status", pg_enum(MigrationStatus, "migration_status"), nullable=False),
    Column("migrations", BigInteger, nullable=False),
)


class PhaseChange(Base):
    """A request to bring an item to another phase."""

    __tablename__ = "phase_change"

    phase_change_id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    oid: Mapped[uuid.UUID] = mapped_column(UUID, index=True)
    final_phase: Mapped[Phase] = mapped_column(PHASE)
    request_creation: Mapped[datetime.datetime] = timestamp(server_default=UTC_NOW)
    request_expiry: Mapped[datetime.datetime] = timestamp(server_default=text("now() + interval '24 hours'"))
    completed: Mapped[datetime.datetime | None] = timestamp()


class SkaImportRow(Base):
    """A replica `dlm db import-ska` brought over: digests of its synced columns as SKA-DLM had them
    and as DLM stored them at its last import, so that a later run can tell who changed it since."""

    __tablename__ = "ska_import_row"

    uid: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    source_digest: Mapped[str] = mapped_column(String)
    imported_digest: Mapped[str] = mapped_column(String)
    imported_at: Mapped[datetime.datetime] = timestamp(server_default=UTC_NOW)


class SchemaCompatibility(Base):
    """One row: the oldest DLM (named by its head revision) that can serve the schema as it now is.
    A DLM finding a newer schema than its own serves on if it is that old or newer (expand-then-contract:
    dlm.db.schema, docs/operations.md#upgrades-without-downtime)."""

    __tablename__ = "schema_compatibility"

    serves_from: Mapped[str] = mapped_column(String, primary_key=True)


class ApiToken(Base):
    """A DLM API token for a pipeline, a service or a person: only a hash of its secret is kept.
    Its name is the subject its holder acts as."""

    __tablename__ = "api_token"

    token_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, server_default=text("gen_random_uuid()"))
    name: Mapped[str] = mapped_column(String)
    role: Mapped[Role] = mapped_column(pg_enum(Role, "role_type"))
    # SHA-256 of the secret, hex: the secrets are random (256 bits), so no slow hash is needed.
    token_hash: Mapped[str] = mapped_column(String, unique=True)
    created: Mapped[datetime.datetime] = timestamp(server_default=UTC_NOW)
    created_by: Mapped[str] = mapped_column(String)
    expires: Mapped[datetime.datetime | None] = timestamp()
    revoked: Mapped[datetime.datetime | None] = timestamp()
    revoked_by: Mapped[str | None] = mapped_column(String)
    last_used: Mapped[datetime.datetime | None] = timestamp()

    __table_args__ = (
        # A name belongs to one token at a time; a revoked token keeps its row (and name) as the trace.
        Index("uq_api_token_name_live", "name", unique=True, postgresql_where=text("revoked IS NULL")),
    )


class OutboxEvent(Base):
    """A notification for RabbitMQ and webhooks (dlm.events), written by triggers in the transaction that
    made the change it tells of, for each sink named in ``pending``; a sink leaves ``pending`` once it
    has the event."""

    __tablename__ = "outbox_event"

    event_id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    event_type: Mapped[str] = mapped_column(String)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime.datetime] = timestamp(server_default=UTC_NOW)
    pending: Mapped[list[str]] = mapped_column(ARRAY(String))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime.datetime] = timestamp(server_default=UTC_NOW)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime.datetime | None] = timestamp()

    __table_args__ = (
        Index("ix_outbox_event_due", "next_attempt_at", postgresql_where=text("cardinality(pending) > 0")),
    )


class Delivery(Base):
    """A request to ship a selection of items to a destination outside DLM's management: a registered
    storage's tree, a directory, or an S3 bucket given inline (its credentials sealed)."""

    __tablename__ = "delivery"

    delivery_id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    user: Mapped[str] = mapped_column(String)
    created: Mapped[datetime.datetime] = timestamp(server_default=UTC_NOW)
    finished: Mapped[datetime.datetime | None] = timestamp()
    status: Mapped[MigrationStatus] = mapped_column(
        pg_enum(MigrationStatus, "migration_status"), server_default=MigrationStatus.PENDING.value
    )
    # Where to: {"storage_name", "path"} or an inline target (sealed with DLM_SECRET_KEY when set).
    destination: Mapped[dict[str, Any]] = mapped_column(JSONB)
    packaging: Mapped[str] = mapped_column(String, server_default="none")
    # What to ship: [{"uid", "item_name", "item_type", "size"}], chosen when the request was made.
    items: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    bytes_total: Mapped[int] = mapped_column(BigInteger, server_default="0")
    bytes_done: Mapped[int] = mapped_column(BigInteger, server_default="0")
    manifest: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    last_error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(String)
    lease_expires: Mapped[datetime.datetime | None] = timestamp()

    __table_args__ = (
        Index("ix_delivery_claimable", "created", postgresql_where=text("status IN ('PENDING', 'RUNNING')")),
    )
