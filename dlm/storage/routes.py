"""/storage: locations and storages (the part of SKA-DLM's storage manager that registration needs)."""

from typing import Any

from litestar import Response, Router, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromQuery, JSONBody
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.api import json_response, provide_session
from dlm.enums import LocationCountry, LocationType, Phase, StorageInterface, StorageType
from dlm.rows import row_dicts
from dlm.storage import service


@get("/query_location_facility", operation_id="query_location_facility", summary="Query Location Facility")
async def query_location_facility(session: NamedDependency[AsyncSession]) -> list[str]:
    """The facilities a location may name."""
    return await service.query_location_facilities(session)


@post("/init_location", operation_id="init_location", summary="Init Location", status_code=200)
async def init_location(
    session: NamedDependency[AsyncSession],
    location_name: FromQuery[str],
    location_type: FromQuery[LocationType],
    location_country: FromQuery[LocationCountry | None] = None,
    location_city: FromQuery[str] = "",
    location_facility: FromQuery[str] = "",
) -> Response[bytes]:
    """Create a location (a site) for storages; returns its location_id."""
    location_id = await service.init_location(
        session,
        location_name=location_name,
        location_type=location_type,
        location_country=location_country,
        location_city=location_city,
        location_facility=location_facility,
    )
    return json_response(str(location_id))


@get("/query_location", operation_id="query_location", summary="Query Location")
async def query_location(
    session: NamedDependency[AsyncSession],
    location_name: FromQuery[str] = "",
    location_id: FromQuery[str] = "",
) -> list[dict[str, Any]]:
    """Locations by name or id; with neither, the first 1000."""
    return row_dicts(await service.query_locations(session, location_name=location_name, location_id=location_id))


@post("/init_storage", operation_id="init_storage", summary="Init Storage", status_code=200)
async def init_storage(
    session: NamedDependency[AsyncSession],
    storage_name: FromQuery[str],
    storage_type: FromQuery[StorageType],
    root_directory: FromQuery[str],
    storage_interface: FromQuery[StorageInterface],
    location_id: FromQuery[str | None] = None,
    location_name: FromQuery[str | None] = None,
    storage_capacity: FromQuery[int] = -1,
    storage_phase: FromQuery[Phase] = Phase.GAS,
    data: JSONBody[dict[str, Any] | None] = None,
) -> Response[bytes]:
    """Create a storage volume at a location (location_id or location_name); the optional body is its
    configuration in rclone's remote format. Returns the storage_id."""
    storage_id = await service.init_storage(
        session,
        storage_name=storage_name,
        storage_type=storage_type,
        storage_interface=storage_interface,
        root_directory=root_directory,
        location_id=location_id or "",
        location_name=location_name or "",
        storage_capacity=storage_capacity,
        storage_phase=storage_phase,
        storage_config=data,
    )
    return json_response(str(storage_id))


@get("/query_storage", operation_id="query_storage", summary="Query Storage")
async def query_storage(
    session: NamedDependency[AsyncSession], storage_name: FromQuery[str] = "", storage_id: FromQuery[str] = ""
) -> list[dict[str, Any]]:
    """Storages by name (preferred) or id; with neither, the first 1000."""
    return row_dicts(await service.query_storages(session, storage_name=storage_name, storage_id=storage_id))


router = Router(
    path="/storage",
    route_handlers=[query_location_facility, init_location, query_location, init_storage, query_storage],
    dependencies={"session": Provide(provide_session)},
    tags=["storage"],
)
