"""Bring an SKA-DLM database (its ``dlm`` schema) into DLM: locations, storages and their configs, data
items and migrations, keeping ids (uid, oid, storage and location ids), versions, states, phases,
expirations and metadata.

Idempotent: a row already in DLM (same id) is left alone, so the import can run again after SKA-DLM
has registered more. What cannot come over is reported, one line per reason, never silently dropped:
- a location or storage whose name DLM already uses under another id (its rows join that one if
  they describe the same thing, else they are skipped);
- replicas that would break DLM's rules: a second live replica of one name on one storage, or of one
  payload (SKA-DLM allowed both);
- values DLM has no name for (a checksum method it cannot compute: the checksum is kept in the
  item's metadata under ``ska_checksum``);
- SKA-DLM's phase-change requests and outbox rows (its rclone jobs and its relay are gone).
Configs are stored sealed when DLM_SECRET_KEY is set; ones DLM would refuse are imported and named.
"""

import datetime
import enum
import hashlib
import re
import uuid
from typing import Any

import asyncpg
import msgspec
from sqlalchemy import Table, any_, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.auth.policy import qualified_acl, qualified_subject
from dlm.data_item import ITEMS
from dlm.db.models import Location, LocationFacility, Migration, SkaImportRow, Storage, StorageConfig
from dlm.enums import ChecksumMethod, ConfigType, ItemType, MigrationStatus
from dlm.errors import DLMError, InvalidQueryParameters
from dlm.storage import configs
from dlm.storage.service import keyring
from dlm.transfer.paths import canonical_uri

BATCH = 2000
# Lines of detail kept per reason; the counts are always complete.
EXAMPLES = 5
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ImportReport(msgspec.Struct):
    # Per table: rows brought over, and rows DLM had already (an earlier import).
    imported: dict[str, int] = msgspec.field(default_factory=dict)
    already: dict[str, int] = msgspec.field(default_factory=dict)
    # Per reason something could not come over (or came over changed): how many, and a few examples.
    not_imported: dict[str, int] = msgspec.field(default_factory=dict)
    examples: dict[str, list[str]] = msgspec.field(default_factory=dict)
    # Replicas imported before whose SKA-DLM row changed since: brought over (DLM had left them alone).
    updated: list[str] = msgspec.field(default_factory=list)
    # A dry run: what it says was not done (the transaction is rolled back).
    dry_run: bool = False

    def note(self, reason: str, example: str) -> None:
        self.not_imported[reason] = self.not_imported.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES:
            shown.append(example)

    def count(self, table: str, imported: int, already: int) -> None:
        self.imported[table] = self.imported.get(table, 0) + imported
        self.already[table] = self.already.get(table, 0) + already

    def summary(self) -> str:
        verb = "would be imported" if self.dry_run else "imported"
        lines = [
            f"{table}: {self.imported.get(table, 0)} {verb}, {self.already.get(table, 0)} already in DLM"
            for table in ("location_facility", "location", "storage", "storage_config", "data_item", "migration")
        ]
        if self.updated:
            shown = ", ".join(self.updated[:EXAMPLES]) + (" …" if len(self.updated) > EXAMPLES else "")
            lines.append(
                f"data_item: {len(self.updated)} {'would be ' if self.dry_run else ''}updated from SKA-DLM "
                f"(changed there since the last import): {shown}"
            )
        if self.dry_run:
            lines.append("dry run: nothing was written")
        for reason, count in self.not_imported.items():
            lines.append(f"{count} × {reason}: {', '.join(self.examples[reason])}{' …' if count > EXAMPLES else ''}")
        return "\n".join(lines)


# The columns a later import brings over when SKA-DLM changed them (and DLM did not): what people
# and pipelines change on a registered replica. Where it lives (storage, uri), its identity and what
# DLM's engines keep (phases) are not: those an import only sets once.
SYNCED = (
    "item_name", "item_tags", "item_value", "item_format", "item_encoding", "item_mime_type", "item_level",
    "item_state", "uid_expiration", "oid_expiration", "target_phase", "item_owner", "item_group", "acl",
    "metadata",
)  # fmt: skip


def _digest(row: Any) -> str:
    """A digest of a replica's synced columns, the same for SKA-DLM's row (as the import converts it)
    and DLM's (as stored): JSON values compared by content, timestamps in UTC."""
    values = {}
    for name in SYNCED:
        value = row.get(name)
        if isinstance(value, datetime.datetime):
            value = _utc(value).astimezone(datetime.UTC).isoformat()
        elif isinstance(value, enum.Enum):
            value = value.value
        values[name] = value
    return hashlib.sha256(msgspec.json.encode(values, order="sorted")).hexdigest()


def _utc(value: Any) -> Any:
    # SKA-DLM stores naive timestamps, in UTC.
    if isinstance(value, datetime.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=datetime.UTC)
    return value


def _row(source: asyncpg.Record, table: Table, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The columns ``table`` has of a source row, converted to what DLM stores."""
    values: dict[str, Any] = {}
    for key, value in dict(source).items():
        column = table.c.get(key)
        if column is None or key in skip or column.computed is not None or column.identity is not None:
            continue
        enum_class = getattr(column.type, "enum_class", None)
        if isinstance(value, str) and enum_class is not None and issubclass(enum_class, enum.Enum):
            # A value DLM has no name for stays text: the table's own step decides (or the insert says).
            value = next((member for member in enum_class if member.value == value), value)
        values[key] = _utc(value)
    return values


class SkaImport:
    def __init__(self, session: AsyncSession, source: asyncpg.Connection, schema: str) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise InvalidQueryParameters(f"--source-schema: {schema!r} is not a schema name")
        self.session = session
        self.source = source
        self.schema = schema
        self.report = ImportReport()
        # Source ids that map to another id in DLM (same name), and storages whose rows stay behind.
        self.locations: dict[uuid.UUID, uuid.UUID] = {}
        self.storages: dict[uuid.UUID, uuid.UUID] = {}
        self.skipped_storages: set[uuid.UUID] = set()

    async def _fetch(self, query: str, *arguments: Any) -> list[asyncpg.Record]:
        return list(await self.source.fetch(query.replace("{schema}", f'"{self.schema}"'), *arguments))

    async def run(self) -> ImportReport:
        await self._facilities()
        await self._locations()
        await self._storages()
        await self._configs()
        await self._items()
        await self._migrations()
        await self._left_behind()
        return self.report

    async def _facilities(self) -> None:
        names = [row["id"] for row in await self._fetch("SELECT id FROM {schema}.location_facility")]
        existing = set(await self.session.scalars(select(LocationFacility.facility_name)))
        new = [name for name in names if name not in existing]
        if new:
            await self.session.execute(insert(LocationFacility).values([{"facility_name": name} for name in new]))
        self.report.count("location_facility", len(new), len(names) - len(new))

    async def _locations(self) -> None:
        table = Location.__table__
        imported = already = 0
        for source in await self._fetch("SELECT * FROM {schema}.location ORDER BY location_name"):
            row = _row(source, table)
            if await self.session.get(Location, row["location_id"]) is not None:
                already += 1
                continue
            same_name = await self.session.scalar(
                select(Location.location_id).where(Location.location_name == row["location_name"])
            )
            if same_name is not None:
                self.locations[row["location_id"]] = same_name
                self.report.note("location already in DLM under another id: its storages join it", row["location_name"])
                continue
            await self.session.execute(insert(table).values(row))
            imported += 1
        self.report.count("location", imported, already)

    async def _storages(self) -> None:
        table = Storage.__table__
        imported = already = 0
        for source in await self._fetch("SELECT * FROM {schema}.storage ORDER BY storage_name"):
            row = _row(source, table)
            row["location_id"] = self.locations.get(row["location_id"], row["location_id"])
            row["root_directory"] = row.get("root_directory") or "/"
            if await self.session.get(Storage, row["storage_id"]) is not None:
                already += 1
                continue
            same_name = (
                await self.session.execute(select(Storage).where(Storage.storage_name == row["storage_name"]))
            ).scalar_one_or_none()
            if same_name is not None:
                if (same_name.storage_interface, same_name.root_directory) == (
                    row["storage_interface"],
                    row["root_directory"],
                ):
                    self.storages[row["storage_id"]] = same_name.storage_id
                    self.report.note("storage already in DLM under another id: its items join it", row["storage_name"])
                else:
                    self.skipped_storages.add(row["storage_id"])
                    self.report.note(
                        "storage name taken in DLM by another storage: it and its items are not imported",
                        row["storage_name"],
                    )
                continue
            await self.session.execute(insert(table).values(row))
            imported += 1
        self.report.count("storage", imported, already)

    async def _configs(self) -> None:
        table = StorageConfig.__table__
        ring = keyring(self.session)
        imported = already = 0
        for source in await self._fetch("SELECT * FROM {schema}.storage_config ORDER BY config_date"):
            row = _row(source, table)
            if row["storage_id"] in self.skipped_storages:
                continue
            row["storage_id"] = self.storages.get(row["storage_id"], row["storage_id"])
            if await self.session.get(StorageConfig, row["config_id"]) is not None:
                already += 1
                continue
            config = row["config"]
            if isinstance(config, str):  # SKA-DLM's column is json: asyncpg hands it over as text
                config = msgspec.json.decode(config)
            storage = await self.session.get(Storage, row["storage_id"])
            try:
                configs.validate(
                    config,
                    config_type=row.get("config_type", ConfigType.RCLONE),
                    interface=storage.storage_interface if storage else None,
                )
            except DLMError as exc:
                self.report.note(
                    "config imported, but DLM would refuse it (store a new one)", f"{row['config_id']}: {exc}"
                )
            row["config"] = ring.seal(config)
            await self.session.execute(insert(table).values(row))
            imported += 1
        self.report.count("storage_config", imported, already)

    async def _items(self) -> None:
        # Oldest first: where SKA-DLM let two replicas share a payload, the first registered keeps it.
        after: tuple[datetime.datetime, uuid.UUID] = (datetime.datetime.min, uuid.UUID(int=0))
        while True:
            batch = await self._fetch(
                "SELECT * FROM (SELECT *, coalesce(uid_creation, '0001-01-01'::timestamp) AS import_order"
                " FROM {schema}.data_item) AS items WHERE (import_order, uid) > ($1, $2)"
                " ORDER BY import_order, uid LIMIT $3",
                *after,
                BATCH,
            )
            if not batch:
                return
            after = (batch[-1]["import_order"], batch[-1]["uid"])
            rows = [row for row in (self._item(source) for source in batch) if row is not None]
            uids = [row["uid"] for row in rows]
            existing = set(await self.session.scalars(select(ITEMS.c.uid).where(ITEMS.c.uid.in_(uids))))
            new = [row for row in rows if row["uid"] not in existing]
            inserted: set[uuid.UUID] = set()
            if new:
                keys = set().union(*(row.keys() for row in new))
                statement = insert(ITEMS).values([{key: row.get(key) for key in keys} for row in new])
                # A row that breaks a unique rule (a second live replica of a name or payload) stays out.
                inserted = set(await self.session.scalars(statement.on_conflict_do_nothing().returning(ITEMS.c.uid)))
            for row in new:
                if row["uid"] not in inserted:
                    self.report.note(
                        "replica not imported: its name or payload is already another live replica's on its storage",
                        f"{row['uid']} ({row.get('item_name')!r}, uri {row.get('uri')!r})",
                    )
            by_uid = {row["uid"]: row for row in rows}
            await self._remember(by_uid, inserted)
            await self._sync([by_uid[uid] for uid in sorted(existing)])
            self.report.count("data_item", len(inserted), len(existing))

    async def _stored_digests(self, uids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
        """Digests of DLM's rows, as stored now."""
        columns = [ITEMS.c.uid, *(ITEMS.c[name] for name in SYNCED)]
        rows = await self.session.execute(select(*columns).where(ITEMS.c.uid == any_(uids)))
        return {row.uid: _digest(row._mapping) for row in rows}

    async def _remember(self, by_uid: dict[uuid.UUID, dict[str, Any]], uids: set[uuid.UUID]) -> None:
        """What these replicas were, on both sides, as of this import."""
        if not uids:
            return
        stored = await self._stored_digests(sorted(uids))
        values = [
            {"uid": uid, "source_digest": _digest(by_uid[uid]), "imported_digest": stored[uid]}
            for uid in sorted(uids)
            if uid in stored
        ]
        statement = insert(SkaImportRow).values(values)
        await self.session.execute(
            statement.on_conflict_do_update(
                index_elements=[SkaImportRow.uid],
                set_={
                    "source_digest": statement.excluded.source_digest,
                    "imported_digest": statement.excluded.imported_digest,
                    "imported_at": func.now(),
                },
            )
        )

    async def _sync(self, rows: list[dict[str, Any]]) -> None:
        """Replicas imported before: each changed in SKA-DLM since (its digest moved) comes over where DLM
        left it as imported; where DLM changed it too, it stays as DLM has it and is reported. One
        imported by a DLM that kept no digests gets them now (nothing to compare with yet)."""
        if not rows:
            return
        uids = [row["uid"] for row in rows]
        last = {
            entry.uid: entry
            for entry in await self.session.scalars(select(SkaImportRow).where(SkaImportRow.uid == any_(uids)))
        }
        stored = await self._stored_digests(uids)
        baseline, changed = set(), []
        for row in rows:
            uid = row["uid"]
            if uid not in last:
                baseline.add(uid)
            elif _digest(row) != last[uid].source_digest:
                if stored.get(uid) == last[uid].imported_digest:
                    changed.append(row)
                else:
                    self.report.note(
                        "changed in SKA-DLM and in DLM since the last import: left as DLM has it", str(uid)
                    )
        for row in changed:
            await self.session.execute(
                update(ITEMS).where(ITEMS.c.uid == row["uid"]).values({name: row.get(name) for name in SYNCED})
            )
            self.report.updated.append(str(row["uid"]))
        await self._remember({row["uid"]: row for row in rows}, baseline | {row["uid"] for row in changed})

    def _item(self, source: asyncpg.Record) -> dict[str, Any] | None:
        row = _row(source, ITEMS)
        uid = row["uid"]
        if row.get("storage_id") in self.skipped_storages:
            self.report.note("replica on a storage that was not imported", str(uid))
            return None
        if row.get("storage_id") is not None:
            row["storage_id"] = self.storages.get(row["storage_id"], row["storage_id"])
        for key in ("item_tags", "acl", "metadata"):
            if isinstance(row.get(key), str):  # json columns arrive as text
                row[key] = msgspec.json.decode(row[key])
        # SKA-DLM's owners are its identity provider's user names; uris are stored canonical.
        try:
            if row.get("item_owner"):
                row["item_owner"] = qualified_subject(row["item_owner"], "item_owner")
            if isinstance(row.get("acl"), dict):
                row["acl"] = qualified_acl(row["acl"])
            if row.get("uri") and row.get("storage_id") is not None:
                row["uri"] = canonical_uri(row["uri"])
        except DLMError as exc:
            self.report.note("replica not imported: DLM refuses what it says", f"{uid}: {exc}")
            return None
        if row.get("item_type") not in ItemType.__members__.values():
            self.report.note("item_type DLM does not know: imported as unknown", f"{uid} ({row.get('item_type')!r})")
            row["item_type"] = ItemType.UNKNOWN
        else:
            row["item_type"] = ItemType(row["item_type"])
        method = source.get("checksum_method")
        if method is not None and method not in ChecksumMethod.__members__.values():
            self.report.note("checksum method DLM cannot compute: kept in metadata.ska_checksum", f"{uid} ({method})")
            metadata = dict(row.get("metadata") or {})
            metadata["ska_checksum"] = {"method": method, "value": row.get("item_checksum")}
            row.update(metadata=metadata, checksum_method=ChecksumMethod.NONE, item_checksum=None)
        return row

    async def _migrations(self) -> None:
        imported_ids = {
            int(value)
            for value in await self.session.scalars(
                select(Migration.job_stats["ska_migration_id"].astext).where(
                    Migration.job_stats["ska_migration_id"].is_not(None)
                )
            )
        }
        imported = already = 0
        sources = await self._fetch("SELECT * FROM {schema}.migration ORDER BY migration_id")
        # SKA-DLM's ids are what its users and logs know a copy by: kept, unless DLM gave one to a copy
        # of its own (then the copy is renumbered, and its SKA id stays in job_stats.ska_migration_id).
        taken = set(
            await self.session.scalars(
                select(Migration.migration_id).where(
                    Migration.migration_id.in_([source["migration_id"] for source in sources])
                )
            )
        )
        for source in sources:
            ska_id = source["migration_id"]
            if ska_id in imported_ids:
                already += 1
                continue
            if {source["source_storage_id"], source["destination_storage_id"]} & self.skipped_storages:
                self.report.note("migration between storages that were not imported", str(ska_id))
                continue
            row = _row(source, Migration.__table__, skip=("migration_id",))
            if row.get("user") and row["user"] != "anonymous":
                row["user"] = qualified_subject(row["user"], "user")
            for key in ("source_storage_id", "destination_storage_id"):
                row[key] = self.storages.get(row[key], row[key])
            status = source["job_status"]
            if isinstance(status, str):
                status = msgspec.json.decode(status)
            row["job_status"] = status  # asyncpg hands json over as text: stored as the object it is
            succeeded = bool(source["complete"]) and bool((status or {}).get("success"))
            row["status"] = MigrationStatus.SUCCEEDED if succeeded else MigrationStatus.FAILED
            row["complete"] = True
            if not source["complete"]:
                row["last_error"] = "unfinished in SKA-DLM when imported (its rclone job is gone): retry it"
                row["job_status"] = {"finished": True, "success": False, "error": row["last_error"]}
            stats = source["job_stats"]
            stats = msgspec.json.decode(stats) if isinstance(stats, str) else dict(stats or {})
            row["job_stats"] = {**(stats or {}), "ska_migration_id": ska_id}
            row["source_uid"] = await self._replica(row["oid"], row["source_storage_id"])
            row["destination_uid"] = await self._replica(row["oid"], row["destination_storage_id"])
            row["bytes_done"] = 0
            if ska_id in taken:
                self.report.note("migration id already used by a DLM copy: renumbered", str(ska_id))
            else:
                row["migration_id"] = ska_id
            columns = ", ".join(f'"{column}"' for column in row)
            await self.session.execute(
                text(
                    f"INSERT INTO migration ({columns}) OVERRIDING SYSTEM VALUE SELECT {columns} "
                    "FROM jsonb_populate_record(NULL::migration, CAST(:row AS jsonb))"
                ),
                {"row": msgspec.json.encode(row).decode()},
            )
            imported += 1
        # DLM's next copies are numbered after SKA-DLM's.
        await self.session.execute(
            text(
                "SELECT setval(pg_get_serial_sequence('migration', 'migration_id'), max(migration_id)) "
                "FROM migration HAVING max(migration_id) IS NOT NULL"
            )
        )
        self.report.count("migration", imported, already)

    async def _replica(self, oid: uuid.UUID, storage_id: uuid.UUID) -> uuid.UUID | None:
        return await self.session.scalar(
            select(ITEMS.c.uid)
            .where(ITEMS.c.oid == oid, ITEMS.c.storage_id == storage_id)
            .order_by(ITEMS.c.uid_creation.desc())
            .limit(1)
        )

    async def _left_behind(self) -> None:
        for table, reason in (
            ("phase_change", "phase-change request not imported (ask again with set_phase)"),
            ("outbox", "SKA-DLM outbox row not imported (DLM writes its own events)"),
        ):
            exists = await self.source.fetchval("SELECT to_regclass($1) IS NOT NULL", f'"{self.schema}".{table}')
            if not exists:
                continue
            count = await self.source.fetchval(f'SELECT count(*) FROM "{self.schema}".{table}')
            if count:
                self.report.not_imported[reason] = count
                self.report.examples[reason] = [f"{count} row(s)"]


async def import_ska(
    session: AsyncSession, source_url: str, schema: str = "dlm", *, dry_run: bool = False
) -> ImportReport:
    """Import the SKA-DLM database at ``source_url`` (schema ``schema``) into DLM's, in the session's
    transaction: all of it, or on an error nothing; with ``dry_run``, nothing (rolled back), reporting
    what it would have done."""
    url = re.sub(r"^postgresql\+\w+://", "postgresql://", source_url)
    try:
        source = await asyncpg.connect(url, timeout=30)
    except (OSError, asyncpg.PostgresError) as exc:
        raise InvalidQueryParameters(f"--source: cannot connect: {exc}") from None
    try:
        if not await source.fetchval("SELECT to_regclass($1) IS NOT NULL", f'"{schema}".data_item'):
            raise InvalidQueryParameters(f"--source: no SKA-DLM tables in schema {schema!r} there")
        async with source.transaction(readonly=True, isolation="repeatable_read"):
            report = await SkaImport(session, source, schema).run()
        if dry_run:
            await session.rollback()
            report.dry_run = True
        return report
    finally:
        await source.close()
