"""Create the locations and storages an operator lists in files (``DLM_LOCATION_CONFIG``,
``DLM_STORAGE_CONFIG``; SKA-DLM's ``LOCATION_CONFIG``, ``STORAGE_CONFIG`` and their layout too) at startup. Idempotent: what exists already (by name) is left alone, except
that a storage whose listed config differs from its current one gets the listed config.

The files are the operator's, so the POSIX roots they name (their storages' roots, and any listed under
``storage_roots``) are directories storages may use, beside ``DLM_STORAGE_ROOTS``."""

import json
import tomllib
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.config import Settings
from dlm.db.models import Location, Storage
from dlm.enums import LocationCountry, LocationType, Phase, StorageInterface, StorageType
from dlm.errors import InvalidQueryParameters
from dlm.storage import service
from dlm.storage.confinement import Confinement
from dlm.transfer.backends import place_of


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


def _load(path: str) -> Any:
    try:
        text = Path(path).read_text()
        return tomllib.loads(text) if path.endswith(".toml") else json.loads(text)
    except (OSError, ValueError) as exc:
        raise InvalidQueryParameters(f"{path}: {exc}") from None


# SKA-DLM's files (LOCATION_CONFIG, STORAGE_CONFIG, as its Helm chart writes them) name the fields
# differently; an entry with "name" is read in that layout.
_SKA_LOCATION_FIELDS = {
    "name": "location_name",
    "type": "location_type",
    "country": "location_country",
    "city": "location_city",
    "facility": "location_facility",
}
_SKA_STORAGE_FIELDS = {"name": "storage_name", "location": "location_name", "interface": "storage_interface"}


def _from_ska_layout(entry: Any, fields: dict[str, str]) -> Any:
    if not isinstance(entry, dict) or "name" not in entry:
        return entry
    translated = {fields.get(key, key): value for key, value in entry.items()}
    if "storage_name" in translated:
        # SKA-DLM's default phase for a listed storage, and its case-insensitive phase names.
        translated["storage_phase"] = str(translated.get("storage_phase") or Phase.SOLID.value).upper()
    return translated


def load_entries(path: str, key: str, entry_type: type[msgspec.Struct]) -> list[Any]:
    """Entries from a JSON file (a list, or an object with ``key``) or a TOML file (``[[key]]`` tables),
    in DLM's layout or SKA-DLM's."""
    document = _load(path)
    entries = document.get(key, []) if isinstance(document, dict) else document
    if isinstance(entries, list):
        fields = _SKA_LOCATION_FIELDS if entry_type is LocationEntry else _SKA_STORAGE_FIELDS
        entries = [_from_ska_layout(entry, fields) for entry in entries]
    try:
        return msgspec.convert(entries, list[entry_type])
    except msgspec.ValidationError as exc:
        raise InvalidQueryParameters(f"{path}: {exc}") from None


def allowed_roots(storage_file: str | None) -> list[str]:
    """The POSIX roots a storage file allows: its ``storage_roots`` and its POSIX storages' roots."""
    if not storage_file:
        return []
    document = _load(storage_file)
    listed = document.get("storage_roots", []) if isinstance(document, dict) else []
    try:
        roots = msgspec.convert(listed, list[str])
    except msgspec.ValidationError as exc:
        raise InvalidQueryParameters(f"{storage_file}: storage_roots: {exc}") from None
    storages = load_entries(storage_file, "storages", StorageEntry)
    places = [place_of(entry.storage_interface, entry.root_directory, entry.config) for entry in storages]
    return roots + [place.root for place in places if place.kind == "local"]


def storage_confinement(settings: Settings) -> Confinement:
    """Where this DLM lets storages be: DLM_STORAGE_ROOTS plus what the operator's storage file allows."""
    return Confinement.from_settings(settings, allowed_roots(settings.storage_config))


async def seed(
    session: AsyncSession, *, location_file: str | None, storage_file: str | None, confinement: Confinement
) -> list[str]:
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
                    confinement=confinement,
                    storage_name=entry.storage_name,
                    storage_type=entry.storage_type,
                    storage_interface=entry.storage_interface,
                    root_directory=entry.root_directory,
                    location_name=entry.location_name,
                    storage_capacity=entry.storage_capacity,
                    storage_phase=entry.storage_phase,
                    storage_config=entry.config,
                    # The operator's file: created even if not reachable yet (MinIO may start after DLM).
                    check=False,
                )
                done.append(f"created storage {entry.storage_name}")
            elif entry.config and await service.latest_config(session, existing.storage_id) != entry.config:
                await service.create_storage_config(
                    session, config=entry.config, storage_id=str(existing.storage_id), confinement=confinement
                )
                done.append(f"updated the config of storage {entry.storage_name}")
    return done
