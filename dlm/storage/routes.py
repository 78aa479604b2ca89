"""/storage: locations, storages and their configs, usage, and payload deletion."""

from typing import Any

from litestar import Response, Router, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromQuery, JSONBody
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.api import json_response, provide_session
from dlm.enums import ConfigType, LocationCountry, LocationType, Phase, StorageInterface, StorageType
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


@post("/create_storage_config", operation_id="create_storage_config", summary="Create Storage Config", status_code=200)
async def create_storage_config(
    session: NamedDependency[AsyncSession],
    data: JSONBody[dict[str, Any]],
    storage_id: FromQuery[str] = "",
    storage_name: FromQuery[str] = "",
    config_type: FromQuery[ConfigType] = ConfigType.RCLONE,
) -> Response[bytes]:
    """Validate and store a config for a storage (rclone's remote format for config_type rclone); it
    supersedes the storage's earlier configs. Returns the config_id."""
    config_id = await service.create_storage_config(
        session, config=data, storage_id=storage_id, storage_name=storage_name, config_type=config_type
    )
    return json_response(str(config_id))


@get("/get_storage_config", operation_id="get_storage_config", summary="Get Storage Config")
async def get_storage_config(
    session: NamedDependency[AsyncSession],
    storage_id: FromQuery[str] = "",
    storage_name: FromQuery[str] = "",
    config_type: FromQuery[ConfigType] = ConfigType.RCLONE,
) -> list[dict[str, Any]]:
    """A storage's configs, newest first. Secrets (keys, passwords, tokens) are shown as ``***``."""
    return await service.get_storage_configs(
        session, storage_id=storage_id, storage_name=storage_name, config_type=config_type
    )


@post("/rclone_config", operation_id="create_rclone_config", summary="Create Rclone Config", status_code=200)
async def rclone_config(session: NamedDependency[AsyncSession], data: JSONBody[dict[str, Any]]) -> Response[bytes]:
    """Validate an rclone remote (``{"name", "type", "parameters"}``) and store it as the config of the
    storage it is named after. DLM copies natively, so no rclone daemon is involved."""
    return json_response(await service.register_rclone_remote(session, data))


@get("/get_ssh_public_key", operation_id="get_ssh_public_key", summary="Get Ssh Public Key")
async def get_ssh_public_key(state: State) -> Response[bytes]:
    """The SSH public key DLM presents to SFTP storages (``DLM_SSH_PUBLIC_KEY_FILE``)."""
    return json_response(service.ssh_public_key(state.settings.ssh_public_key_file))


@get("/storage_usage", operation_id="storage_usage", summary="Storage Usage")
async def storage_usage(
    session: NamedDependency[AsyncSession], storage_name: FromQuery[str] = "", storage_id: FromQuery[str] = ""
) -> list[dict[str, Any]]:
    """DLM addition. Per storage: capacity, bytes and replicas DLM holds there, and for POSIX storages
    the file system's total and free bytes."""
    return await service.storage_usage(session, storage_name=storage_name, storage_id=storage_id)


@get("/query_storage_events", operation_id="query_storage_events", summary="Query Storage Events")
async def query_storage_events(
    session: NamedDependency[AsyncSession],
    storage_name: FromQuery[str] = "",
    storage_id: FromQuery[str] = "",
    after_event_id: FromQuery[int] = 0,
) -> list[dict[str, Any]]:
    """DLM addition. What the lifecycle engines reported about storages, oldest first: a storage that
    stays above its high watermark (capacity_exceeded) and its return below it (capacity_relieved).
    One storage's by name or id, or every storage's; page with after_event_id."""
    return row_dicts(
        await service.query_storage_events(
            session, storage_name=storage_name, storage_id=storage_id, after_event_id=after_event_id
        )
    )


@post(
    "/delete_data_item_payload",
    operation_id="delete_data_item_payload",
    summary="Delete Data Item Payload",
    status_code=200,
)
async def delete_data_item_payload(
    session: NamedDependency[AsyncSession], uid: FromQuery[str], force: FromQuery[bool] = False
) -> list[dict[str, Any]]:
    """DLM addition. Delete one replica's payload and mark it DELETED (the row stays as the trace),
    with its registered children on the same storage if it is a container. Refused when the item
    would fall below its target_phase before it expires, unless force=true."""
    return row_dicts(await service.delete_payload(session, uid=uid, force=force))


router = Router(
    path="/storage",
    route_handlers=[
        query_location_facility,
        init_location,
        query_location,
        init_storage,
        query_storage,
        create_storage_config,
        get_storage_config,
        rclone_config,
        get_ssh_public_key,
        storage_usage,
        query_storage_events,
        delete_data_item_payload,
    ],
    dependencies={"session": Provide(provide_session)},
    tags=["storage"],
)
