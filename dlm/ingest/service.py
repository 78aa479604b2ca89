"""Ingest: making payloads known to DLM, one at a time or thousands per transaction."""

import asyncio
import datetime
import functools
import mimetypes
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Annotated, Any

import msgspec
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.auth.policy import qualified_subject, require_change
from dlm.auth.principal import Principal
from dlm.data_item import (
    Bytes,
    ItemInit,
    changes_dict,
    convert_body,
    create_items,
    lock_item_names,
    new_uids,
    next_versions,
    refresh_oid_phase,
    resolve_oid,
    utc,
)
from dlm.db.models import DEFAULT_MIME_TYPE, DEFAULT_OWNER, DataItem, Migration, Storage
from dlm.enums import ChecksumMethod, ItemState, ItemType, MigrationStatus, Phase
from dlm.errors import (
    Conflict,
    DLMError,
    InvalidQueryParameters,
    NotFound,
    UnmetPreconditionForOperation,
    ValueAlreadyInDB,
)
from dlm.metadata import Extractor, Payload, extract
from dlm.storage.service import refuse_new_payloads, resolve_storage, storage_backend
from dlm.transfer.base import PayloadInfo
from dlm.transfer.paths import canonical_uri, check_item_name, payload_key

MAX_BULK_ITEMS = 100_000
MAX_BULK_BYTES = 64 * 1024 * 1024
# Entries converted between two yields to the event loop: a bulk call must not stall other requests.
_CONVERT_BATCH = 1000


class ItemRegistration(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One payload to register: the parameters of ``register_data_item`` plus its metadata."""

    item_name: Annotated[str, msgspec.Meta(min_length=1)]
    uri: Annotated[str, msgspec.Meta(min_length=1)]
    storage_name: str = ""
    storage_id: str = ""
    item_type: ItemType = ItemType.FILE
    target_phase: Phase = Phase.SOLID
    uid_expiration: datetime.datetime | None = None
    oid_expiration: datetime.datetime | None = None
    parents: str | None = None
    item_size: Bytes | None = None
    decompressed_size: Bytes | None = None
    do_storage_access_check: bool = True
    metadata: dict[str, Any] | None = None
    # Who owns the new item; default: the caller (an ingest service may name the item's real owner).
    item_owner: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] | None = None


async def read_registrations(entries: list[Any]) -> list[ItemRegistration]:
    """A bulk body's entries as registrations, each error naming its entry (``items[i].field``)."""
    if len(entries) > MAX_BULK_ITEMS:
        raise InvalidQueryParameters(f"items: at most {MAX_BULK_ITEMS} items per call, not {len(entries)}")
    registrations = []
    for start in range(0, len(entries), _CONVERT_BATCH):
        for index, entry in enumerate(entries[start : start + _CONVERT_BATCH], start):
            if not isinstance(entry, dict):
                raise InvalidQueryParameters(f"items[{index}]: must be an object of register parameters")
            registrations.append(convert_body(entry, ItemRegistration, f"items[{index}]"))
        await asyncio.sleep(0)
    return registrations


async def init_item(
    session: AsyncSession,
    *,
    item_name: str | None,
    uid_phase: Phase,
    init: ItemInit,
    owner: str | None = None,
    group: str | None = None,
    principal: Principal | None = None,
) -> uuid.UUID:
    """Create an INITIALISED replica; its payload is written independently and announced with set_uri.
    ``owner`` (the caller) owns it unless ``init`` names an item_owner. A further replica of an existing
    item (``init`` names its oid) is a change to that item: ``principal`` must be allowed to make it."""
    values = changes_dict(init)
    if item_name:
        values["item_name"] = check_item_name(item_name)
    if owner and "item_owner" not in values:
        values["item_owner"] = owner
    if group and "item_group" not in values:
        values["item_group"] = group
    if not values.get("item_name") and "oid" not in values:
        raise InvalidQueryParameters("item_name: required unless json_data names the item (item_name or oid)")
    state = values.pop("item_state", ItemState.INITIALISED)
    if state not in (ItemState.INITIALISED, ItemState.READY):
        raise InvalidQueryParameters(
            "json_data.item_state: a new item is INITIALISED, or READY when json_data names its payload "
            "(uri and storage_id); use set_state afterwards"
        )
    values.setdefault("uid_phase", uid_phase)
    storage = None
    if values.get("storage_id") is not None:
        storage = await session.get(Storage, values["storage_id"])
        if storage is None:
            raise NotFound(f"json_data.storage_id: storage {values['storage_id']} does not exist")
        values["uid_phase"] = storage.storage_phase
    if values.get("parents") is not None:
        values["parents"] = await resolve_oid(session, values["parents"], "json_data.parents")
    if state is ItemState.READY:
        if storage is None or not values.get("uri"):
            raise InvalidQueryParameters(
                "json_data.item_state: READY needs json_data.uri and json_data.storage_id, naming a payload that exists"
            )
        if (ready := await _ready_replica(session, values, storage)) is not None:
            return ready
    uid = uuid.uuid4()
    if "oid" in values:
        # A further replica of an existing item: same oid (the trigger resolves a uid), same name and version.
        oid = await resolve_oid(session, values["oid"], "json_data.oid")
        existing = (
            await session.execute(
                select(DataItem.item_name, DataItem.item_version, DataItem.item_owner)
                .where(DataItem.oid == oid)
                .limit(1)
            )
        ).one()
        require_change(principal, existing.item_owner, f"item {existing.item_name!r} (oid {oid})")
        if values.get("item_name", existing.item_name) != existing.item_name:
            raise InvalidQueryParameters(
                f"item_name: a replica of item {oid} is named {existing.item_name!r}, like all its replicas"
            )
        values = {**values, "item_name": existing.item_name, "oid": oid, "item_version": existing.item_version}
        await lock_item_names(session, [values["item_name"]])
    else:
        await lock_item_names(session, [values["item_name"]])
        values["item_version"] = (await next_versions(session, [values["item_name"]]))[values["item_name"]]
        values["oid_phase"] = values["uid_phase"] if state is ItemState.READY else Phase.PLASMA
    await create_items(session, [{"uid": uid, **values}])
    if state is ItemState.READY and "oid" in values:
        await refresh_oid_phase(session, [values["oid"]])
    return uid


async def _ready_replica(session: AsyncSession, values: dict[str, Any], storage: Storage) -> uuid.UUID | None:
    """Check that a replica created READY by ``init_data_item`` has its payload, as registration checks
    it, and fill in what the payload says (``values`` gains item_state, and size and type if absent).
    Returns the uid of the live replica that already is this one (same item, same payload), if any:
    a container's copy gives its members their replicas, and a watcher may announce them too."""
    uri = values["uri"]
    refuse_new_payloads(storage, "json_data.storage_id")
    key = payload_key(uri)
    copying = await session.scalar(
        select(Migration.migration_id)
        .join(DataItem, DataItem.uid == Migration.destination_uid)
        .where(
            Migration.destination_storage_id == storage.storage_id,
            Migration.status.in_([MigrationStatus.PENDING, MigrationStatus.RUNNING]),
            (func.ltrim(DataItem.uri, "/") == key) | func.starts_with(key, func.ltrim(DataItem.uri, "/") + "/"),
        )
        .limit(1)
        # A copy committing its outcome holds its row: wait for that outcome rather than answer that the
        # copy will give the member its replica when the copy has already listed the members without it.
        .with_for_update(read=True, of=Migration)
    )
    if copying is not None:
        raise Conflict(
            f"json_data.uri: {uri!r} on storage {storage.storage_name!r} is being written by migration {copying}; "
            "a container's members get their replicas there when its copy succeeds"
        )
    if "oid" in values:
        oid = await resolve_oid(session, values["oid"], "json_data.oid")
        same = await session.scalar(
            select(DataItem.uid).where(
                DataItem.oid == oid,
                DataItem.storage_id == storage.storage_id,
                func.ltrim(DataItem.uri, "/") == key,
                DataItem.item_state == ItemState.READY,
            )
        )
        if same is not None:
            return same
    async with await storage_backend(session, storage) as backend:
        info = await backend.stat(uri)
    item_type = values.get("item_type")
    info = check_payload(
        info,
        uri=uri,
        storage_name=storage.storage_name,
        item_type=ItemType(item_type) if item_type is not None else None,
        field="json_data.",
    )
    values.setdefault("item_type", ItemType.CONTAINER if info.is_container else ItemType.FILE)
    if "oid" in values:
        await check_same_bytes(session, oid=values["oid"], size=info.size, uri=uri, field="json_data.uri")
    if values.get("item_size") is None and info.size is not None:
        values["item_size"] = info.size
    values["item_state"] = ItemState.READY
    return None


def check_payload(
    info: PayloadInfo | None, *, uri: str, storage_name: str, item_type: ItemType | None, field: str = ""
) -> PayloadInfo:
    """The payload a replica is to name: there, and of the item's kind (a directory for a container).
    ``field`` prefixes the names of the fields at fault (``items[3].``, ``json_data.``)."""
    if info is None:
        raise UnmetPreconditionForOperation(f"{field}uri: no payload at {uri!r} on storage {storage_name!r}")
    if item_type is not None and info.is_container != (item_type is ItemType.CONTAINER):
        kind = "a directory" if info.is_container else "a file"
        raise UnmetPreconditionForOperation(
            f"{field}item_type: the payload at {uri!r} is {kind}, not a {item_type.value}"
        )
    return info


async def check_same_bytes(
    session: AsyncSession,
    *,
    oid: uuid.UUID,
    size: int | None,
    uri: str,
    field: str,
    checksum: str | None = None,
    other_than: uuid.UUID | None = None,
) -> None:
    """A further replica of an item holds the item's bytes: the size (and crc32c, when both are known)
    of its READY replicas (other than ``other_than``)."""
    others = (
        await session.execute(
            select(DataItem.item_size, DataItem.item_checksum, DataItem.checksum_method).where(
                DataItem.oid == oid,
                DataItem.item_state == ItemState.READY,
                *([DataItem.uid != other_than] if other_than else []),
            )
        )
    ).all()
    sizes = sorted({other.item_size for other in others if other.item_size is not None})
    if size is not None and sizes and size not in sizes:
        raise UnmetPreconditionForOperation(
            f"{field}: the payload at {uri!r} has {size} bytes; the item's READY replicas have "
            f"{', '.join(str(known) for known in sizes)}: it is not a replica of that item"
        )
    checksums = {
        other.item_checksum
        for other in others
        if other.checksum_method is ChecksumMethod.CRC32C and other.item_checksum is not None
    }
    if checksum is not None and checksums and checksum not in checksums:
        raise UnmetPreconditionForOperation(
            f"{field}: the payload at {uri!r} differs from the item's READY replicas (crc32c {checksum}): it is "
            "not a replica of that item"
        )


async def register_item(
    session: AsyncSession,
    registration: ItemRegistration,
    *,
    checksum_max_bytes: int = 0,
    extractors: dict[str, Extractor] | None = None,
    owner: str | None = None,
    group: str | None = None,
) -> uuid.UUID:
    """Register an existing payload as a READY replica in one step; returns its uid."""
    registered = await register_items(
        session,
        [registration],
        checksum_max_bytes=checksum_max_bytes,
        extractors=extractors,
        owner=owner,
        group=group,
    )
    return registered[0]


async def register_members(
    session: AsyncSession,
    container_uid: uuid.UUID,
    *,
    checksum_max_bytes: int = 0,
    extractors: dict[str, Extractor] | None = None,
) -> list[uuid.UUID]:
    """Register every file inside a container replica as an item of its own, named
    ``<container name>/<path inside>``, whose ``parents`` is the container; returns their uids."""
    item = await session.get(DataItem, container_uid)
    assert item is not None and item.uri is not None  # registered just before, in this transaction
    if item.item_type is not ItemType.CONTAINER:
        raise InvalidQueryParameters("register_members: only a container has members to register")
    storage = await session.get(Storage, item.storage_id)
    assert storage is not None
    async with await storage_backend(session, storage) as backend:
        members = [entry async for entry in backend.walk(item.uri) if entry.path]
    if not members:
        return []
    registrations = [
        ItemRegistration(
            item_name=f"{item.item_name}/{member.path}",
            uri=f"{item.uri}/{member.path}",
            storage_id=str(storage.storage_id),
            target_phase=item.target_phase,
            parents=str(item.oid),
            item_owner=item.item_owner,
        )
        for member in members
    ]
    return await register_items(
        session, registrations, checksum_max_bytes=checksum_max_bytes, extractors=extractors, group=item.item_group
    )


async def _first_live_with(
    session: AsyncSession, column: str, values: list[str], storage_ids: list[uuid.UUID], where: Callable[[int], str]
) -> tuple[int, Any] | None:
    """The first entry whose ``column`` value is already a live replica's on its storage, with that
    replica (item_name, value); a value repeated for one storage within the batch is refused here.
    Uris compare as payloads ("/x" is "x")."""
    assert column in ("item_name", "uri")  # a fixed column name, never caller input, goes into the SQL
    compared = f"ltrim(d.{column}, '/')" if column == "uri" else f"d.{column}"
    if column == "uri":
        values = [payload_key(value) for value in values]
    keys = list(zip(values, storage_ids, strict=True))
    duplicated = [key for key, count in Counter(keys).items() if count > 1]
    if duplicated:
        index = keys.index(duplicated[0])
        raise ValueAlreadyInDB(f"{where(index)}{column}: {duplicated[0][0]!r} appears twice for one storage")
    # Arrays, not an IN list: a batch of 100,000 keys is still one bound parameter per column.
    taken = (
        await session.execute(
            text(
                f"SELECT d.item_name, d.{column} AS value, {compared} AS key, d.storage_id FROM data_item AS d "
                "JOIN unnest(CAST(:values AS text[]), CAST(:storages AS uuid[])) AS k(value, storage_id) "
                f"ON {compared} = k.value AND d.storage_id = k.storage_id "
                "WHERE d.item_state <> 'DELETED' LIMIT 1"
            ),
            {"values": values, "storages": storage_ids},
        )
    ).first()
    return None if taken is None else (keys.index((taken.key, taken.storage_id)), taken)


async def register_items(
    session: AsyncSession,
    registrations: list[ItemRegistration],
    *,
    checksum_max_bytes: int = 0,
    extractors: dict[str, Extractor] | None = None,
    owner: str | None = None,
    group: str | None = None,
) -> list[uuid.UUID]:
    """Register many payloads in one transaction: all of them or, on any error, none. Each becomes a new
    logical item (its own oid), READY on its storage, owned by its entry's item_owner, else ``owner``
    (the caller), in ``group`` (else the column's default). Errors name the entry (``items[i]``) at fault."""
    if not registrations:
        raise InvalidQueryParameters("items: at least one item is required")
    if len(registrations) > MAX_BULK_ITEMS:
        raise InvalidQueryParameters(f"items: at most {MAX_BULK_ITEMS} items per call")
    single = len(registrations) == 1
    where = (lambda index: "") if single else (lambda index: f"items[{index}].")

    for index, entry in enumerate(registrations):
        with _naming(where(index)):
            entry.uri = canonical_uri(entry.uri)
            check_item_name(entry.item_name)
    storages = await _resolve_storages(session, registrations, where)
    payloads = await _inspect_payloads(session, registrations, storages, where, checksum_max_bytes, extractors or {})
    parents = await _resolve_parents(session, registrations, where)

    names = [entry.item_name for entry in registrations]
    storage_ids = [storage.storage_id for storage in storages]
    await lock_item_names(session, names)
    if found := await _first_live_with(session, "item_name", names, storage_ids, where):
        index, taken = found
        # "Item is already registered on storage": SKA-DLM's words, which its clients' tests match.
        raise ValueAlreadyInDB(
            f"{where(index)}item_name: Item is already registered on storage {storages[index].storage_name!r}: "
            f"{taken.item_name!r}"
        )
    # A payload backs one live replica only: deleting either would take the other's bytes. The unique
    # index says so too; this says which entry and which item.
    uris = [entry.uri for entry in registrations]
    if found := await _first_live_with(session, "uri", uris, storage_ids, where):
        index, taken = found
        raise ValueAlreadyInDB(
            f"{where(index)}uri: {taken.value!r} on storage {storages[index].storage_name!r} is already the payload "
            f"of item {taken.item_name!r}; register it once, or copy it elsewhere"
        )

    versions = await next_versions(session, names)
    rows = []
    for index, (entry, uid) in enumerate(zip(registrations, new_uids(len(registrations)), strict=True)):
        storage, payload = storages[index], payloads[index]
        rows.append(
            {
                "uid": uid,
                "item_name": entry.item_name,
                "item_version": versions[entry.item_name],
                "storage_id": storage.storage_id,
                "uri": entry.uri,
                "item_type": entry.item_type,
                "item_state": ItemState.READY,
                "uid_phase": storage.storage_phase,
                "oid_phase": storage.storage_phase,
                "target_phase": entry.target_phase,
                "uid_expiration": utc(entry.uid_expiration) if entry.uid_expiration else None,
                "oid_expiration": utc(entry.oid_expiration) if entry.oid_expiration else None,
                "parents": parents[index],
                "item_size": entry.item_size if entry.item_size is not None else payload.size,
                "decompressed_size": entry.decompressed_size,
                "item_checksum": payload.checksum,
                "checksum_method": ChecksumMethod.CRC32C,
                "item_owner": qualified_subject(entry.item_owner, f"{where(index)}item_owner")
                if entry.item_owner
                else owner or DEFAULT_OWNER,
                "item_group": group or DEFAULT_OWNER,
                "item_mime_type": guess_mime_type(entry.uri, entry.item_type),
                "payload_modified": payload.modified,
                # The caller's metadata comes back as sent (with uid and item_name, as in SKA-DLM); what
                # the plugins found is DLM's, in a column of its own.
                "metadata": {**(entry.metadata or {}), "uid": str(uid), "item_name": entry.item_name},
                "extracted_metadata": payload.extracted or None,
            }
        )
        versions[entry.item_name] += 1
    # Leave absent expiries to the column defaults; insert rows share their key set to batch together.
    for key in ("uid_expiration", "oid_expiration"):
        if all(row[key] is None for row in rows):
            for row in rows:
                del row[key]
        else:
            default = await _column_default(session, key)
            for row in rows:
                row[key] = row[key] or default
    return await create_items(session, rows)


# Names whose common MIME guess is wrong at an observatory: a .ms is a Measurement Set, not troff.
_NOT_WHAT_THEY_SEEM = {".ms"}


def guess_mime_type(uri: str, item_type: ItemType) -> str:
    """The MIME type the payload's name suggests (``inode/directory`` for a container)."""
    if item_type is ItemType.CONTAINER:
        return "inode/directory"
    return _mime_type_of_suffixes(_last_two_suffixes(uri))


def _last_two_suffixes(uri: str) -> str:
    """``"".join(PurePosixPath(uri).suffixes[-2:])``, without building a path for each of many names."""
    name = uri.rstrip("/").rpartition("/")[2]
    if name.endswith("."):
        return ""
    return "".join(f".{suffix}" for suffix in name.lstrip(".").split(".")[1:][-2:])


@functools.lru_cache(maxsize=1024)
def _mime_type_of_suffixes(suffixes: str) -> str:
    # The type follows from the last two suffixes alone (".tar.gz"); guessing per name cost a fifth of
    # a 10,000-item bulk registration.
    if PurePosixPath(f"x{suffixes}").suffix.lower() in _NOT_WHAT_THEY_SEEM:
        return DEFAULT_MIME_TYPE
    return mimetypes.guess_type(f"x{suffixes}", strict=False)[0] or DEFAULT_MIME_TYPE


class _Payload(msgspec.Struct):
    size: int | None = None
    checksum: str | None = None
    # When the payload was last modified, as its storage says.
    modified: datetime.datetime | None = None
    # What the metadata plugins found, by plugin name.
    extracted: dict[str, Any] = msgspec.field(default_factory=dict)


class _naming:
    """Prefix the message of a DLM error raised inside the block with the entry it concerns."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, DLMError) and self.prefix:
            exc.message = f"{self.prefix}{exc.message}"
            exc.args = (exc.message,)


async def _resolve_storages(session: AsyncSession, registrations: list[ItemRegistration], where: Any) -> list[Storage]:
    cache: dict[tuple[str, str], Storage] = {}
    resolved = []
    for index, entry in enumerate(registrations):
        key = (entry.storage_name, entry.storage_id)
        if key not in cache:
            with _naming(where(index)):
                storage = await resolve_storage(session, storage_name=entry.storage_name, storage_id=entry.storage_id)
                refuse_new_payloads(storage, "storage")
            cache[key] = storage
        resolved.append(cache[key])
    return resolved


async def _inspect_payloads(
    session: AsyncSession,
    registrations: list[ItemRegistration],
    storages: list[Storage],
    where: Any,
    checksum_max_bytes: int,
    extractors: dict[str, Extractor],
) -> list[_Payload]:
    """Check each payload exists and is of the declared kind; note its size, and its crc32c when cheap."""
    payloads = [_Payload() for _ in registrations]
    by_storage: dict[uuid.UUID, list[int]] = {}
    for index, entry in enumerate(registrations):
        if entry.do_storage_access_check:
            by_storage.setdefault(storages[index].storage_id, []).append(index)
    for indices in by_storage.values():
        storage = storages[indices[0]]
        with _naming(where(indices[0])):
            backend_context = await storage_backend(session, storage)
        async with backend_context as backend:
            infos = await backend.stat_many([registrations[index].uri for index in indices])
            for index, found in zip(indices, infos, strict=True):
                entry = registrations[index]
                info = check_payload(
                    found,
                    uri=entry.uri,
                    storage_name=storage.storage_name,
                    item_type=entry.item_type,
                    field=where(index),
                )
                if info.modified is not None:
                    payloads[index].modified = datetime.datetime.fromtimestamp(info.modified, datetime.UTC)
                if info.size is not None:
                    payloads[index].size = info.size
                if extractors:
                    described = Payload(
                        item_name=entry.item_name,
                        uri=entry.uri,
                        item_type=entry.item_type,
                        storage_name=storage.storage_name,
                        size=info.size,
                        modified=info.modified,
                    )
                    payloads[index].extracted = await extract(extractors, described, backend)
            # The checksums of the small files in one go (on POSIX one thread hop, not one a file).
            cheap = [
                index
                for index in indices
                if payloads[index].size is not None and payloads[index].size <= checksum_max_bytes
            ]
            if cheap:
                found = await backend.checksum_many(
                    [registrations[index].uri for index in cheap], ChecksumMethod.CRC32C
                )
                for index, checksum in zip(cheap, found, strict=True):
                    payloads[index].checksum = checksum
    return payloads


async def _resolve_parents(
    session: AsyncSession, registrations: list[ItemRegistration], where: Any
) -> list[uuid.UUID | None]:
    cache: dict[str, uuid.UUID] = {}
    resolved: list[uuid.UUID | None] = []
    for index, entry in enumerate(registrations):
        if not entry.parents:
            resolved.append(None)
            continue
        if entry.parents not in cache:
            with _naming(where(index)):
                cache[entry.parents] = await resolve_oid(session, entry.parents, "parents")
        resolved.append(cache[entry.parents])
    return resolved


async def _column_default(session: AsyncSession, column: str) -> datetime.datetime:
    server_default = DataItem.__table__.c[column].server_default
    return await session.scalar(select(server_default.arg))  # type: ignore[union-attr]
