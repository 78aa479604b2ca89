"""/storage: locations, storages and their configs, usage, and payload deletion."""

from typing import Annotated, Any

from litestar import Response, Router, get, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromQuery, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.api import MAX_BIGINT, EventId, OptionalUuidQuery, UuidQuery, json_response, provide_session
from dlm.auth import Principal
from dlm.auth.policy import permission
from dlm.enums import ConfigType, LocationCountry, LocationType, Phase, Role, StorageInterface, StorageType
from dlm.rows import row_dict, row_dicts
from dlm.sites import service as sites
from dlm.storage import service


@get(
    "/query_location_facility",
    operation_id="query_location_facility",
    **permission(Role.READER, ska=True),
    summary="Query Location Facility",
)
async def query_location_facility(session: NamedDependency[AsyncSession]) -> list[str]:
    """The facilities a location may name."""
    return await service.query_location_facilities(session)


@post(
    "/init_location",
    operation_id="init_location",
    **permission(Role.ADMIN, ska=True),
    summary="Init Location",
    status_code=200,
)
async def init_location(
    session: NamedDependency[AsyncSession],
    location_name: FromQuery[str],
    location_type: FromQuery[LocationType],
    location_country: FromQuery[LocationCountry | None] = None,
    location_city: FromQuery[str] = "",
    location_facility: FromQuery[str] = "",
) -> Response[str]:
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


@get("/query_location", operation_id="query_location", **permission(Role.READER, ska=True), summary="Query Location")
async def query_location(
    session: NamedDependency[AsyncSession],
    location_name: FromQuery[str] = "",
    location_id: UuidQuery = "",
) -> list[dict[str, Any]]:
    """Locations by name or id; with neither, the first 1000."""
    return row_dicts(await service.query_locations(session, location_name=location_name, location_id=location_id))


@post(
    "/init_storage",
    operation_id="init_storage",
    **permission(Role.ADMIN, ska=True),
    summary="Init Storage",
    status_code=200,
)
async def init_storage(
    session: NamedDependency[AsyncSession],
    state: State,
    storage_name: FromQuery[str],
    storage_type: FromQuery[StorageType],
    root_directory: FromQuery[str],
    storage_interface: FromQuery[StorageInterface],
    location_id: OptionalUuidQuery = None,
    location_name: FromQuery[str | None] = None,
    storage_capacity: Annotated[int, QueryParameter(ge=-1, le=MAX_BIGINT, description="bytes; -1: no limit")] = -1,
    storage_phase: FromQuery[Phase] = Phase.GAS,
    check: FromQuery[bool] = True,
    data: JSONBody[dict[str, Any] | None] = None,
) -> Response[str]:
    """Create a storage volume at a location (location_id or location_name); the optional body is its
    configuration in rclone's remote format, or (SKA-DLM's other form, when it has a storage_name) the
    storage's whole row, whose values then stand for the query's. DLM checks it can reach the storage
    now (an S3 bucket must exist; check=false skips this). Returns the storage_id."""
    if data is not None and "storage_name" in data:
        row = service.ska_storage_row(data)
        storage_name, storage_type, storage_interface = row.storage_name, row.storage_type, row.storage_interface
        root_directory, location_name = row.root_directory, row.location_name
        location_id = str(row.location_id) if row.location_id else None
        storage_capacity, storage_phase, data = row.storage_capacity, row.storage_phase, None
    storage_id = await service.init_storage(
        session,
        confinement=state.confinement,
        storage_name=storage_name,
        storage_type=storage_type,
        storage_interface=storage_interface,
        root_directory=root_directory,
        location_id=location_id or "",
        location_name=location_name or "",
        storage_capacity=storage_capacity,
        storage_phase=storage_phase,
        storage_config=data,
        check=check,
    )
    return json_response(str(storage_id))


@patch("/update_storage", operation_id="update_storage", summary="Update Storage", **permission(Role.ADMIN))
async def update_storage(
    session: NamedDependency[AsyncSession],
    storage_name: FromQuery[str] = "",
    storage_id: UuidQuery = "",
    storage_available: FromQuery[bool | None] = None,
    storage_phase: FromQuery[Phase | None] = None,
    storage_capacity: Annotated[
        int | None, QueryParameter(ge=-1, le=MAX_BIGINT, description="bytes; -1: no limit")
    ] = None,
    storage_permissions: FromQuery[str | None] = None,
    retire: FromQuery[bool | None] = None,
    reachable_from: FromQuery[str | None] = None,
    max_transfers: Annotated[
        int | None, QueryParameter(ge=0, le=10_000, description="copies at once; 0: no limit")
    ] = None,
) -> dict[str, Any]:
    """DLM addition. Change a storage: whether it is available, its phase (its replicas' uid_phase
    follows), its capacity, its permissions (R or RW). retire=true starts retiring it: it takes no new
    replicas, phase enforcement copies what it holds elsewhere and removes it there, and once it holds
    nothing it is retired for good; retire=false calls a retirement in progress off. reachable_from:
    the locations (comma-separated names; * for all) whose workers reach it directly; empty for the
    default (POSIX: its own location; S3, SFTP: any). max_transfers: the copies reading from or writing
    to it at once (a worker's batch of small files is one; 0: no limit). Returns the storage."""
    row = await service.update_storage(
        session,
        storage_name=storage_name,
        storage_id=storage_id,
        available=storage_available,
        phase=storage_phase,
        capacity=storage_capacity,
        permissions=storage_permissions,
        retire=retire,
        reachable_from=reachable_from,
        max_transfers=max_transfers,
    )
    return row_dict(row._mapping)


@get("/query_storage", operation_id="query_storage", **permission(Role.READER, ska=True), summary="Query Storage")
async def query_storage(
    session: NamedDependency[AsyncSession], storage_name: FromQuery[str] = "", storage_id: UuidQuery = ""
) -> list[dict[str, Any]]:
    """Storages by name (preferred) or id; with neither, the first 1000."""
    return row_dicts(await service.query_storages(session, storage_name=storage_name, storage_id=storage_id))


@post(
    "/create_storage_config",
    operation_id="create_storage_config",
    **permission(Role.ADMIN, ska=True),
    summary="Create Storage Config",
    status_code=200,
)
async def create_storage_config(
    session: NamedDependency[AsyncSession],
    state: State,
    data: JSONBody[dict[str, Any]],
    storage_id: UuidQuery = "",
    storage_name: FromQuery[str] = "",
    config_type: FromQuery[ConfigType] = ConfigType.RCLONE,
) -> Response[str]:
    """Validate and store a config for a storage (rclone's remote format for config_type rclone); it
    supersedes the storage's earlier configs. Returns the config_id."""
    config_id = await service.create_storage_config(
        session,
        config=data,
        storage_id=storage_id,
        storage_name=storage_name,
        config_type=config_type,
        confinement=state.confinement,
    )
    return json_response(str(config_id))


@get(
    "/get_storage_config",
    operation_id="get_storage_config",
    **permission(Role.ADMIN, ska=True),
    summary="Get Storage Config",
)
async def get_storage_config(
    session: NamedDependency[AsyncSession],
    storage_id: UuidQuery = "",
    storage_name: FromQuery[str] = "",
    config_type: FromQuery[ConfigType] = ConfigType.RCLONE,
) -> list[dict[str, Any]]:
    """A storage's configs, newest first, showing only the fields known not to be secret (endpoints
    without credentials, regions, hosts, ...); everything else is ``***``. With neither storage_name
    nor storage_id, every storage's (up to 1000), as in SKA-DLM."""
    return await service.get_storage_configs(
        session, storage_id=storage_id, storage_name=storage_name, config_type=config_type
    )


@post(
    "/rclone_config",
    operation_id="create_rclone_config",
    **permission(Role.ADMIN, ska=True),
    summary="Create Rclone Config",
    status_code=200,
)
async def rclone_config(
    session: NamedDependency[AsyncSession], state: State, data: JSONBody[dict[str, Any]]
) -> Response[bool]:
    """Validate an rclone remote (``{"name", "type", "parameters"}``) and store it as the config of the
    storage it is named after. DLM copies natively, so no rclone daemon is involved."""
    return json_response(await service.register_rclone_remote(session, data, confinement=state.confinement))


@get(
    "/get_ssh_public_key",
    operation_id="get_ssh_public_key",
    **permission(Role.READER, ska=True),
    summary="Get Ssh Public Key",
)
async def get_ssh_public_key(state: State) -> Response[str]:
    """The SSH public key DLM presents to SFTP storages (``DLM_SSH_PUBLIC_KEY_FILE``)."""
    return json_response(service.ssh_public_key(state.settings.ssh_public_key_file))


@get("/storage_usage", operation_id="storage_usage", **permission(Role.READER), summary="Storage Usage")
async def storage_usage(
    session: NamedDependency[AsyncSession], storage_name: FromQuery[str] = "", storage_id: UuidQuery = ""
) -> list[dict[str, Any]]:
    """DLM addition. Per storage: capacity, bytes and replicas DLM holds there, and for POSIX storages
    the file system's total and free bytes."""
    return await service.storage_usage(session, storage_name=storage_name, storage_id=storage_id)


@get(
    "/query_storage_events",
    operation_id="query_storage_events",
    **permission(Role.READER),
    summary="Query Storage Events",
)
async def query_storage_events(
    session: NamedDependency[AsyncSession],
    storage_name: FromQuery[str] = "",
    storage_id: UuidQuery = "",
    after_event_id: EventId = 0,
) -> list[dict[str, Any]]:
    """DLM addition. A storage's history, oldest first: who created it (storage_created) and changed its
    config (config_changed), and what the lifecycle engines reported: a storage that stays above its
    high watermark (capacity_exceeded) and its return below it (capacity_relieved). One storage's by
    name or id, or every storage's; page with after_event_id."""
    return row_dicts(
        await service.query_storage_events(
            session, storage_name=storage_name, storage_id=storage_id, after_event_id=after_event_id
        )
    )


@post(
    "/delete_data_item_payload",
    operation_id="delete_data_item_payload",
    **permission(Role.OPERATOR),
    summary="Delete Data Item Payload",
    status_code=200,
)
async def delete_data_item_payload(
    session: NamedDependency[AsyncSession],
    principal: NamedDependency[Principal],
    uid: UuidQuery,
    force: FromQuery[bool] = False,
) -> list[dict[str, Any]]:
    """DLM addition. Delete one replica's payload and mark it DELETED (the row stays as the trace),
    with its registered children on the same storage if it is a container. Refused when the item
    would fall below its target_phase before it expires, or when the storage is read-only, unless
    force=true (which needs the admin role)."""
    if force:
        principal.require(Role.ADMIN, "delete_data_item_payload with force=true")
    return row_dicts(await service.delete_payload(session, uid=uid, force=force))


@post(
    "/set_location_link",
    operation_id="set_location_link",
    **permission(Role.ADMIN),
    summary="Set Location Link",
    status_code=200,
)
async def set_location_link(
    session: NamedDependency[AsyncSession],
    source_location: FromQuery[str],
    destination_location: FromQuery[str],
    max_transfers: Annotated[int | None, QueryParameter(ge=1, le=10_000)] = None,
    max_bytes_per_second: Annotated[int | None, QueryParameter(ge=1, le=MAX_BIGINT)] = None,
) -> dict[str, Any]:
    """DLM addition. Limit the copies from one location to another: max_transfers at once (each worker's
    copy or batch is one), max_bytes_per_second in all (shared evenly by the transfers it allows). Neither
    given removes the link's limits. Returns the link with its running and queued copies."""
    return await sites.set_link(
        session,
        source_location=source_location,
        destination_location=destination_location,
        max_transfers=max_transfers,
        max_bytes_per_second=max_bytes_per_second,
    )


@get(
    "/query_location_links",
    operation_id="query_location_links",
    **permission(Role.READER),
    summary="Query Location Links",
)
async def query_location_links(session: NamedDependency[AsyncSession]) -> list[dict[str, Any]]:
    """DLM addition. Each pair of locations with limits or copies under way: max_transfers,
    max_bytes_per_second, the transfers running on it and the copies queued for it."""
    return await sites.query_links(session)


@get("/query_workers", operation_id="query_workers", **permission(Role.READER), summary="Query Workers")
async def query_workers(session: NamedDependency[AsyncSession]) -> list[dict[str, Any]]:
    """DLM addition. The DLM processes running copy workers now, by the location they run at (null:
    anywhere): how many processes, how many copies at once, when last heard from."""
    return await sites.query_workers(session)


router = Router(
    path="/storage",
    route_handlers=[
        query_location_facility,
        init_location,
        query_location,
        init_storage,
        update_storage,
        query_storage,
        create_storage_config,
        get_storage_config,
        rclone_config,
        get_ssh_public_key,
        storage_usage,
        query_storage_events,
        delete_data_item_payload,
        set_location_link,
        query_location_links,
        query_workers,
    ],
    dependencies={"session": Provide(provide_session)},
    tags=["storage"],
)
