"""Locations and storages: where payloads live."""

import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.db.models import Location, LocationFacility, Storage, StorageConfig
from dlm.enums import (
    ConfigType,
    LocationCountry,
    LocationType,
    Phase,
    StorageInterface,
    StorageType,
)
from dlm.errors import InvalidQueryParameters, NotFound, UnmetPreconditionForOperation
from dlm.parsing import parse_uuid
from dlm.transfer.posix import PosixBackend

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
            raise InvalidQueryParameters(f"location_facility: {location_facility!r} is not one of {', '.join(known)}")
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


async def init_storage(
    session: AsyncSession,
    *,
    storage_name: str,
    storage_type: StorageType,
    storage_interface: StorageInterface,
    root_directory: str,
    location_id: str = "",
    location_name: str = "",
    storage_capacity: int = -1,
    storage_phase: Phase = Phase.GAS,
    storage_config: dict[str, Any] | None = None,
) -> uuid.UUID:
    """Create a storage volume at a location and return its id."""
    if not storage_name.strip():
        raise InvalidQueryParameters("storage_name: must not be empty")
    if storage_capacity < -1:
        raise InvalidQueryParameters("storage_capacity: must be a number of bytes, or -1 for no limit")
    if storage_interface is StorageInterface.POSIX:
        root = Path(root_directory)
        if not root.is_absolute():
            raise InvalidQueryParameters(f"root_directory: {root_directory!r} must be an absolute path")
        if not root.is_dir():
            raise UnmetPreconditionForOperation(
                f"root_directory: {root_directory!r} is not a directory on this DLM host"
            )
    elif not root_directory.strip():
        raise InvalidQueryParameters("root_directory: must not be empty")
    resolved_location = await resolve_location(session, location_name=location_name, location_id=location_id)
    storage = Storage(
        storage_name=storage_name,
        storage_type=storage_type,
        storage_interface=storage_interface,
        root_directory=root_directory,
        location_id=resolved_location,
        storage_capacity=storage_capacity,
        storage_phase=storage_phase,
    )
    session.add(storage)
    await session.flush()
    if storage_config:
        session.add(StorageConfig(storage_id=storage.storage_id, config=storage_config, config_type=ConfigType.RCLONE))
        await session.flush()
    return storage.storage_id


async def query_storages(session: AsyncSession, *, storage_name: str = "", storage_id: str = "") -> list[Row[Any]]:
    query = select(Storage.__table__).order_by(Storage.storage_name).limit(MAX_ROWS)
    # As in SKA-DLM, a storage_name takes precedence over a storage_id.
    if storage_name:
        query = query.where(Storage.storage_name == storage_name)
    elif storage_id:
        query = query.where(Storage.storage_id == parse_uuid(storage_id, "storage_id"))
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


def backend_for(storage: Storage) -> PosixBackend:
    """The backend that reaches this storage's payloads."""
    if storage.storage_interface is StorageInterface.POSIX:
        return PosixBackend(storage.root_directory)
    raise UnmetPreconditionForOperation(
        f"storage {storage.storage_name!r}: payload access over {storage.storage_interface.value} is not "
        "available yet; register with do_storage_access_check=false"
    )
