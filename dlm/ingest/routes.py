"""/ingest: SKA-DLM's ingest manager, plus bulk registration."""

from typing import Any

from litestar import Response, Router, post
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromQuery, JSONBody
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.api import Authorization, OptionalByteCount, UuidQuery, json_response, owner_of_new_items, provide_session


def _replicate_soon(state: State) -> BackgroundTask | None:
    """New READY items may be below their target phase: this process's replication pass looks at once
    (after the response, so after the registration committed), not at its next interval."""
    loops = state.get("engine_loops")
    return BackgroundTask(loops.nudge, "replication") if loops is not None else None


from dlm.auth import Principal
from dlm.auth.policy import permission
from dlm.data_item import ItemInit, convert_body
from dlm.enums import ItemType, Phase, Role
from dlm.errors import InvalidQueryParameters
from dlm.ingest import service
from dlm.parsing import parse_datetime


@post(
    "/init_data_item",
    operation_id="init_data_item",
    **permission(Role.INGEST, ska=True),
    summary="Init Data Item",
    description="Create an INITIALISED data_item; finish the ingest with set_uri then set_state(READY). "
    "item_name or json_data (columns of the new item, e.g. item_name, oid for a further replica) is required. "
    "DLM addition: json_data with item_state READY, uri and storage_id creates the replica READY at once if its "
    "payload is there (and, for a further replica, has the size of the item's others); the same payload "
    "announced again returns the existing replica's uid.",
    status_code=200,
)
async def init_data_item(
    session: NamedDependency[AsyncSession],
    state: State,
    principal: NamedDependency[Principal],
    item_name: FromQuery[str | None] = None,
    uid_phase: FromQuery[Phase] = Phase.GAS,
    data: JSONBody[dict[str, Any] | None] = None,
    authorization: Authorization = None,
) -> Response[str]:
    init = convert_body(data, ItemInit, "json_data", null_means_default=True)
    uid = await service.init_item(
        session,
        item_name=item_name,
        uid_phase=uid_phase,
        init=init,
        owner=owner_of_new_items(principal),
        group=state.settings.default_group,
        principal=principal,
    )
    return json_response(str(uid))


@post(
    "/register_data_item",
    operation_id="register_data_item",
    **permission(Role.INGEST, ska=True),
    summary="Register Data Item",
    description="Register a payload that already exists on a storage as a READY data_item, in one call: "
    "checks the storage and (unless do_storage_access_check=false) the payload, refuses a second registration "
    "of the same item_name on the same storage, records size (and crc32c for small files) and stores the "
    "metadata body with uid and item_name added. Returns the uid. DLM addition: register_members=true with a "
    "container also registers every file inside it as an item named <item_name>/<path>, its parents the "
    "container, all in the same transaction. The item is owned by the caller (its token's subject) unless "
    "item_owner names its owner.",
    status_code=200,
)
async def register_data_item(
    session: NamedDependency[AsyncSession],
    state: State,
    principal: NamedDependency[Principal],
    item_name: FromQuery[str],
    uri: FromQuery[str],
    item_type: FromQuery[ItemType] = ItemType.FILE,
    target_phase: FromQuery[Phase] = Phase.SOLID,
    uid_expiration: FromQuery[str | None] = None,
    oid_expiration: FromQuery[str | None] = None,
    storage_name: FromQuery[str] = "",
    storage_id: UuidQuery = "",
    parents: FromQuery[str | None] = None,
    item_size: OptionalByteCount = None,
    decompressed_size: OptionalByteCount = None,
    do_storage_access_check: FromQuery[bool] = True,
    register_members: FromQuery[bool] = False,
    item_owner: FromQuery[str | None] = None,
    data: JSONBody[dict[str, Any] | None] = None,
    authorization: Authorization = None,
) -> Response[str]:
    if not item_name.strip():
        raise InvalidQueryParameters("item_name: must not be empty")
    registration = service.ItemRegistration(
        item_name=item_name,
        uri=uri,
        storage_name=storage_name,
        storage_id=storage_id,
        item_type=item_type,
        target_phase=target_phase,
        uid_expiration=parse_datetime(uid_expiration, "uid_expiration") if uid_expiration else None,
        oid_expiration=parse_datetime(oid_expiration, "oid_expiration") if oid_expiration else None,
        parents=parents or None,
        item_size=item_size,
        decompressed_size=decompressed_size,
        do_storage_access_check=do_storage_access_check,
        metadata=data,
        item_owner=item_owner or None,
    )
    options = {"checksum_max_bytes": state.settings.register_checksum_max_bytes, "extractors": state.extractors}
    owner = owner_of_new_items(principal)
    uid = await service.register_item(session, registration, owner=owner, group=state.settings.default_group, **options)
    if register_members:
        await service.register_members(session, uid, **options)
    return json_response(str(uid), background=_replicate_soon(state))


@post(
    "/register_data_items",
    operation_id="register_data_items",
    **permission(Role.INGEST),
    summary="Register Data Items (bulk)",
    description="DLM addition. Register many payloads in one transaction, all or nothing. The body is a JSON "
    "list of objects with register_data_item's parameters (item_name, uri, storage_name or storage_id, ...) "
    "and an optional metadata object. Returns the new uids in the order given. At most 100,000 entries and "
    "64 MiB per call.",
    status_code=200,
    request_max_body_size=service.MAX_BULK_BYTES,
)
async def register_data_items(
    session: NamedDependency[AsyncSession],
    state: State,
    principal: NamedDependency[Principal],
    data: JSONBody[list[dict[str, Any]]],
) -> Response[list[str]]:
    registrations = await service.read_registrations(data)
    uids = await service.register_items(
        session,
        registrations,
        checksum_max_bytes=state.settings.register_checksum_max_bytes,
        extractors=state.extractors,
        owner=owner_of_new_items(principal),
        group=state.settings.default_group,
    )
    return json_response([str(uid) for uid in uids], background=_replicate_soon(state))


router = Router(
    path="/ingest",
    route_handlers=[init_data_item, register_data_item, register_data_items],
    dependencies={"session": Provide(provide_session)},
    tags=["ingest"],
)
