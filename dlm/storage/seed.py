"""Create the locations and storages an operator lists in files (``DLM_LOCATION_CONFIG``,
``DLM_STORAGE_CONFIG``) at startup. Idempotent: what exists already (by name) is left alone, except
that a storage whose listed config differs from its current one gets the listed config."""

import json
import tomllib
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.db.models import Location, Storage
from dlm.enums import LocationCountry, LocationType, Phase, StorageInterface, StorageType
from dlm.errors import InvalidQueryParameters
from dlm.storage import service


class LocationEntry(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    location_name: str
    location_type: LocationType
    location_country: LocationCountry | None = None
    location_city: str = ""
    location_facility: str = ""


class StorageEntry(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    storage_name: str
    location_name: str
    storage_type: StorageType
    storage_interface: StorageInterface
    root_directory: str
    storage_phase: Phase = Phase.GAS
    storage_capacity: int = -1
    # The storage's connection settings in rclone's remote format.
    config: dict[str, Any] | None = None


def load_entries(path: str, key: str, entry_type: type[msgspec.Struct]) -> list[Any]:
    """Entries from a JSON file (a list, or an object with ``key``) or a TOML file (``[[key]]`` tables)."""
    try:
        text = Path(path).read_text()
        document = tomllib.loads(text) if path.endswith(".toml") else json.loads(text)
    except (OSError, ValueError) as exc:
        raise InvalidQueryParameters(f"{path}: {exc}") from None
    entries = document.get(key, []) if isinstance(document, dict) else document
    try:
        return msgspec.convert(entries, list[entry_type])
    except msgspec.ValidationError as exc:
        raise InvalidQueryParameters(f"{path}: {exc}") from None


async def seed(session: AsyncSession, *, location_file: str | None, storage_file: str | None) -> list[str]:
    """Create what the files list and is missing; returns what was done, one line per change."""
    done = []
    if location_file:
        for location in load_entries(location_file, "locations", LocationEntry):
            if await session.scalar(
                select(Location.location_id).where(Location.location_name == location.location_name)
            ):
                continue
            await service.init_location(session, **msgspec.structs.asdict(location))
            done.append(f"created location {location.location_name}")
    if storage_file:
        for entry in load_entries(storage_file, "storages", StorageEntry):
            existing = await session.scalar(select(Storage).where(Storage.storage_name == entry.storage_name))
            if existing is None:
                await service.init_storage(
                    session,
                    storage_name=entry.storage_name,
                    storage_type=entry.storage_type,
                    storage_interface=entry.storage_interface,
                    root_directory=entry.root_directory,
                    location_name=entry.location_name,
                    storage_capacity=entry.storage_capacity,
                    storage_phase=entry.storage_phase,
                    storage_config=entry.config,
                )
                done.append(f"created storage {entry.storage_name}")
            elif entry.config and await service.latest_config(session, existing.storage_id) != entry.config:
                await service.create_storage_config(session, config=entry.config, storage_id=str(existing.storage_id))
                done.append(f"updated the config of storage {entry.storage_name}")
    return done
