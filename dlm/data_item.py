"""Data items (replicas): creation, changes and the rules every change obeys. The ingest and request
managers, the CLI and the workers all change items through these functions."""

import datetime
import os
import typing
import uuid
import zlib
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

import msgspec
from sqlalchemy import ARRAY, ColumnElement, Row, String, any_, cast, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.auth.policy import qualified_acl, qualified_subject, require_change
from dlm.auth.principal import Principal
from dlm.db.models import DataItem, Storage
from dlm.enums import STATE_TRANSITIONS, ChecksumMethod, ItemState, ItemType, Phase, combined_phase, phase_of_total
from dlm.errors import InvalidQueryParameters, NotFound, UnmetPreconditionForOperation
from dlm.parsing import parse_datetime, parse_uuid
from dlm.transfer.paths import canonical_uri, check_item_name

ITEMS = DataItem.__table__
# Advisory-lock namespace for item names; names hash into a bounded number of buckets so that a bulk
# registration of any size takes at most NAME_LOCK_BUCKETS locks.
NAME_LOCK_NAMESPACE = 0x444C4D  # "DLM"
NAME_LOCK_BUCKETS = 256


# What the columns hold: bigint byte counts, a smallint level.
Bytes = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Level = Annotated[int, msgspec.Meta(ge=-(2**15), le=2**15 - 1)]


class ItemChanges(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The columns a caller may change (``update_data_item`` and friends). Identity, creation times,
    ``uid_phase`` (follows the storage) and ``oid_phase`` (derived from the replicas) are not among them."""

    item_name: str | None | msgspec.UnsetType = msgspec.UNSET
    item_tags: dict[str, Any] | None | msgspec.UnsetType = msgspec.UNSET
    storage_id: uuid.UUID | None | msgspec.UnsetType = msgspec.UNSET
    uri: str | None | msgspec.UnsetType = msgspec.UNSET
    item_value: str | None | msgspec.UnsetType = msgspec.UNSET
    item_type: ItemType | msgspec.UnsetType = msgspec.UNSET
    item_format: str | None | msgspec.UnsetType = msgspec.UNSET
    item_encoding: str | None | msgspec.UnsetType = msgspec.UNSET
    item_mime_type: str | None | msgspec.UnsetType = msgspec.UNSET
    item_level: Level | msgspec.UnsetType = msgspec.UNSET
    item_state: ItemState | msgspec.UnsetType = msgspec.UNSET
    target_phase: Phase | msgspec.UnsetType = msgspec.UNSET
    uid_expiration: datetime.datetime | msgspec.UnsetType = msgspec.UNSET
    oid_expiration: datetime.datetime | msgspec.UnsetType = msgspec.UNSET
    item_checksum: str | None | msgspec.UnsetType = msgspec.UNSET
    checksum_method: ChecksumMethod | msgspec.UnsetType = msgspec.UNSET
    item_owner: str | msgspec.UnsetType = msgspec.UNSET
    item_group: str | msgspec.UnsetType = msgspec.UNSET
    acl: dict[str, Any] | None | msgspec.UnsetType = msgspec.UNSET
    activate_method: str | None | msgspec.UnsetType = msgspec.UNSET
    item_size: Bytes | None | msgspec.UnsetType = msgspec.UNSET
    decompressed_size: Bytes | None | msgspec.UnsetType = msgspec.UNSET
    compression_method: str | None | msgspec.UnsetType = msgspec.UNSET
    parents: uuid.UUID | None | msgspec.UnsetType = msgspec.UNSET
    children: uuid.UUID | None | msgspec.UnsetType = msgspec.UNSET
    metadata: dict[str, Any] | None | msgspec.UnsetType = msgspec.UNSET
    last_access: datetime.datetime | None | msgspec.UnsetType = msgspec.UNSET


class ItemInit(ItemChanges, kw_only=True, forbid_unknown_fields=True):
    """What ``init_data_item`` accepts: the changeable columns plus the item to add a replica to."""

    oid: uuid.UUID | msgspec.UnsetType = msgspec.UNSET
    uid_phase: Phase | msgspec.UnsetType = msgspec.UNSET


_NOT_NULLABLE = frozenset(
    field.name for field in msgspec.structs.fields(ItemInit) if type(None) not in typing.get_args(field.type)
)

_NOT_CHANGEABLE_HINTS = {
    "uid_phase": "uid_phase follows the phase of the replica's storage",
    "oid_phase": "oid_phase is computed from the item's READY replicas",
}


DATETIME_FIELDS = frozenset({"uid_expiration", "oid_expiration", "last_access"})


def convert_body(
    body: dict[str, Any] | None, struct: type[msgspec.Struct], field: str, *, null_means_default: bool = False
) -> Any:
    """Decode a JSON body into ``struct``; errors name the offending key. Timestamps follow the API's one
    rule (ISO 8601 date or date-time, naive means UTC), as they do in query parameters. With
    ``null_means_default`` (a new item), null for a column that cannot be null asks for its default,
    as SKA's clients send it."""
    body = dict(body or {})
    if null_means_default:
        body = {key: value for key, value in body.items() if value is not None or key not in _NOT_NULLABLE}
    for key, value in body.items():
        if key in _NOT_CHANGEABLE_HINTS and key not in struct.__struct_fields__:
            raise InvalidQueryParameters(f"{field}.{key}: cannot be set: {_NOT_CHANGEABLE_HINTS[key]}")
        if key in DATETIME_FIELDS and isinstance(value, str):
            body[key] = parse_datetime(value, f"{field}.{key}")
    try:
        return msgspec.convert(body, struct, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidQueryParameters(_describe_validation_error(str(exc), field)) from None


def _describe_validation_error(error: str, field: str) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.item_size`": lead with the field's full name.
    message, _, where = error.partition(" - at `$")
    message = message.replace("Object contains unknown field", "unknown or read-only field")
    return f"{field}{where.rstrip('`')}: {message}"


def utc(value: datetime.datetime) -> datetime.datetime:
    """Naive datetimes are UTC."""
    return value.replace(tzinfo=datetime.UTC) if value.tzinfo is None else value.astimezone(datetime.UTC)


def changes_dict(changes: msgspec.Struct) -> dict[str, Any]:
    values = {
        name: getattr(changes, name)
        for name in changes.__struct_fields__
        if getattr(changes, name) is not msgspec.UNSET
    }
    for name, value in values.items():
        if isinstance(value, datetime.datetime):
            values[name] = utc(value)
    if "uri" in values and values["uri"] is not None:
        values["uri"] = canonical_uri(values["uri"], "uri")
    if values.get("item_name") is not None:
        check_item_name(values["item_name"], "item_name")
    if "item_owner" in values:
        values["item_owner"] = qualified_subject(values["item_owner"], "item_owner")
    if "acl" in values:
        values["acl"] = qualified_acl(values["acl"])
    for name in ("item_size", "decompressed_size"):
        if values.get(name) is not None and values[name] < 0:
            raise InvalidQueryParameters(f"{name}: must not be negative")
    return values


async def lock_item_names(session: AsyncSession, names: Iterable[str | None]) -> None:
    """Serialise creations of items with these names (version numbering, duplicate checks)."""
    buckets = sorted({_name_bucket(name) for name in names if name})
    if buckets:
        await session.execute(
            text("SELECT pg_advisory_xact_lock(:namespace, bucket) FROM unnest(CAST(:buckets AS int[])) AS bucket"),
            {"namespace": NAME_LOCK_NAMESPACE, "buckets": buckets},
        )


def _name_bucket(name: str) -> int:
    return zlib.crc32(name.encode()) % NAME_LOCK_BUCKETS


async def next_versions(session: AsyncSession, names: Sequence[str]) -> dict[str, int]:
    """The version a new logical item of each name gets: one more than the newest so far."""
    rows = await session.execute(
        select(DataItem.item_name, func.max(DataItem.item_version))
        .where(DataItem.item_name == any_(cast(sorted(set(names)), ARRAY(String))))
        .group_by(DataItem.item_name)
    )
    newest = {name: version for name, version in rows.all()}
    return {name: newest.get(name, 0) + 1 for name in names}


async def get_item(session: AsyncSession, uid: str | uuid.UUID, *, for_update: bool = False) -> DataItem:
    item_uid = uid if isinstance(uid, uuid.UUID) else parse_uuid(uid, "uid")
    query = select(DataItem).where(DataItem.uid == item_uid)
    if for_update:
        query = query.with_for_update()
    item = await session.scalar(query)
    if item is None:
        raise NotFound(f"uid {item_uid} does not exist")
    return item


async def resolve_oid(session: AsyncSession, value: str | uuid.UUID, field: str) -> uuid.UUID:
    """The oid of the item named by a uid or an oid."""
    given = value if isinstance(value, uuid.UUID) else parse_uuid(value, field)
    found = await session.scalar(select(DataItem.oid).where((DataItem.uid == given) | (DataItem.oid == given)).limit(1))
    if found is None:
        raise NotFound(f"{field}: no item has uid or oid {given}")
    return found


def item_selector(*, item_name: str = "", oid: str = "", uid: str = "") -> ColumnElement[bool]:
    """The rows named by a uid, else an oid, else an item_name (as SKA-DLM resolves them). An id that is
    given is checked even when another takes precedence: a malformed one is the caller's mistake."""
    parsed_uid = parse_uuid(uid, "uid") if uid else None
    parsed_oid = parse_uuid(oid, "oid") if oid else None
    if parsed_uid:
        return DataItem.uid == parsed_uid
    if parsed_oid:
        return DataItem.oid == parsed_oid
    if item_name:
        return DataItem.item_name == item_name
    raise InvalidQueryParameters("one of item_name, oid, uid is required")


def new_uids(count: int) -> list[uuid.UUID]:
    """``count`` random (version 4) UUIDs from one read of the system's random source, where uuid4
    reads it once per UUID: a sixth of the planning of 10,000 copies went to that."""
    pool = os.urandom(16 * count)
    return [uuid.UUID(bytes=pool[start : start + 16], version=4) for start in range(0, 16 * count, 16)]


async def create_items(session: AsyncSession, rows: list[dict[str, Any]]) -> list[uuid.UUID]:
    """Insert replicas (dicts of column values, each with its uid, all with the same keys) in one
    statement: the history and outbox triggers then run once, not once a row."""
    if len(rows) == 1:
        # The statement apart from its values: compiled once per set of columns and cached (a VALUES
        # list built into the statement was compiled again on every registration, a fifth of its CPU).
        await session.execute(ITEMS.insert(), rows[0])
    elif rows:
        # Many rows travel as one JSON document that PostgreSQL turns into records of the table's own
        # types: one parameter and a cached statement whatever their number (10,000 rows as a VALUES
        # list were 250,000 parameters, and building that statement took longer than inserting it).
        columns = list(rows[0])
        if unknown := set(columns) - set(ITEMS.c.keys()):
            raise ValueError(f"create_items: no column {sorted(unknown)}")
        names = ", ".join(f'"{column}"' for column in columns)
        await session.execute(
            text(
                f"INSERT INTO data_item ({names}) SELECT {names} "
                "FROM jsonb_populate_recordset(NULL::data_item, CAST(:rows AS jsonb))"
            ),
            {"rows": msgspec.json.encode(rows).decode()},
        )
    return [row["uid"] for row in rows]


async def change_items(
    session: AsyncSession,
    selector: ColumnElement[bool],
    values: dict[str, Any],
    *,
    principal: Principal | None = None,
) -> list[Row[Any]]:
    """Apply ``values`` to every replica ``selector`` matches, enforcing DLM's rules: the caller
    (``principal``; None for DLM's own work) may change each of them, legal state transitions only, READY
    needs a payload location, uid_phase follows the storage, oid_phase stays the combined phase of the
    item's READY replicas. Returns the changed rows."""
    current = (
        await session.execute(
            select(
                DataItem.uid,
                DataItem.oid,
                DataItem.item_name,
                DataItem.item_owner,
                DataItem.item_state,
                DataItem.uri,
                DataItem.storage_id,
            )
            .where(selector)
            .order_by(DataItem.uid)
            .with_for_update()
        )
    ).all()
    if not current:
        raise NotFound("no data_item matches")
    for row in current:
        require_change(principal, row.item_owner, f"item {row.item_name!r} (uid {row.uid})")
    values = dict(values)
    if values.get("storage_id") is not None:
        phase = await session.scalar(select(Storage.storage_phase).where(Storage.storage_id == values["storage_id"]))
        if phase is None:
            raise NotFound(f"storage_id {values['storage_id']} does not exist")
        values["uid_phase"] = phase
    if "parents" in values and values["parents"] is not None:
        values["parents"] = await resolve_oid(session, values["parents"], "parents")
    new_state = values.get("item_state")
    if new_state is not None:
        for row in current:
            _check_transition(row, new_state, values)
        values.update(_state_side_effects(new_state))
    if not values:
        raise InvalidQueryParameters("nothing to change")
    uids = [row.uid for row in current]
    statement = update(ITEMS).where(ITEMS.c.uid.in_(uids)).values(**values)
    if not {"item_state", "uid_phase", "storage_id"} & values.keys():
        changed = (await session.execute(statement.returning(*ITEMS.c))).all()
        return sorted(changed, key=lambda row: row.uid)
    # The change moves the item's combined phase: refresh it, then read the rows back once.
    await session.execute(statement)
    await refresh_oid_phase(session, {row.oid for row in current})
    return list((await session.execute(select(ITEMS).where(ITEMS.c.uid.in_(uids)).order_by(ITEMS.c.uid))).all())


def _check_transition(row: Row[Any], new_state: ItemState, values: dict[str, Any]) -> None:
    if new_state != row.item_state and new_state not in STATE_TRANSITIONS[row.item_state]:
        raise UnmetPreconditionForOperation(
            f"item_state: uid {row.uid} cannot go from {row.item_state.value} to {new_state.value}"
        )
    if new_state is ItemState.READY:
        uri = values.get("uri", row.uri)
        storage_id = values.get("storage_id", row.storage_id)
        if not uri or storage_id is None:
            raise UnmetPreconditionForOperation(
                f"item_state: uid {row.uid} cannot be READY before its uri and storage_id are set (set_uri)"
            )


def _state_side_effects(state: ItemState) -> dict[str, Any]:
    if state is ItemState.DELETED:
        return {"deleted": True, "uid_deletion": func.now()}
    if state is ItemState.EXPIRED:
        return {"expired": True}
    if state is ItemState.READY:
        return {"expired": False}
    return {}


async def make_ready(session: AsyncSession, verified: list[dict[str, Any]]) -> None:
    """Make replicas READY with the size and checksum verified for each (``{"uid", "size", "checksum"}``),
    and their items' combined phase what it now is, in one statement: each new replica is written once,
    its siblings only where their oid_phase changes (a batch of copies finishing). As ``change_items``
    does one by one: only INITIALISED replicas, not expired, crc32c where the item had no method."""
    if verified:
        await session.execute(text(_MAKE_READY), {"rows": msgspec.json.encode(verified).decode()})


_WEIGHT = " ".join(f"WHEN '{phase.value}' THEN {phase.weight}" for phase in Phase)
_COMBINED = " ".join(f"WHEN {total} THEN '{phase_of_total(total).value}'" for total in range(Phase.SOLID.weight + 1))
_MAKE_READY = f"""
    WITH v AS (SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(uid uuid, size bigint, checksum text)),
    made AS (SELECT d.uid, d.oid, v.size, v.checksum FROM data_item AS d JOIN v USING (uid)
             WHERE d.item_state = 'INITIALISED'),
    phases AS (
        SELECT d.oid,
               CAST(CASE least(sum(CASE d.uid_phase {_WEIGHT} END), {Phase.SOLID.weight}) {_COMBINED} END AS phase_type)
               AS phase
        FROM data_item AS d
        WHERE d.oid IN (SELECT oid FROM made) AND (d.item_state = 'READY' OR d.uid IN (SELECT uid FROM made))
        GROUP BY d.oid
    ),
    changes AS (
        SELECT d.uid, p.phase, made.uid IS NOT NULL AS new, made.size, made.checksum
        FROM data_item AS d JOIN phases AS p USING (oid) LEFT JOIN made USING (uid)
        WHERE d.item_state <> 'DELETED'
    )
    UPDATE data_item AS d
    SET item_state = CASE WHEN c.new THEN 'READY' ELSE d.item_state END,
        expired = CASE WHEN c.new THEN false ELSE d.expired END,
        item_size = CASE WHEN c.new THEN c.size ELSE d.item_size END,
        item_checksum = CASE WHEN c.new THEN c.checksum ELSE d.item_checksum END,
        checksum_method = CASE WHEN c.new AND d.checksum_method = 'none' THEN 'crc32c' ELSE d.checksum_method END,
        oid_phase = c.phase
    FROM changes AS c
    WHERE d.uid = c.uid AND (c.new OR d.oid_phase IS DISTINCT FROM c.phase)
"""


async def refresh_oid_phase(session: AsyncSession, oids: Iterable[uuid.UUID]) -> None:
    """Recompute the combined phase of these items from their READY replicas (PLASMA when none)."""
    oid_list = sorted(set(oids))
    if not oid_list:
        return
    # Locking every replica serialises concurrent changes to one item, so the result is never stale.
    rows = (
        await session.execute(
            select(DataItem.oid, DataItem.uid_phase, DataItem.item_state)
            .where(DataItem.oid.in_(oid_list))
            .order_by(DataItem.uid)
            .with_for_update()
        )
    ).all()
    ready: dict[uuid.UUID, list[Phase]] = {oid: [] for oid in oid_list}
    for row in rows:
        if row.item_state is ItemState.READY:
            ready[row.oid].append(row.uid_phase)
    phases = {oid: combined_phase(found) if found else Phase.PLASMA for oid, found in ready.items()}
    for phase in set(phases.values()):
        await session.execute(
            update(ITEMS)
            .where(ITEMS.c.oid.in_([oid for oid, value in phases.items() if value is phase]))
            .where(ITEMS.c.oid_phase != phase)
            .values(oid_phase=phase)
        )
