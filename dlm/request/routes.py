"""/request: SKA-DLM's request manager (queries and item setters), plus the item history."""

import base64
import datetime
from email.utils import format_datetime
from typing import Annotated, Any

from litestar import Request, Response, Router, get, head, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, JSONBody, QueryParameter
from litestar.response import Stream
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.api import MAX_BIGINT, EventId, UuidQuery, json_response, json_rows, provide_session
from dlm.auth.policy import permission
from dlm.auth.principal import Principal
from dlm.enums import ItemState, MigrationStatus, Phase, Role
from dlm.parsing import parse_datetime, parse_duration, parse_enum
from dlm.request import delivery, retrieve, service, setters
from dlm.request.filters import MAX_PAGE_SIZE
from dlm.rows import row_dict, row_dicts

Rows = list[dict[str, Any]]
Item = dict[str, Any]
PARAMS_DESCRIPTION = (
    "PostgREST-style filters on any data_item column, AND-ed: `item_state=eq.READY&uid_expiration=lt.2026-01-01"
    "&item_name=like.*ms&storage_id=in.(id1,id2)&order=uid_creation.desc&limit=100&offset=0` (or the same as a "
    "JSON object). Operators: eq, neq, gt, gte, lt, lte, like, ilike (* is the wildcard), in.(…), is.null, "
    "cs.{json} for JSON columns, each optionally prefixed by not. Page size: 1000 at most."
)


@get("/query_data_item", operation_id="query_data_item", **permission(Role.READER, ska=True), summary="Query Data Item")
async def query_data_item(
    session: NamedDependency[AsyncSession],
    item_name: FromQuery[str] = "",
    oid: UuidQuery = "",
    uid: UuidQuery = "",
    storage_id: UuidQuery = "",
    params: Annotated[str | None, QueryParameter(description=PARAMS_DESCRIPTION)] = None,
) -> Response[Rows]:
    """Query data_items by item_name, oid, uid, storage_id and params filters; with none, the first 1000."""
    statement = service.query_items(item_name=item_name, oid=oid, uid=uid, storage_id=storage_id, params=params)
    return await json_rows(session, statement)


@patch(
    "/update_data_item",
    operation_id="update_data_item",
    **permission(Role.INGEST, ska=True),
    summary="Update Data Item",
)
async def update_data_item(
    session: NamedDependency[AsyncSession],
    principal: NamedDependency[Principal],
    item_name: FromQuery[str] = "",
    oid: UuidQuery = "",
    uid: UuidQuery = "",
    data: JSONBody[dict[str, Any] | None] = None,
) -> Item:
    """Change columns (the JSON body) of the data_items named by uid, oid or item_name; returns the first."""
    rows = await setters.update_items(session, item_name=item_name, oid=oid, uid=uid, changes=data, principal=principal)
    return row_dict(rows[0]._mapping)


@patch("/set_uri", operation_id="set_uri", **permission(Role.INGEST, ska=True), summary="Set Uri")
async def set_uri(
    session: NamedDependency[AsyncSession],
    principal: NamedDependency[Principal],
    state: State,
    uid: UuidQuery,
    uri: FromQuery[str],
    storage_id: UuidQuery,
) -> Item:
    """Set where a data_item's payload is: its storage and its path relative to the storage root. DLM
    addition: the payload must be there; its size (and crc32c for small files) are recorded, and must be
    those of the item's other READY replicas."""
    row = await setters.set_uri(
        session,
        uid=uid,
        uri=uri,
        storage_id=storage_id,
        principal=principal,
        checksum_max_bytes=state.settings.register_checksum_max_bytes,
    )
    return row_dict(row._mapping)


@patch("/set_metadata", operation_id="set_metadata", **permission(Role.INGEST, ska=True), summary="Set Metadata")
async def set_metadata(
    session: NamedDependency[AsyncSession],
    principal: NamedDependency[Principal],
    uid: UuidQuery,
    data: JSONBody[dict[str, Any] | None] = None,
) -> Item:
    """Replace the metadata (a JSON object) of a data_item."""
    return row_dict((await setters.set_metadata(session, uid=uid, metadata=data, principal=principal))._mapping)


@patch("/set_state", operation_id="set_state", **permission(Role.INGEST, ska=True), summary="Set State")
async def set_state(
    session: NamedDependency[AsyncSession],
    principal: NamedDependency[Principal],
    uid: UuidQuery,
    new_state: Annotated[ItemState, QueryParameter(name="state")],  # `state` is a reserved name in Litestar
) -> Item:
    """Move a data_item to another state; only legal transitions are accepted."""
    return row_dict((await setters.set_state(session, uid=uid, state=new_state, principal=principal))._mapping)


@patch(
    "/set_oid_expiration",
    operation_id="set_oid_expiration",
    **permission(Role.INGEST, ska=True),
    summary="Set Oid Expiration",
)
async def set_oid_expiration(
    session: NamedDependency[AsyncSession],
    principal: NamedDependency[Principal],
    oid: UuidQuery,
    expiration: FromQuery[str],
) -> Item:
    """Set when the item (all replicas of the oid) expires. ISO 8601; no offset means UTC."""
    moment = parse_datetime(expiration, "expiration")
    rows = await setters.set_oid_expiration(session, oid=oid, expiration=moment, principal=principal)
    return row_dict(rows[0]._mapping)


@patch(
    "/set_uid_expiration",
    operation_id="set_uid_expiration",
    **permission(Role.INGEST, ska=True),
    summary="Set Uid Expiration",
)
async def set_uid_expiration(
    session: NamedDependency[AsyncSession],
    principal: NamedDependency[Principal],
    uid: UuidQuery,
    expiration: FromQuery[str],
) -> Item:
    """Set when one replica expires. ISO 8601; no offset means UTC."""
    moment = parse_datetime(expiration, "expiration")
    row = await setters.set_uid_expiration(session, uid=uid, expiration=moment, principal=principal)
    return row_dict(row._mapping)


@patch("/set_user", operation_id="set_user", **permission(Role.INGEST, ska=True), summary="Set User")
async def set_user(
    session: NamedDependency[AsyncSession],
    principal: NamedDependency[Principal],
    oid: UuidQuery = "",
    uid: UuidQuery = "",
    user: FromQuery[str] = "SKA",
) -> Item:
    """Set the owner of a replica (uid) or of every replica of an item (oid). DLM addition: below operator,
    only the item's owner may; a bare name is an identity provider's user (`oidc:<name>`), an API token's
    holder is `token:<name>`."""
    row = await setters.set_owner_field(session, oid=oid, uid=uid, column="item_owner", value=user, principal=principal)
    return row_dict(row._mapping)


@patch("/set_group", operation_id="set_group", **permission(Role.INGEST, ska=True), summary="Set Group")
async def set_group(
    session: NamedDependency[AsyncSession],
    principal: NamedDependency[Principal],
    oid: UuidQuery = "",
    uid: UuidQuery = "",
    group: FromQuery[str] = "SKA",
) -> Item:
    """Set the group of a replica (uid) or of every replica of an item (oid)."""
    row = await setters.set_owner_field(
        session, oid=oid, uid=uid, column="item_group", value=group, principal=principal
    )
    return row_dict(row._mapping)


@patch("/set_acl", operation_id="set_acl", **permission(Role.INGEST, ska=True), summary="Set Acl")
async def set_acl(
    session: NamedDependency[AsyncSession],
    principal: NamedDependency[Principal],
    oid: UuidQuery = "",
    uid: UuidQuery = "",
    acl: FromQuery[str] = "{}",
) -> Item:
    """Set the access control list (a JSON object) of a replica (uid) or of every replica of an item (oid)."""
    acl_value = setters.parse_acl(acl)
    row = await setters.set_owner_field(session, oid=oid, uid=uid, column="acl", value=acl_value, principal=principal)
    return row_dict(row._mapping)


@patch("/set_phase", operation_id="set_phase", **permission(Role.INGEST, ska=True), summary="Set Phase")
async def set_phase(
    session: NamedDependency[AsyncSession], principal: NamedDependency[Principal], uid: UuidQuery, phase: FromQuery[str]
) -> Item:
    """Set the phase the item must reach (its target_phase, on every replica); the replication engine acts
    on it. A replica's own uid_phase always follows its storage."""
    row = await setters.set_phase(session, uid=uid, phase=parse_enum(Phase, phase, "phase"), principal=principal)
    return row_dict(row._mapping)


@patch(
    "/update_item_tags",
    operation_id="update_item_tags",
    **permission(Role.INGEST, ska=True),
    summary="Update Item Tags",
)
async def update_item_tags(
    session: NamedDependency[AsyncSession],
    principal: NamedDependency[Principal],
    item_name: FromQuery[str] = "",
    oid: UuidQuery = "",
    data: JSONBody[dict[str, Any] | None] = None,
) -> Item:
    """Merge tags (the JSON body) into every replica of the item named by oid or item_name."""
    row = await setters.update_item_tags(session, item_name=item_name, oid=oid, item_tags=data, principal=principal)
    return row_dict(row._mapping)


@get("/query_expired", operation_id="query_expired", **permission(Role.READER, ska=True), summary="Query Expired")
async def query_expired(
    session: NamedDependency[AsyncSession],
    offset: Annotated[
        str | None, QueryParameter(description="ISO 8601 duration (PT1H) or seconds added to now: look ahead")
    ] = None,
) -> Response[Rows]:
    """Live data_items whose uid_expiration has passed (as of now + offset)."""
    duration = parse_duration(offset, "offset") if offset else None
    return await json_rows(session, service.query_expired(offset=duration))


@get("/query_deleted", operation_id="query_deleted", **permission(Role.READER, ska=True), summary="Query Deleted")
async def query_deleted(session: NamedDependency[AsyncSession], uid: UuidQuery = "") -> Response[Rows]:
    """Data_items in state DELETED (optionally just the one uid)."""
    return await json_rows(session, service.query_deleted(uid=uid))


@get("/query_new", operation_id="query_new", **permission(Role.READER, ska=True), summary="Query New")
async def query_new(
    session: NamedDependency[AsyncSession], check_date: FromQuery[str], uid: UuidQuery = ""
) -> Response[Rows]:
    """Data_items created after check_date (exclusive; ISO 8601, no offset means UTC)."""
    moment = parse_datetime(check_date, "check_date")
    return await json_rows(session, service.query_new(check_date=moment, uid=uid))


@get("/query_exists", operation_id="query_exists", **permission(Role.READER, ska=True), summary="Query Exists")
async def query_exists(
    session: NamedDependency[AsyncSession],
    item_name: FromQuery[str] = "",
    oid: UuidQuery = "",
    uid: UuidQuery = "",
    ready: FromQuery[bool] = False,
) -> Response[bool]:
    """Whether a data_item with this item_name, oid or uid exists (and is READY, if ready=true)."""
    return json_response(await service.item_exists(session, item_name=item_name, oid=oid, uid=uid, ready=ready))


@get(
    "/query_exist_and_ready",
    operation_id="query_exists_and_ready",
    **permission(Role.READER, ska=True),
    summary="Query Exists And Ready",
)
async def query_exist_and_ready(
    session: NamedDependency[AsyncSession],
    item_name: FromQuery[str] = "",
    oid: UuidQuery = "",
    uid: UuidQuery = "",
) -> Response[bool]:
    """Whether a READY data_item with this item_name, oid or uid exists."""
    return json_response(await service.item_exists(session, item_name=item_name, oid=oid, uid=uid, ready=True))


@get(
    "/query_item_storage",
    operation_id="query_item_storage",
    **permission(Role.READER, ska=True),
    summary="Query Item Storage",
)
async def query_item_storage(
    session: NamedDependency[AsyncSession],
    item_name: FromQuery[str] = "",
    oid: UuidQuery = "",
    uid: UuidQuery = "",
) -> Rows:
    """The storages holding READY replicas of an item, one row per replica."""
    return row_dicts(await service.query_item_storage(session, item_name=item_name, oid=oid, uid=uid))


@get("/query_item_history", operation_id="query_item_history", **permission(Role.READER), summary="Query Item History")
async def query_item_history(
    session: NamedDependency[AsyncSession],
    item_name: FromQuery[str] = "",
    oid: UuidQuery = "",
    uid: UuidQuery = "",
    after_event_id: EventId = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_SIZE)] = MAX_PAGE_SIZE,
) -> Rows:
    """DLM addition. The trace of an item: every change of state, phase, uri, storage or expiry, with who
    made it and when, oldest first. uid: one replica; oid or item_name: all replicas of the item(s)."""
    rows = await service.item_history(
        session, item_name=item_name, oid=oid, uid=uid, after_event_id=after_event_id, limit=limit
    )
    return row_dicts(rows)


# --- retrieval (DLM addition): the payload's bytes, back to whoever may read them ---

RETRIEVE_DESCRIPTION = (
    "DLM addition. The payload of an item (by uid, else oid, else item_name: its newest version), from its "
    "best READY replica (near=<location> first, then local file systems, object stores, SFTP, the least busy "
    "storage); a replica that fails mid-stream hands over to the next. A file answers with Content-Length, "
    "ETag, Last-Modified, X-DLM-Checksum (method=value) and Repr-Digest (for sha256), and honours a byte "
    "Range (206; 416 outside the payload); a container streams as a tar of its files. redirect=true answers "
    "307 to a presigned URL (15 minutes) when the best replica is in S3. Readers may read items they own, "
    "items whose acl lists them (or *) under read, and items without an acl; each retrieval is recorded in "
    "the item's history."
)
PRESIGNED_SECONDS = 15 * 60


async def _retrieval_response(
    request: Request[Any, Any, Any],
    session: AsyncSession,
    principal: Principal,
    *,
    item_name: str,
    oid: str,
    uid: str,
    near: str,
    redirect: bool,
    body: bool = True,
) -> Response[Any]:
    """The answer to GET (``body``) or HEAD: the same status and headers; only GET sends the bytes and
    is recorded in the history."""
    prepared = await retrieve.prepare(session, principal, item_name=item_name, oid=oid, uid=uid, near=near)
    prepared = await retrieve.present(session, prepared, flag=body)
    name = str(prepared.item["item_name"] or prepared.item["uid"]).rstrip("/").rsplit("/", 1)[-1]
    headers = {"etag": prepared.etag, "x-dlm-uid": prepared.sources[0].uid}
    if prepared.last_modified is not None:
        headers["last-modified"] = format_datetime(prepared.last_modified.astimezone(datetime.UTC), usegmt=True)
    if prepared.is_container:
        headers["content-disposition"] = retrieve.content_disposition(f"{name}.tar")
        if not body:
            return Response(b"", media_type="application/x-tar", headers=headers)
        await retrieve.record(session, principal, prepared, "the container as a tar")
        return Stream(retrieve.stream_tar(prepared), media_type="application/x-tar", headers=headers)
    size = prepared.size
    headers["accept-ranges"] = "bytes"
    headers["content-disposition"] = retrieve.content_disposition(name)
    checksum, method = prepared.item["item_checksum"], prepared.item["checksum_method"]
    if checksum and method and method.value != "none":
        headers["x-dlm-checksum"] = f"{method.value}={checksum}"
        if method.value == "sha256":
            headers["repr-digest"] = f"sha-256=:{base64.b64encode(bytes.fromhex(checksum)).decode()}:"
    if redirect and prepared.sources[0].kind == "s3":
        async with prepared.sources[0].backend() as backend:
            url = await backend.presigned_url(prepared.sources[0].uri, PRESIGNED_SECONDS)
        if body:
            await retrieve.record(session, principal, prepared, "a presigned URL")
        return Response(b"", status_code=307, headers={**headers, "location": url})
    if request.headers.get("if-range") not in (None, prepared.etag):
        wanted = None  # the payload changed since the client's partial copy: all of it again
    else:
        try:
            wanted = retrieve.parse_range(request.headers.get("range"), size)
        except retrieve.RangeNotSatisfiable as exc:
            return Response(
                {"exec": "RangeNotSatisfiable", "message": f"Range: {exc}"},
                status_code=416,
                headers={"content-range": f"bytes */{exc.size}"},
            )
    offset, length = wanted if wanted else (0, size)
    status = 206 if wanted else 200
    if wanted and size is not None:
        headers["content-range"] = f"bytes {offset}-{offset + (length or 0) - 1}/{size}"
    if length is not None:
        headers["content-length"] = str(length)
    if not body:
        return Response(b"", status_code=status, media_type="application/octet-stream", headers=headers)
    what = f"bytes {offset}-{offset + length - 1} of {size}" if wanted and length else f"{size} bytes"
    await retrieve.record(session, principal, prepared, what)
    return Stream(
        retrieve.stream_file(prepared, offset, length),
        status_code=status,
        media_type="application/octet-stream",
        headers=headers,
    )


READING = permission(Role.READER)


@get(
    "/retrieve",
    operation_id="retrieve",
    **{
        **READING,
        "opt": {**READING["opt"], "writes": True},  # the retrieval goes into the item's history
        "responses": {
            **READING["responses"],
            206: ResponseSpec(None, description="A byte range of the payload"),
            416: ResponseSpec(None, description="The Range lies outside the payload"),
        },
    },
    summary="Retrieve",
    description=RETRIEVE_DESCRIPTION,
)
async def retrieve_payload(
    request: Request[Any, Any, Any],
    session: NamedDependency[AsyncSession],
    principal: NamedDependency[Principal],
    item_name: FromQuery[str] = "",
    oid: UuidQuery = "",
    uid: UuidQuery = "",
    near: FromQuery[str] = "",
    redirect: FromQuery[bool] = False,
) -> Response[Any]:
    return await _retrieval_response(
        request, session, principal, item_name=item_name, oid=oid, uid=uid, near=near, redirect=redirect
    )


@head(
    "/retrieve",
    operation_id="retrieve_head",
    **permission(Role.READER),
    summary="Retrieve (headers only)",
    description="What GET /request/retrieve answers (status and headers: size, ETag, checksum), without the "
    "bytes and without a history entry.",
)
async def retrieve_headers(
    request: Request[Any, Any, Any],
    session: NamedDependency[AsyncSession],
    principal: NamedDependency[Principal],
    item_name: FromQuery[str] = "",
    oid: UuidQuery = "",
    uid: UuidQuery = "",
    near: FromQuery[str] = "",
    redirect: FromQuery[bool] = False,
) -> Response[None]:
    return await _retrieval_response(  # type: ignore[return-value]
        request, session, principal, item_name=item_name, oid=oid, uid=uid, near=near, redirect=redirect, body=False
    )


@post(
    "/deliver",
    operation_id="deliver",
    **permission(Role.READER),
    summary="Deliver",
    status_code=200,
    description="DLM addition. Ship a selection of items (body: items, a list of names, oids or uids, or params, a "
    'filter) to a destination (body.destination: {"s3": {bucket, prefix, endpoint, access_key_id, '
    'secret_access_key}}, or for operators {"storage_name", "path"} or {"posix": directory}) with '
    "body.packaging none, tar-per-container or tar. Every item must be readable by the caller (403 otherwise, "
    "nothing recorded); the destination must answer now. Returns the delivery_id at once; get_delivery follows "
    "it to its manifest. Inline credentials are sealed and never shown again.",
)
async def deliver(
    session: NamedDependency[AsyncSession],
    principal: NamedDependency[Principal],
    state: State,
    data: JSONBody[dict[str, Any] | None] = None,
) -> Response[dict[str, Any]]:
    return json_response(await delivery.create_delivery(session, principal, data, state.confinement))


@post(
    "/cancel_delivery",
    operation_id="cancel_delivery",
    **permission(Role.READER),
    summary="Cancel Delivery",
    status_code=200,
)
async def cancel_delivery(
    session: NamedDependency[AsyncSession],
    principal: NamedDependency[Principal],
    delivery_id: Annotated[int, QueryParameter(ge=1, le=MAX_BIGINT)],
) -> dict[str, Any]:
    """DLM addition. Cancel a PENDING or RUNNING delivery: a queued one is never shipped, a running one stops
    within seconds (at its next progress record) and removes what it wrote. Below operator, only your own deliveries."""
    return row_dict(await delivery.cancel_delivery(session, principal, delivery_id))


@get("/get_delivery", operation_id="get_delivery", **permission(Role.READER), summary="Get Delivery")
async def get_delivery(
    session: NamedDependency[AsyncSession],
    principal: NamedDependency[Principal],
    delivery_id: Annotated[int, QueryParameter(ge=1, le=MAX_BIGINT)],
) -> dict[str, Any]:
    """DLM addition. A delivery: status (PENDING, RUNNING, SUCCEEDED, FAILED), bytes_done of bytes_total, the
    items, and at the end the manifest (each item's size, checksum and where it went). Below the operator
    role, only the caller's own."""
    return row_dict(await delivery.get_delivery(session, principal, delivery_id))


@get("/query_deliveries", operation_id="query_deliveries", **permission(Role.READER), summary="Query Deliveries")
async def query_deliveries(
    session: NamedDependency[AsyncSession],
    principal: NamedDependency[Principal],
    status: FromQuery[MigrationStatus | None] = None,
    offset: Annotated[int, QueryParameter(ge=0, le=MAX_BIGINT)] = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=delivery.MAX_DELIVERIES)] = delivery.MAX_DELIVERIES,
) -> list[dict[str, Any]]:
    """DLM addition. Deliveries, newest first, optionally in one status, a page (limit, offset) at a time:
    each with its item_count and progress, not its items or manifest (get_delivery). Below the operator
    role, only the caller's own."""
    return await delivery.query_deliveries(session, principal, status=status, offset=offset, limit=limit)


router = Router(
    path="/request",
    route_handlers=[
        query_data_item,
        retrieve_payload,
        retrieve_headers,
        deliver,
        cancel_delivery,
        get_delivery,
        query_deliveries,
        update_data_item,
        set_uri,
        set_metadata,
        set_state,
        set_oid_expiration,
        set_uid_expiration,
        set_user,
        set_group,
        set_acl,
        set_phase,
        update_item_tags,
        query_expired,
        query_deleted,
        query_new,
        query_exists,
        query_exist_and_ready,
        query_item_storage,
        query_item_history,
    ],
    dependencies={"session": Provide(provide_session)},
    tags=["request"],
)
