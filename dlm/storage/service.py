"""Locations, storages and their configs: where payloads live and how DLM reaches them."""

import asyncio
import datetime
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
from sqlalchemy import Row, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.data_item import ITEMS, change_items, get_item, refresh_oid_phase
from dlm.db.models import Location, LocationFacility, Migration, Storage, StorageConfig, StorageEvent
from dlm.db.tally import held_by_storage
from dlm.enums import (
    ConfigType,
    ItemState,
    ItemType,
    LocationCountry,
    LocationType,
    MigrationStatus,
    Phase,
    StorageInterface,
    StorageType,
    combined_phase,
)
from dlm.errors import (
    Conflict,
    DatabaseOperationError,
    DLMError,
    InvalidQueryParameters,
    NotFound,
    UnmetPreconditionForOperation,
    ValueAlreadyInDB,
)
from dlm.parsing import parse_uuid
from dlm.sites.service import reachable_from_names
from dlm.storage import configs
from dlm.storage.configs import is_sealed
from dlm.storage.confinement import Confinement, overlaps
from dlm.transfer.backends import Place, make_backend, place_of
from dlm.transfer.base import TransferError
from dlm.transfer.paths import check_deletable_uri
from dlm.transfer.posix import PosixBackend

if TYPE_CHECKING:
    from dlm.transfer.s3 import S3Backend
    from dlm.transfer.sftp import SftpBackend

MAX_ROWS = 1000


async def query_location_facilities(session: AsyncSession) -> list[str]:
    result = await session.scalars(select(LocationFacility.facility_name).order_by(LocationFacility.facility_name))
    return list(result)


async def init_location(
    session: AsyncSession,
    *,
    location_name: str,
    location_type: LocationType,
    location_country: LocationCountry | None = None,
    location_city: str | None = None,
    location_facility: str | None = None,
) -> uuid.UUID:
    """Create a location and return its id."""
    if not location_name.strip():
        raise InvalidQueryParameters("location_name: must not be empty")
    if location_facility:
        known = await query_location_facilities(session)
        if location_facility not in known:
            raise DatabaseOperationError(
                f"location_facility: {location_facility!r} is not one of {', '.join(known)} (the foreign key "
                "to location_facility)"
            )
    location = Location(
        location_name=location_name,
        location_type=location_type,
        location_country=location_country,
        location_city=location_city or None,
        location_facility=location_facility or None,
    )
    session.add(location)
    await session.flush()
    return location.location_id


async def query_locations(session: AsyncSession, *, location_name: str = "", location_id: str = "") -> list[Row[Any]]:
    query = select(Location.__table__).order_by(Location.location_name).limit(MAX_ROWS)
    if location_name:
        query = query.where(Location.location_name == location_name)
    if location_id:
        query = query.where(Location.location_id == parse_uuid(location_id, "location_id"))
    return list((await session.execute(query)).all())


async def resolve_location(session: AsyncSession, *, location_name: str = "", location_id: str = "") -> uuid.UUID:
    if not location_name and not location_id:
        raise InvalidQueryParameters("one of location_id, location_name is required")
    query = select(Location.location_id)
    if location_id:
        query = query.where(Location.location_id == parse_uuid(location_id, "location_id"))
    if location_name:
        query = query.where(Location.location_name == location_name)
    found = await session.scalar(query)
    if found is None:
        raise NotFound(f"location {location_name or location_id!r} does not exist")
    return found


class SkaStorageRow(msgspec.Struct):
    """A storage as SKA-DLM's init_storage took it in its body (all of the row, no config)."""

    storage_name: str
    storage_type: StorageType
    storage_interface: StorageInterface
    root_directory: str
    location_id: uuid.UUID | None = None
    location_name: str = ""
    storage_capacity: int = -1
    storage_phase: Phase = Phase.GAS


def ska_storage_row(body: dict[str, Any]) -> SkaStorageRow:
    """The storage ``body`` describes, or a 422 naming what is wrong in it."""
    try:
        row = msgspec.convert(body, SkaStorageRow, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidQueryParameters(f"body: {exc}") from exc
    if row.location_id is None and not row.location_name:
        raise InvalidQueryParameters("body: one of location_id, location_name is required")
    return row


async def init_storage(
    session: AsyncSession,
    *,
    confinement: Confinement,
    storage_name: str,
    storage_type: StorageType,
    storage_interface: StorageInterface,
    root_directory: str,
    location_id: str = "",
    location_name: str = "",
    storage_capacity: int = -1,
    storage_phase: Phase = Phase.GAS,
    storage_config: dict[str, Any] | None = None,
    check: bool = True,
) -> uuid.UUID:
    """Create a storage volume at a location and return its id. Its root must be one ``confinement``
    allows and must not share bytes with another live storage; with ``check``, DLM must be able to
    reach it now (an S3 bucket that exists, with these credentials)."""
    if not storage_name.strip():
        raise InvalidQueryParameters("storage_name: must not be empty")
    if storage_config:
        configs.validate(storage_config, interface=storage_interface)
    if await session.scalar(select(Storage.storage_id).where(Storage.storage_name == storage_name)):
        raise ValueAlreadyInDB(f"storage_name: a storage named {storage_name!r} exists already")
    _check_capacity(storage_capacity)
    if not root_directory.strip() or "\x00" in root_directory:
        raise InvalidQueryParameters("root_directory: must not be empty")
    # A storage may get its config after it is created (SKA-DLM's order, and its directory watcher's,
    # whose root is on the watcher's host): an sftp storage without one, or a posix one whose root is
    # not on this host, waits for it, unavailable and out of reach. So does a posix root outside the
    # directories local storages may use, which may be the same path on the watcher's host (SKA's
    # compose and chart share /dlm): only a config (SFTP, checked then) or an operator's
    # DLM_STORAGE_ROOTS makes it usable.
    place = None
    waiting = not storage_config and (
        storage_interface is StorageInterface.SFTP
        or (
            storage_interface is StorageInterface.POSIX
            and os.path.isabs(root_directory)
            and (not os.path.lexists(root_directory) or confinement.outside_posix_roots(root_directory))
        )
    )
    if not waiting:
        place = await check_place(session, storage_interface, root_directory, storage_config, confinement)
    resolved_location = await resolve_location(session, location_name=location_name, location_id=location_id)
    storage = Storage(
        storage_name=storage_name,
        storage_type=storage_type,
        storage_interface=storage_interface,
        root_directory=root_directory,
        location_id=resolved_location,
        storage_capacity=storage_capacity,
        storage_phase=storage_phase,
        storage_available=not waiting,
    )
    if check and place is not None:
        await check_reachable(storage, storage_config)
    session.add(storage)
    await session.flush()
    await record_storage_event(
        session, storage.storage_id, "storage_created", f"{storage_interface.value} {root_directory}"
    )
    if waiting:
        reason = "no config says how to reach it"
        if os.path.lexists(root_directory):
            reason += " (its root on this host is outside DLM_STORAGE_ROOTS)"
        await record_storage_event(session, storage.storage_id, WAITING_FOR_CONFIG, reason)
    if storage_config:
        await _add_config(session, storage.storage_id, storage_config, ConfigType.RCLONE)
    return storage.storage_id


async def check_reachable(storage: Storage, config: dict[str, Any] | None) -> None:
    """Refuse (422, with the reason) a storage DLM cannot use now: a missing bucket, refused
    credentials, an unknown host key, an endpoint that does not answer."""
    try:
        async with make_backend(
            storage.storage_interface, storage.root_directory, config, storage.storage_name
        ) as backend:
            await backend.check()
    except TransferError as exc:
        raise UnmetPreconditionForOperation(
            f"storage {storage.storage_name!r} cannot be reached: {exc.message} (check=false skips this check)"
        ) from None


def refuse_new_payloads(storage: Storage, field: str) -> None:
    """A storage that is retired, being retired or unavailable takes no new replica."""
    if storage.storage_retired:
        raise UnmetPreconditionForOperation(f"{field}: storage {storage.storage_name!r} is retired")
    if storage.storage_retire_date is not None:
        raise UnmetPreconditionForOperation(f"{field}: storage {storage.storage_name!r} is being retired")
    if not storage.storage_available:
        raise UnmetPreconditionForOperation(
            f"{field}: storage {storage.storage_name!r} is not available (made so by an operator, or waiting "
            "for a config that says how to reach it: see its storage events)"
        )


PERMISSIONS = ("R", "RW")


async def update_storage(
    session: AsyncSession,
    *,
    storage_name: str = "",
    storage_id: str = "",
    available: bool | None = None,
    phase: Phase | None = None,
    capacity: int | None = None,
    permissions: str | None = None,
    retire: bool | None = None,
    reachable_from: str | None = None,
    max_transfers: int | None = None,
) -> Row[Any]:
    """Change a storage; returns its row. A new phase becomes its replicas' ``uid_phase`` (and their
    items' phase follows). ``retire`` starts retiring it: it takes no new replicas, phase enforcement
    copies what it holds elsewhere and then removes it there, and once it holds nothing it is retired
    (``retire=false`` calls a retirement in progress off). ``max_transfers``: the copies it carries at
    once (0: no limit)."""
    storage = await resolve_storage(session, storage_name=storage_name, storage_id=storage_id)
    if storage.storage_retired:
        raise UnmetPreconditionForOperation(f"storage {storage.storage_name!r} is retired and cannot change")
    changes: dict[str, Any] = {}
    if available is not None:
        if available and not storage.storage_available:
            # Made available: checked as a new storage is (one created unavailable never was). An overlap
            # found here would have let one storage's deletions take the other's payloads.
            config = await latest_config(session, storage.storage_id)
            if (confinement := session.info.get("confinement")) is not None:
                await check_place(
                    session, storage.storage_interface, storage.root_directory, config, confinement, storage.storage_id
                )
            else:
                place = place_of(storage.storage_interface, storage.root_directory, config)
                await check_no_overlap(session, place, storage_id=storage.storage_id)
        changes["storage_available"] = available
    if capacity is not None:
        _check_capacity(capacity)
        changes["storage_capacity"] = capacity
    if permissions is not None:
        if permissions.upper() not in PERMISSIONS:
            raise InvalidQueryParameters(f"storage_permissions: {permissions!r} is not one of {', '.join(PERMISSIONS)}")
        changes["storage_permissions"] = permissions.upper()
    if reachable_from is not None:
        changes["reachable_from"] = await reachable_from_names(session, reachable_from)
    if max_transfers is not None:
        if max_transfers < 0:
            raise InvalidQueryParameters(f"max_transfers: {max_transfers} is negative (0: no limit)")
        changes["max_transfers"] = max_transfers or None
    old_phase = storage.storage_phase
    if phase is not None:
        changes["storage_phase"] = phase
    if retire is True and storage.storage_retire_date is None:
        changes["storage_retire_date"] = func.now()
    elif retire is False and storage.storage_retire_date is not None:
        changes["storage_retire_date"] = None
    described = [_describe_change(storage, name, value) for name, value in changes.items()]
    row = (
        await session.execute(
            update(Storage)
            .where(Storage.storage_id == storage.storage_id)
            .values(**changes)
            .returning(*Storage.__table__.c)
        )
    ).one()
    if phase is not None and phase is not old_phase:
        live = (ITEMS.c.storage_id == storage.storage_id) & (ITEMS.c.item_state != ItemState.DELETED)
        oids = set(await session.scalars(update(ITEMS).where(live).values(uid_phase=phase).returning(ITEMS.c.oid)))
        await refresh_oid_phase(session, oids)
    if described:
        await record_storage_event(session, storage.storage_id, "storage_updated", "; ".join(described))
    return row


def _check_capacity(capacity: int) -> None:
    if capacity < -1:
        raise InvalidQueryParameters("storage_capacity: must be a number of bytes, or -1 for no limit")


def _describe_change(storage: Storage, name: str, value: Any) -> str:
    if name == "storage_retire_date":
        return "retirement started" if value is not None else "retirement called off"
    return f"{name}: {getattr(storage, name)} -> {value}"


async def finish_retirements(session: AsyncSession) -> list[str]:
    """Retire the storages being retired that hold no live replica any more; returns their names."""
    holding = select(ITEMS.c.uid).where(
        ITEMS.c.storage_id == Storage.storage_id, ITEMS.c.item_state != ItemState.DELETED
    )
    rows = (
        await session.execute(
            update(Storage)
            .where(Storage.storage_retire_date.is_not(None), Storage.storage_retired.is_(False), ~holding.exists())
            .values(storage_retired=True, storage_available=False)
            .returning(Storage.storage_id, Storage.storage_name)
        )
    ).all()
    for storage_id, _ in rows:
        await record_storage_event(session, storage_id, "storage_retired", "it holds no live replica any more")
    return [name for _, name in rows]


async def check_place(
    session: AsyncSession,
    interface: StorageInterface,
    root_directory: str,
    config: dict[str, Any] | None,
    confinement: Confinement,
    storage_id: uuid.UUID | None = None,
) -> Place:
    """Where a storage with this root and config keeps its bytes, if it may: inside what
    ``confinement`` allows, a local root that is a directory here, sharing no bytes with another live
    storage (``storage_id``: itself, when its config changes)."""
    place = place_of(interface, root_directory, config)
    if place.kind == "local":
        if not Path(place.root).is_absolute():
            raise InvalidQueryParameters(f"root_directory: {root_directory!r} must be an absolute path")
        confinement.check_place(place)
        if not Path(place.root).is_dir():
            raise UnmetPreconditionForOperation(f"root_directory: {place.root!r} is not a directory on this DLM host")
    else:
        confinement.check_place(place)
    await check_no_overlap(session, place, storage_id=storage_id)
    return place


async def check_no_overlap(
    session: AsyncSession,
    place: Place,
    *,
    storage_id: uuid.UUID | None = None,
    field: str = "root_directory",
    reason: str = "two storages must not share bytes",
) -> None:
    """Refuse a place whose bytes would be another live storage's too: deleting one's payload would
    delete the other's."""
    query = select(Storage).where(Storage.storage_retired.is_(False))
    if storage_id is not None:
        query = query.where(Storage.storage_id != storage_id)
    for other in list(await session.scalars(query)):
        try:
            other_place = place_of(
                other.storage_interface, other.root_directory, await latest_config(session, other.storage_id)
            )
        except DLMError:
            continue  # a storage DLM cannot reach (an sftp one without its config yet) holds nothing
        if overlaps(place, other_place):
            where = "" if place.kind == "local" else f" on {place.endpoint}"
            raise UnmetPreconditionForOperation(
                f"{field}: {place.root!r} overlaps storage {other.storage_name!r} (rooted at "
                f"{other_place.root!r}{where}): it is, contains or lies inside that root, and {reason}"
            )


async def record_storage_event(session: AsyncSession, storage_id: uuid.UUID, event: str, detail: str) -> None:
    """Append to the storage's history, as the transaction's actor (``dlm.db.engine.set_actor``)."""
    actor = func.coalesce(func.nullif(func.current_setting("dlm.actor", True), ""), "unknown")
    await session.execute(insert(StorageEvent).values(storage_id=storage_id, event=event, detail=detail, actor=actor))


async def query_storages(session: AsyncSession, *, storage_name: str = "", storage_id: str = "") -> list[Row[Any]]:
    query = select(Storage.__table__).order_by(Storage.storage_name).limit(MAX_ROWS)
    # As in SKA-DLM, a storage_name takes precedence over a storage_id (which must still be an id).
    parsed_id = parse_uuid(storage_id, "storage_id") if storage_id else None
    if storage_name:
        query = query.where(Storage.storage_name == storage_name)
    elif parsed_id:
        query = query.where(Storage.storage_id == parsed_id)
    return list((await session.execute(query)).all())


async def resolve_storage(session: AsyncSession, *, storage_name: str = "", storage_id: str = "") -> Storage:
    """The storage named by id or name (both given: they must agree)."""
    if not storage_name and not storage_id:
        raise InvalidQueryParameters("one of storage_name, storage_id is required")
    query = select(Storage)
    if storage_id:
        query = query.where(Storage.storage_id == parse_uuid(storage_id, "storage_id"))
    if storage_name:
        query = query.where(Storage.storage_name == storage_name)
    storage = await session.scalar(query)
    if storage is None:
        raise NotFound(f"storage {storage_name or storage_id!r} does not exist")
    return storage


async def latest_config(
    session: AsyncSession, storage_id: uuid.UUID, config_type: ConfigType = ConfigType.RCLONE
) -> dict[str, Any] | None:
    """The storage's newest config of this type (configs are appended, never edited in place), opened
    with the session's keyring if it was stored sealed."""
    stored = await session.scalar(
        select(StorageConfig.config)
        .where(StorageConfig.storage_id == storage_id, StorageConfig.config_type == config_type)
        .order_by(StorageConfig.config_date.desc(), StorageConfig.config_id)
        .limit(1)
    )
    return None if stored is None else keyring(session).open(stored)


def keyring(session: AsyncSession) -> configs.Keyring:
    return session.info.get("keyring") or configs.NO_KEYS


async def _add_config(
    session: AsyncSession, storage_id: uuid.UUID, config: dict[str, Any], config_type: ConfigType
) -> uuid.UUID:
    row = StorageConfig(storage_id=storage_id, config=keyring(session).seal(config), config_type=config_type)
    session.add(row)
    await session.flush()
    return row.config_id


async def create_storage_config(
    session: AsyncSession,
    *,
    confinement: Confinement,
    config: Any,
    storage_id: str = "",
    storage_name: str = "",
    config_type: ConfigType = ConfigType.RCLONE,
) -> uuid.UUID:
    """Validate and store a config for a storage; it supersedes earlier ones of the same type."""
    storage = await resolve_storage(session, storage_name=storage_name, storage_id=storage_id)
    configs.validate(config, config_type=config_type, interface=storage.storage_interface)
    if config_type is ConfigType.RCLONE:
        # A new config may move the storage (an alias's remote, an SFTP host): checked as a new storage is.
        await check_place(
            session, storage.storage_interface, storage.root_directory, config, confinement, storage.storage_id
        )
    config_id = await _add_config(session, storage.storage_id, config, config_type)
    await record_storage_event(session, storage.storage_id, "config_changed", f"{config_type.value} config {config_id}")
    if config_type is ConfigType.RCLONE and not storage.storage_available and await _waiting(session, storage):
        storage.storage_available = True
        await record_storage_event(session, storage.storage_id, "storage_updated", "available: it has a config")
    return config_id


WAITING_FOR_CONFIG = "waiting_for_config"


async def _waiting(session: AsyncSession, storage: Storage) -> bool:
    """Whether the storage was made unavailable only for want of a config (not by an operator since)."""
    last = await session.scalar(
        select(StorageEvent.event)
        .where(
            StorageEvent.storage_id == storage.storage_id,
            StorageEvent.event.in_([WAITING_FOR_CONFIG, "storage_updated"]),
        )
        .order_by(StorageEvent.event_id.desc())
        .limit(1)
    )
    return last == WAITING_FOR_CONFIG


async def reseal_configs(session: AsyncSession, *, plain_only: bool = False) -> int:
    """Seal every stored config with the keyring's newest key (plain ones too; with ``plain_only``, those
    alone, as `dlm serve` does when it starts); returns how many changed. Run after putting a new key
    first in DLM_SECRET_KEY, before dropping the old one."""
    ring = keyring(session)
    if not ring.sealing:
        raise UnmetPreconditionForOperation("DLM_SECRET_KEY is not set: there is no key to seal configs with")
    changed = 0
    rows = await session.execute(select(StorageConfig.config_id, StorageConfig.config).with_for_update())
    for config_id, stored in rows.all():
        if plain_only and is_sealed(stored):
            continue
        resealed = ring.reseal(stored)
        if resealed != stored:
            await session.execute(
                update(StorageConfig).where(StorageConfig.config_id == config_id).values(config=resealed)
            )
            changed += 1
    return changed


async def get_storage_configs(
    session: AsyncSession, *, storage_id: str = "", storage_name: str = "", config_type: ConfigType = ConfigType.RCLONE
) -> list[dict[str, Any]]:
    """The storage's configs of this type, newest first, showing only fields known not to be secret;
    with neither name nor id, every storage's (the newest ALL_CONFIGS, as SKA-DLM lists them)."""
    query = (
        select(StorageConfig.config)
        .where(StorageConfig.config_type == config_type)
        .order_by(StorageConfig.config_date.desc(), StorageConfig.config_id)
    )
    if storage_name or storage_id:
        storage = await resolve_storage(session, storage_name=storage_name, storage_id=storage_id)
        query = query.where(StorageConfig.storage_id == storage.storage_id)
    else:
        query = query.limit(ALL_CONFIGS)
    return [configs.redact(keyring(session).open(config)) for config in await session.scalars(query)]


ALL_CONFIGS = 1000


async def register_rclone_remote(session: AsyncSession, config: Any, *, confinement: Confinement) -> bool:
    """SKA-DLM's ``rclone_config``: a remote named after a storage becomes that storage's config.
    DLM moves bytes itself, so there is no rclone daemon to tell."""
    configs.validate(config)
    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidQueryParameters("config.name: required, the name of the storage this remote reaches")
    await create_storage_config(session, config=config, storage_name=name, confinement=confinement)
    return True


def ssh_public_key(key_file: str | None) -> str:
    if not key_file:
        raise NotFound("no SSH public key is configured (set DLM_SSH_PUBLIC_KEY_FILE)")
    try:
        return Path(key_file).read_text().strip()
    except OSError as exc:
        raise NotFound(f"the SSH public key {key_file!r} cannot be read: {exc.strerror}") from None


async def storage_backend(session: AsyncSession, storage: Storage) -> "PosixBackend | S3Backend | SftpBackend":
    """The backend that reaches this storage's payloads, as an async context manager. A local root is
    checked against the process's confinement each time (defence in depth: a row written by an older
    DLM, or a storage still waiting for its config, is never reached outside the allowed roots)."""
    config = await latest_config(session, storage.storage_id)
    confinement = session.info.get("confinement")
    if confinement is not None:
        place = place_of(storage.storage_interface, storage.root_directory, config)
        if place.kind == "local":
            try:
                confinement.check_posix_root(place.root)
                await _check_root_unmoved(session, storage, place)
            except DLMError as exc:
                raise UnmetPreconditionForOperation(
                    f"storage {storage.storage_name!r} cannot be reached: {exc.message}"
                ) from None
    return make_backend(storage.storage_interface, storage.root_directory, config, storage.storage_name)


async def _check_root_unmoved(session: AsyncSession, storage: Storage, place: Place) -> None:
    """A local root is checked for overlap again whenever it resolves elsewhere than when this process
    last checked it (a symlinked root re-pointed at another storage's): one realpath per opening, the
    overlap query only when the answer changed. The record is the process's (``session_info``)."""
    checked = session.info.get("opened_roots")
    if checked is None:
        return
    real = os.path.realpath(place.root)
    if checked.get(storage.storage_id) == real:
        return
    await check_no_overlap(
        session, Place("local", "", real), storage_id=storage.storage_id, field=f"root {place.root!r} (resolved)"
    )
    checked[storage.storage_id] = real


class DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


NOT_MOUNTED = DiskUsage(0, 0, 0)


async def _local_root(session: AsyncSession, storage: Storage) -> Path | None:
    """Where a local POSIX storage's payloads are; None for storages elsewhere (S3, SFTP)."""
    if storage.storage_interface is not StorageInterface.POSIX:
        return None
    try:
        config = await latest_config(session, storage.storage_id)
        place = place_of(storage.storage_interface, storage.root_directory, config)
    except DLMError:
        return None
    return Path(place.root) if place.kind == "local" else None


async def file_system_usage(session: AsyncSession, storage: Storage) -> DiskUsage | None:
    """``shutil.disk_usage`` of a local POSIX storage's root (total, used, free), all 0 when the volume
    is not mounted; None for storages elsewhere (S3, SFTP), whose room DLM cannot see."""
    return (await file_system_usages(session, [storage]))[storage.storage_id]


async def file_system_usages(session: AsyncSession, storages: list[Storage]) -> dict[uuid.UUID, DiskUsage | None]:
    """file_system_usage of each storage, read once per file system: storages that share one show the
    same room (read a moment apart on a busy disk, they differed, and a choice between them flipped)."""
    roots = {storage.storage_id: await _local_root(session, storage) for storage in storages}

    def read() -> dict[uuid.UUID, DiskUsage | None]:
        by_device: dict[int, DiskUsage] = {}
        usages: dict[uuid.UUID, DiskUsage | None] = {}
        for storage_id, root in roots.items():
            if root is None:
                usages[storage_id] = None
                continue
            try:
                device = os.stat(root).st_dev
                if device not in by_device:
                    by_device[device] = DiskUsage(*shutil.disk_usage(root))
                usages[storage_id] = by_device[device]
            except OSError:
                usages[storage_id] = NOT_MOUNTED
        return usages

    return await asyncio.to_thread(read)


async def query_storage_events(
    session: AsyncSession, *, storage_name: str = "", storage_id: str = "", after_event_id: int = 0
) -> list[Row[Any]]:
    """What the engines reported about storages (capacity warnings), oldest first, a thousand at a
    time (page with ``after_event_id``); one storage's, by name or id, or every storage's."""
    query = (
        select(StorageEvent.__table__, Storage.storage_name)
        .join(Storage, Storage.storage_id == StorageEvent.storage_id)
        .where(StorageEvent.event_id > after_event_id)
        .order_by(StorageEvent.event_id)
        .limit(MAX_ROWS)
    )
    if storage_name or storage_id:
        storage = await resolve_storage(session, storage_name=storage_name, storage_id=storage_id)
        query = query.where(StorageEvent.storage_id == storage.storage_id)
    return list((await session.execute(query)).all())


async def storage_usage(session: AsyncSession, *, storage_name: str = "", storage_id: str = "") -> list[dict[str, Any]]:
    """What DLM holds on each storage (bytes and replicas not deleted), against its capacity, and for a
    POSIX storage what its file system says is free."""
    query = select(Storage).order_by(Storage.storage_name).limit(MAX_ROWS)
    if storage_name or storage_id:
        storage = await resolve_storage(session, storage_name=storage_name, storage_id=storage_id)
        query = query.where(Storage.storage_id == storage.storage_id)
    storages = list(await session.scalars(query))
    held = await held_by_storage(session, [storage.storage_id for storage in storages])
    usage = []
    disks = await file_system_usages(session, storages)
    for storage in storages:
        used_bytes, objects = held.get(storage.storage_id, (0, 0))
        capacity = storage.storage_capacity if storage.storage_capacity >= 0 else None
        disk = disks[storage.storage_id]
        usage.append(
            {
                "storage_id": str(storage.storage_id),
                "storage_name": storage.storage_name,
                "capacity_bytes": capacity,
                "used_bytes": used_bytes,
                "objects": objects,
                "use_pct": round(100 * used_bytes / capacity, 2) if capacity else None,
                "filesystem_total_bytes": disk.total if disk else None,
                "filesystem_free_bytes": disk.free if disk else None,
            }
        )
    return usage


async def delete_payload(
    session: AsyncSession, *, uid: str, force: bool = False, now: datetime.datetime | None = None
) -> list[Row[Any]]:
    """Delete a replica's payload and mark it DELETED (its row stays, as the trace). Refused when the
    item would fall below its target_phase while the item itself has not expired, or when its storage
    is read-only, unless ``force``. Registered children of a container replica go with it."""
    item = await get_item(session, uid)
    replicas = await lock_replicas(session, item.oid)
    replica = next(row for row in replicas if row.uid == item.uid)
    if replica.item_state is ItemState.DELETED:
        raise UnmetPreconditionForOperation(f"uid {replica.uid}: already DELETED")
    unconditional = force or bool(session.info.get("unconditional_deletion"))
    return await delete_replica(session, replica, replicas, force=unconditional, override_read_only=force, now=now)


# The advisory lock (this namespace, the item's oid hashed) under which an item's set of replicas changes:
# taken before any of its rows is locked. Without it a replica committed by one transaction between two
# statements of another was locked by a third first, out of uid order, and two failing copies of one item
# deadlocked. The replication engine's pass claims items with it and skips those another holds.
ITEM_LOCK = 0x5245504C  # "REPL"


async def lock_item(session: AsyncSession, oid: uuid.UUID) -> None:
    """Wait for the item until the transaction ends (see ITEM_LOCK)."""
    await session.execute(select(func.pg_advisory_xact_lock(ITEM_LOCK, func.hashtext(str(oid)))))


async def lock_replicas(session: AsyncSession, oid: uuid.UUID) -> list[Row[Any]]:
    """Every replica of the item, locked: two deletions of different replicas must not each count the
    other as the one that stays."""
    await lock_item(session, oid)
    query = select(ITEMS).where(ITEMS.c.oid == oid).order_by(ITEMS.c.uid).with_for_update()
    return list((await session.execute(query)).all())


def is_writable(storage: Storage) -> bool:
    return "W" in (storage.storage_permissions or "").upper()


async def delete_replica(
    session: AsyncSession,
    replica: Row[Any],
    replicas: list[Row[Any]],
    *,
    force: bool = False,
    override_read_only: bool = False,
    now: datetime.datetime | None = None,
) -> list[Row[Any]]:
    """``delete_payload`` for a replica whose item's replicas the caller has locked. ``force`` skips the
    resilience rule, ``override_read_only`` (an admin's force) the refusal to delete on a read-only storage."""
    check_deletable_uri(replica.uri, f"uid {replica.uid}: uri")
    storage = await session.get(Storage, replica.storage_id) if replica.storage_id else None
    if storage is not None and not is_writable(storage) and not override_read_only:
        raise UnmetPreconditionForOperation(
            f"uid {replica.uid}: storage {storage.storage_name!r} is read-only; an admin may force the deletion"
        )
    busy = await session.scalar(
        select(Migration.migration_id).where(
            Migration.source_uid == replica.uid,
            Migration.status.in_([MigrationStatus.PENDING, MigrationStatus.RUNNING]),
        )
    )
    if busy is not None:
        raise Conflict(f"uid {replica.uid}: migration {busy} is copying it; cancel it first")
    if not force:
        check_resilience(replica, replicas, now or datetime.datetime.now(datetime.UTC))
    selector = ITEMS.c.uid == replica.uid
    if replica.item_type is ItemType.CONTAINER:
        selector = selector | (
            (ITEMS.c.parents == replica.oid)
            & (ITEMS.c.storage_id == replica.storage_id)
            & (ITEMS.c.item_state != ItemState.DELETED)
        )
    changed = await change_items(session, selector, {"item_state": ItemState.DELETED})
    # The rows change first and the payloads go second, inside one transaction: if a payload cannot
    # be deleted, the rows roll back and nothing claims a payload is gone while it is still there.
    if storage is not None:
        async with await storage_backend(session, storage) as backend:
            for row in changed:
                if row.uri:
                    await backend.delete(row.uri)
    return changed


def check_resilience(replica: Row[Any], replicas: list[Row[Any]], now: datetime.datetime) -> None:
    """Refuse (UnmetPreconditionForOperation) to lose ``replica`` if the item, not expired at ``now``,
    would then fall below its target_phase (SPEC §4). ``replicas``: all of the item's, as they stand."""
    if replica.item_state is not ItemState.READY:
        return
    if replica.oid_expiration <= now:
        return
    before = combined_phase([row.uid_phase for row in replicas if row.item_state is ItemState.READY])
    remaining = [row.uid_phase for row in replicas if row.item_state is ItemState.READY and row.uid != replica.uid]
    after = combined_phase(remaining) if remaining else Phase.PLASMA
    if after.weight < before.weight and after.weight < replica.target_phase.weight:
        raise UnmetPreconditionForOperation(
            f"uid {replica.uid}: deleting it would leave item {replica.item_name!r} at {after.value}, below its "
            f"target_phase {replica.target_phase.value}, and the item has not expired; pass force=true to delete anyway"
        )
