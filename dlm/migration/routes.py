"""/migration: SKA-DLM's migration manager, with copies that DLM runs itself, plus cancel and retry."""

from typing import Annotated, Any

from litestar import Response, Router, get, post
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromQuery, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.api import MAX_BIGINT, Authorization, OptionalUuidQuery, UuidQuery, owner_of_new_items, provide_session
from dlm.auth import Principal
from dlm.auth.policy import permission
from dlm.enums import MigrationStatus, Role
from dlm.migration import service
from dlm.rows import row_dict, row_dicts

MigrationId = Annotated[int, QueryParameter(ge=1, le=MAX_BIGINT, description="the migration's id")]


def _only_own(principal: Principal) -> str | None:
    """Operators see every migration; anyone else only those they queued."""
    return None if principal.may(Role.OPERATOR) else principal.subject


def _wake_workers(state: State) -> BackgroundTask | None:
    """Runs after the response, so after the job's transaction committed and a worker can see it."""
    workers = state.get("migration_workers")
    return BackgroundTask(workers.wake) if workers is not None else None


@post(
    "/copy_data_item",
    operation_id="copy_data_item",
    **permission(Role.OPERATOR, ska=True),
    summary="Copy Data Item",
    status_code=200,
    description="Queue a verified copy of an item (by uid, oid or item_name) to another storage, at `path` "
    "(default: the source's uri). Returns at once with the new replica's uid (INITIALISED until the copy is "
    "verified, then READY) and the migration_id to follow the copy with get_migration. DLM addition: asking "
    "again for a copy already made or under way (same item, destination and path) answers with that copy.",
)
async def copy_data_item(
    session: NamedDependency[AsyncSession],
    state: State,
    principal: NamedDependency[Principal],
    item_name: FromQuery[str] = "",
    oid: UuidQuery = "",
    uid: UuidQuery = "",
    destination_name: FromQuery[str] = "",
    destination_id: UuidQuery = "",
    path: FromQuery[str] = "",
    authorization: Authorization = None,
) -> Response[dict[str, Any]]:
    target = {"item_name": item_name, "oid": oid, "uid": uid, "path": path}
    destination = {"destination_name": destination_name, "destination_id": destination_id}
    return await _queue(session, state, principal, move=False, **target, **destination)


async def _queue(
    session: AsyncSession, state: State, principal: Principal, *, move: bool, force: bool = False, **target: str
) -> Response[dict[str, Any]]:
    # In open mode nobody in particular queues it: the copy keeps SKA-DLM's default user.
    queued_by = {"user": owner} if (owner := owner_of_new_items(principal)) else {}
    result = await service.copy_item(session, **target, **queued_by, move=move, force=force)
    return Response(result, background=_wake_workers(state))


@post(
    "/move_data_item",
    operation_id="move_data_item",
    **permission(Role.OPERATOR),
    summary="Move Data Item",
    status_code=200,
    description="DLM addition. As copy_data_item, and once the copy is verified and READY the source replica "
    "is deleted in the same job: the item is never without a READY replica, and the source goes only as a "
    "deletion would: a move that would leave the item below its target phase, or whose source is on a "
    "read-only storage, is refused before anything is copied (force=true, for admins, moves anyway). Should "
    "the source still not go at the end, the copy stands and the migration's last_error says why. Cancel and "
    "retry as for copies.",
)
async def move_data_item(
    session: NamedDependency[AsyncSession],
    state: State,
    principal: NamedDependency[Principal],
    item_name: FromQuery[str] = "",
    oid: UuidQuery = "",
    uid: UuidQuery = "",
    destination_name: FromQuery[str] = "",
    destination_id: UuidQuery = "",
    path: FromQuery[str] = "",
    force: FromQuery[bool] = False,
) -> Response[dict[str, Any]]:
    if force:
        principal.require(Role.ADMIN, "move_data_item with force=true")
    target = {"item_name": item_name, "oid": oid, "uid": uid, "path": path}
    destination = {"destination_name": destination_name, "destination_id": destination_id}
    return await _queue(session, state, principal, move=True, force=force, **target, **destination)


@get(
    "/query_migrations",
    operation_id="query_migrations",
    **permission(Role.READER, ska=True),
    summary="Query Migrations",
)
async def query_migrations(
    session: NamedDependency[AsyncSession],
    principal: NamedDependency[Principal],
    start_date: FromQuery[str | None] = None,
    end_date: FromQuery[str | None] = None,
    storage_id: OptionalUuidQuery = None,
    authorization: Authorization = None,
    status: FromQuery[MigrationStatus | None] = None,
    item_name: FromQuery[str] = "",
    offset: Annotated[int, QueryParameter(ge=0, le=MAX_BIGINT)] = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=service.MAX_ROWS)] = service.MAX_ROWS,
) -> list[dict[str, Any]]:
    """Migrations created on or after start_date, completed by end_date (YYYY-MM-DD or YYYYMMDD, or a
    full ISO 8601 time), from or to storage_id; newest first, at most 1000. DLM additions: status,
    item_name (the item's copies), and paging with offset and limit. Below the operator role, only
    the caller's own."""
    rows = await service.query_migrations(
        session,
        start_date=start_date,
        end_date=end_date,
        storage_id=storage_id,
        user=_only_own(principal),
        status=status,
        item_name=item_name,
        offset=offset,
        limit=limit,
    )
    return row_dicts(rows)


@get(
    "/get_migration",
    operation_id="get_migration_record",
    **permission(Role.READER, ska=True),
    summary="Get Migration Record",
)
async def get_migration(
    session: NamedDependency[AsyncSession], principal: NamedDependency[Principal], migration_id: MigrationId
) -> list[dict[str, Any]]:
    """The migration as a one-row list (empty when there is none, or when it is another's and the caller
    is below the operator role): status, bytes_done of bytes_total, attempts, last_error, and job_stats
    once it succeeded."""
    return row_dicts(await service.get_migration(session, migration_id, user=_only_own(principal)))


@post(
    "/cancel_migration",
    operation_id="cancel_migration",
    **permission(Role.OPERATOR),
    summary="Cancel Migration",
    status_code=200,
)
async def cancel_migration(session: NamedDependency[AsyncSession], migration_id: MigrationId) -> dict[str, Any]:
    """DLM addition. Stop a PENDING or RUNNING copy; its destination replica becomes DELETED and any
    payload it wrote is removed."""
    return row_dict((await service.cancel_migration(session, migration_id))._mapping)


@post(
    "/retry_migration",
    operation_id="retry_migration",
    **permission(Role.OPERATOR),
    summary="Retry Migration",
    status_code=200,
)
async def retry_migration(
    session: NamedDependency[AsyncSession], state: State, migration_id: MigrationId
) -> Response[dict[str, Any]]:
    """DLM addition. Queue a FAILED or CANCELLED migration again, to a fresh destination replica."""
    result = await service.retry_migration(session, migration_id)
    return Response(result, background=_wake_workers(state))


router = Router(
    path="/migration",
    route_handlers=[copy_data_item, move_data_item, query_migrations, get_migration, cancel_migration, retry_migration],
    dependencies={"session": Provide(provide_session)},
    tags=["migration"],
)
