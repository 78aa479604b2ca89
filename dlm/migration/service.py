"""Copies of data items between storages, as durable jobs in the ``migration`` table.

``copy_item`` only records the job and the destination replica (INITIALISED); a worker
(``dlm.migration.worker``) in any DLM process claims it and moves the bytes. The replica becomes
READY only once the copy has been verified, so a reader never sees a replica that is not there.
"""

import datetime
import logging
import uuid
from typing import Any

import msgspec
from sqlalchemy import ARRAY, Row, Select, String, any_, cast, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.data_item import ITEMS, change_items, create_items, item_selector, new_uids
from dlm.db.models import Migration, Storage
from dlm.enums import ItemState, ItemType, MigrationStatus
from dlm.errors import Conflict, DLMError, InvalidQueryParameters, NotFound, UnmetPreconditionForOperation
from dlm.parsing import parse_datetime, parse_uuid, shift
from dlm.sites.service import Links
from dlm.storage.service import (
    check_resilience,
    is_writable,
    latest_config,
    lock_item,
    lock_replicas,
    refuse_new_payloads,
    resolve_storage,
    storage_backend,
)
from dlm.transfer.backends import READING_COST, place_of
from dlm.transfer.base import TransferError
from dlm.transfer.paths import canonical_uri, payload_key

log = logging.getLogger("dlm.migration")

MAX_ROWS = 1000
ACTIVE = (MigrationStatus.PENDING, MigrationStatus.RUNNING)

# What a further replica shares with the item it copies; the rest (uid, storage, uri, state, phase,
# replica expiry, checksum until verified) is the new replica's own.
_ITEM_COLUMNS = (
    "oid",
    "item_version",
    "item_name",
    "item_tags",
    "item_value",
    "item_type",
    "item_format",
    "item_encoding",
    "item_mime_type",
    "item_level",
    "target_phase",
    "oid_creation",
    "oid_expiration",
    "checksum_method",
    "item_owner",
    "item_group",
    "acl",
    "activate_method",
    "item_size",
    "decompressed_size",
    "compression_method",
    "parents",
    "children",
    "metadata",
)


def replica_values(source: Row[Any], *, storage: Storage, uri: str, state: ItemState) -> dict[str, Any]:
    """Column values of a new replica of ``source`` at ``uri`` on ``storage``."""
    values = {column: getattr(source, column) for column in _ITEM_COLUMNS}
    values.update(
        uid=uuid.uuid4(),
        storage_id=storage.storage_id,
        uri=uri,
        item_state=state,
        uid_phase=storage.storage_phase,
        oid_phase=source.oid_phase,
    )
    return values


async def pick_source(
    session: AsyncSession, *, item_name: str = "", oid: str = "", uid: str = "", to: Storage | None = None
) -> Row[Any]:
    """The READY replica to copy from: the one named by uid, else the cheapest of the item's (for an
    item_name, its newest version's) on an available storage: for a copy ``to`` a storage, by the link
    to it (one a worker can carry, not over a full link, the least loaded, the nearest: dlm.sites),
    then a local file system before an object store before SFTP (a uid breaks the tie, so the choice
    is stable)."""
    query = (
        select(ITEMS, Storage)
        .join(Storage, Storage.storage_id == ITEMS.c.storage_id)
        .where(item_selector(item_name=item_name, oid=oid, uid=uid))
        .order_by(
            ITEMS.c.item_version.desc(),
            (ITEMS.c.item_state == ItemState.READY).desc(),
            Storage.storage_available.desc(),
            ITEMS.c.uid,
        )
    )
    candidates = (await session.execute(query)).all()
    named = f"uid {uid}" if uid else f"oid {oid}" if oid else f"item_name {item_name!r}"
    if not candidates:
        raise NotFound(f"{named}: no replica with a payload on a storage")
    best = candidates[0]
    if best.item_state is not ItemState.READY:
        raise UnmetPreconditionForOperation(f"{named}: replica {best.uid} is {best.item_state.value}, not READY")
    equals = [
        row
        for row in candidates
        if (row.item_version, row.item_state, row.Storage.storage_available)
        == (best.item_version, best.item_state, best.Storage.storage_available)
    ]
    links = await Links.load(session) if to is not None and len(equals) > 1 else None
    costs = {
        row.uid: (links.cost(row.Storage, to) if links and to else (), await _reading_cost(session, row.Storage))
        for row in equals
    }
    # The replica's columns, and its Storage beside them.
    return min(equals, key=lambda row: (costs[row.uid], row.uid))


async def _reading_cost(session: AsyncSession, storage: Storage) -> int:
    try:
        config = await latest_config(session, storage.storage_id)
        return READING_COST[place_of(storage.storage_interface, storage.root_directory, config).kind]
    except DLMError:
        return max(READING_COST.values()) + 1


async def _existing_copy(
    session: AsyncSession, source: Row[Any], destination: Storage, uri: str, *, reuse: bool
) -> dict[str, Any] | None:
    """With ``reuse``, the answer to a copy that was already made or queued: the same item to the same
    destination and path, READY there or on its way, by a migration (the lifecycle engine's or an earlier
    request's). A caller retrying a request whose answer it lost, or asking for what the engine just did,
    gets that copy instead of an error. Anything else already there is a Conflict."""
    existing = (
        await session.execute(
            select(ITEMS.c.uid, ITEMS.c.uri, ITEMS.c.item_state).where(
                ITEMS.c.item_name == source.item_name,
                ITEMS.c.storage_id == destination.storage_id,
                ITEMS.c.item_state != ItemState.DELETED,
            )
        )
    ).first()
    if existing is None:
        return None
    made_by = await session.scalar(
        select(Migration.migration_id)
        .where(
            Migration.oid == source.oid,
            Migration.destination_uid == existing.uid,
            Migration.status.in_([MigrationStatus.SUCCEEDED] if existing.item_state is ItemState.READY else ACTIVE),
        )
        .order_by(Migration.migration_id.desc())
        .limit(1)
    )
    if made_by is None or not reuse or payload_key(existing.uri) != payload_key(uri):
        raise Conflict(
            f"destination: {destination.storage_name!r} already holds replica {existing.uid} of {source.item_name!r}"
        )
    return {"uid": str(existing.uid), "migration_id": made_by}


async def _check_destination(
    session: AsyncSession, source: Row[Any], destination: Storage, uri: str, *, reuse: bool
) -> dict[str, Any] | None:
    """Refuse a copy that may not be made; the copy already made or queued if there is one."""
    refuse_new_payloads(destination, "destination")
    if not is_writable(destination):
        raise UnmetPreconditionForOperation(f"destination: storage {destination.storage_name!r} is read-only")
    if destination.storage_id == source.storage_id:
        raise InvalidQueryParameters(
            f"destination: the item already lives on {destination.storage_name!r}; choose another storage"
        )
    if (existing := await _existing_copy(session, source, destination, uri, reuse=reuse)) is not None:
        return existing
    key = payload_key(uri)
    nesting = (
        await session.execute(
            select(ITEMS.c.item_name, ITEMS.c.uri).where(
                ITEMS.c.storage_id == destination.storage_id,
                ITEMS.c.item_state != ItemState.DELETED,
                func.starts_with(key, func.ltrim(ITEMS.c.uri, "/") + "/")
                | func.starts_with(func.ltrim(ITEMS.c.uri, "/"), key + "/"),
                # A member may go back into its own container's READY replica (a repair).
                ~((ITEMS.c.oid == source.parents) & (ITEMS.c.item_state == ItemState.READY)),
            )
        )
    ).first()
    if nesting is not None:
        # A member travels with its container's copy; two copies into one tree would collide.
        inside = payload_key(nesting.uri).startswith(key + "/")
        raise Conflict(
            f"path: {uri!r} {'contains' if inside else 'lies inside'} {nesting.uri!r} on "
            f"{destination.storage_name!r}, the payload of {nesting.item_name!r}; a container's members "
            "travel with its copy (choose another path)"
        )
    async with await storage_backend(session, destination) as backend:
        found = await backend.stat(uri)
        if found is None:
            return None
        if found.is_container and source.item_type is ItemType.CONTAINER:
            # A container goes into an empty directory as rclone's copy does (SKA copies to a directory
            # made for it); one holding files DLM does not manage is not merged into: the replica would
            # then own them, and deleting it would take them too.
            foreign = await anext(aiter(backend.walk(uri)), None)
            if foreign is None:
                return None
            raise Conflict(
                f"path: {uri!r} on {destination.storage_name!r} is a directory holding files DLM does not "
                f"manage ({foreign.path!r}); a container is copied into an empty directory or a new path"
            )
        raise Conflict(
            f"path: {uri!r} already exists on {destination.storage_name!r}; DLM will not overwrite "
            "a payload it does not manage (choose another path)"
        )


async def copy_item(
    session: AsyncSession,
    *,
    item_name: str = "",
    oid: str = "",
    uid: str = "",
    destination_name: str = "",
    destination_id: str = "",
    path: str = "",
    user: str = "SKA",
    move: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Queue a verified copy of an item to another storage; returns the new replica's uid and the
    migration_id to follow it by. ``path`` (relative to the destination root) defaults to the source's uri.
    With ``move``, the source replica is deleted once the copy is READY (as a user's deletion is: never
    below the item's resilience unless ``force``, never on a read-only storage); a move whose source
    could not go is refused before anything is copied."""
    if not (item_name or oid or uid):
        raise InvalidQueryParameters("one of item_name, oid, uid is required")
    if not (destination_name or destination_id):
        raise InvalidQueryParameters("one of destination_name, destination_id is required")
    try:
        destination = await resolve_storage(session, storage_name=destination_name, storage_id=destination_id)
    except NotFound:
        await pick_source(session, item_name=item_name, oid=oid, uid=uid)  # a missing item is named first
        raise
    source = await pick_source(session, item_name=item_name, oid=oid, uid=uid, to=destination)
    # Whether this copy is made or queued already is decided by one transaction at a time: a user's
    # request racing the replication engine's pass for the same item waits for it, then finds its copy.
    await lock_item(session, source.oid)
    uri = canonical_uri(path, "path") if path else source.uri
    # A move is not a copy already made: its source must still go.
    if (existing := await _check_destination(session, source, destination, uri, reuse=not move)) is not None:
        return existing
    if move:
        await _check_source_may_go(session, source, destination, force=force)
    [replica_uid] = await create_items(
        session, [replica_values(source, storage=destination, uri=uri, state=ItemState.INITIALISED)]
    )
    migration = Migration(
        oid=source.oid,
        source_uid=source.uid,
        destination_uid=replica_uid,
        source_storage_id=source.storage_id,
        destination_storage_id=destination.storage_id,
        user=user,
        bytes_total=source.item_size,
        job_status={"finished": False, "success": False, "error": ""},
        move=move,
        move_force=move and force,
    )
    session.add(migration)
    await session.flush()
    return {"uid": str(replica_uid), "migration_id": migration.migration_id}


class CopyPlan(msgspec.Struct, frozen=True):
    """One copy a lifecycle engine wants: ``source`` (a READY replica's row) to ``destination`` at
    ``uri`` (the source's own uri by default)."""

    source: Any
    destination: Storage
    uri: str = ""


async def queue_copies(
    session: AsyncSession, plans: list[CopyPlan], *, user: str = "SKA"
) -> list[dict[str, Any] | str]:
    """Queue many copies in a few statements, as ``copy_item`` queues one and checking what it checks,
    set-wise: per destination one lookup of the paths and the directories on their way (an index
    probe each) and one look at the storage (``stat_many``: one thread hop, one listing); then every
    replica in one INSERT and every job in another. Returns, per plan, ``{"uid", "migration_id"}`` or
    why it was refused (the others go ahead). Containers, whose trees need the full check, are queued
    one by one through ``copy_item``."""
    results: list[dict[str, Any] | str] = ["" for _ in plans]
    accepted: list[tuple[int, str]] = []  # (plan index, uri)
    by_destination: dict[uuid.UUID, list[tuple[int, str]]] = {}
    for index, plan in enumerate(plans):
        uri = plan.uri or plan.source.uri
        try:
            if plan.source.item_type is ItemType.CONTAINER:
                async with session.begin_nested():
                    results[index] = await copy_item(
                        session, uid=str(plan.source.uid), destination_id=str(plan.destination.storage_id),
                        path=plan.uri, user=user,
                    )  # fmt: skip
                continue
            refuse_new_payloads(plan.destination, "destination")
            if not is_writable(plan.destination):
                raise UnmetPreconditionForOperation(
                    f"destination: storage {plan.destination.storage_name!r} is read-only"
                )
            if plan.destination.storage_id == plan.source.storage_id:
                raise InvalidQueryParameters("destination: the item already lives there")
        except (DLMError, TransferError) as exc:
            results[index] = exc.message
            continue
        by_destination.setdefault(plan.destination.storage_id, []).append((index, uri))
    for storage_id, wanted in by_destination.items():
        destination = plans[wanted[0][0]].destination
        keys = {index: payload_key(uri) for index, uri in wanted}
        # The path itself and the directories on its way: none may be another live replica's payload
        # (a member may go back into its own container's READY replica: a repair).
        probes = {key for key in keys.values()} | {parent for key in keys.values() for parent in _parents(key)}
        held = {
            row.key: row
            for row in await session.execute(
                select(
                    func.ltrim(ITEMS.c.uri, "/").label("key"), ITEMS.c.oid, ITEMS.c.item_state, ITEMS.c.item_name
                ).where(
                    ITEMS.c.storage_id == storage_id,
                    ITEMS.c.item_state != ItemState.DELETED,
                    func.ltrim(ITEMS.c.uri, "/") == any_(cast(sorted(probes), ARRAY(String))),  # one parameter
                )
            )
        }
        seen: set[str] = set()
        candidates = []
        for index, uri in wanted:
            key, source = keys[index], plans[index].source
            clash = next(
                (
                    held[probe]
                    for probe in (key, *_parents(key))
                    if probe in held
                    and not (held[probe].oid == source.parents and held[probe].item_state is ItemState.READY)
                ),
                None,
            )
            if clash is not None or key in seen:
                results[index] = (
                    f"path: {uri!r} on {destination.storage_name!r} is taken or lies inside another payload"
                )
                continue
            seen.add(key)
            candidates.append((index, uri))
        if not candidates:
            continue
        try:
            async with await storage_backend(session, destination) as backend:
                found = await backend.stat_many([uri for _, uri in candidates])
        except (DLMError, TransferError) as exc:
            for index, _ in candidates:
                results[index] = getattr(exc, "message", str(exc))
            continue
        for (index, uri), info in zip(candidates, found, strict=True):
            if info is not None:
                results[index] = (
                    f"path: {uri!r} already exists on {destination.storage_name!r}; DLM will not overwrite a "
                    "payload it does not manage"
                )
            else:
                accepted.append((index, uri))
    if not accepted:
        return results
    # The new replicas and their jobs made by PostgreSQL from the sources' rows: one JSON parameter of
    # (new uid, source, where) whatever their number, no row built in Python.
    planned = [
        {
            "uid": uid,
            "source": plans[index].source.uid,
            "storage_id": plans[index].destination.storage_id,
            "uri": uri,
            "uid_phase": plans[index].destination.storage_phase,
        }
        for (index, uri), uid in zip(accepted, new_uids(len(accepted)), strict=True)
    ]
    document = msgspec.json.encode(planned).decode()
    await session.execute(text(_REPLICAS_OF), {"plan": document})
    queued = (await session.execute(text(_JOBS_FOR), {"plan": document, "user": user})).all()
    by_replica = {row.destination_uid: row.migration_id for row in queued}
    for (index, _), row in zip(accepted, planned, strict=True):
        results[index] = {"uid": str(row["uid"]), "migration_id": by_replica[row["uid"]]}
    return results


_PLAN = (
    "jsonb_to_recordset(CAST(:plan AS jsonb)) AS p(uid uuid, source uuid, storage_id uuid, uri text, uid_phase text)"
)
# What ``replica_values`` gives a new replica: the item's columns from its source, its own place.
_REPLICAS_OF = f"""
    INSERT INTO data_item (uid, storage_id, uri, item_state, uid_phase, oid_phase, {", ".join(_ITEM_COLUMNS)})
    SELECT p.uid, p.storage_id, p.uri, 'INITIALISED', CAST(p.uid_phase AS phase_type), s.oid_phase,
           {", ".join(f"s.{column}" for column in _ITEM_COLUMNS)}
    FROM {_PLAN} JOIN data_item AS s ON s.uid = p.source
"""
_JOBS_FOR = f"""
    INSERT INTO migration (oid, source_uid, destination_uid, source_storage_id, destination_storage_id, "user",
                           bytes_total, job_status)
    SELECT s.oid, s.uid, p.uid, s.storage_id, p.storage_id, CAST(:user AS text), s.item_size,
           CAST('{{"finished": false, "success": false, "error": ""}}' AS jsonb)
    FROM {_PLAN} JOIN data_item AS s ON s.uid = p.source
    RETURNING destination_uid, migration_id
"""


def _parents(key: str) -> list[str]:
    """The directories a payload key lies in: ``a/b/c`` -> ``a``, ``a/b``."""
    parts = key.split("/")[:-1]
    return ["/".join(parts[: count + 1]) for count in range(len(parts))]


async def _check_source_may_go(session: AsyncSession, source: Row[Any], destination: Storage, *, force: bool) -> None:
    """A move's last step, asked before its first: could the source replica go once the copy is READY
    (the resilience rule, a read-only storage)? Refused now rather than after copying terabytes."""
    source_storage = source.Storage
    if not is_writable(source_storage):
        raise UnmetPreconditionForOperation(
            f"source: storage {source_storage.storage_name!r} is read-only, so a move could not remove the "
            "source replica; copy the item instead"
        )
    if force:
        return
    replicas = list((await session.execute(select(ITEMS).where(ITEMS.c.oid == source.oid))).all())
    # The item as it will stand: its replicas and the copy, READY at the destination's phase.
    planned = [*replicas, _PlannedReplica(uid=None, item_state=ItemState.READY, uid_phase=destination.storage_phase)]
    try:
        check_resilience(source, planned, datetime.datetime.now(datetime.UTC))
    except UnmetPreconditionForOperation:
        raise UnmetPreconditionForOperation(
            f"destination: moving {source.item_name!r} to {destination.storage_name!r} ({destination.storage_phase.value}) "
            f"would leave it below its target_phase {source.target_phase.value} once the source is removed; copy it "
            "instead, or an admin passes force=true"
        ) from None


class _PlannedReplica(msgspec.Struct, frozen=True):
    uid: uuid.UUID | None
    item_state: ItemState
    uid_phase: Any


def with_item_names(query: Select[Any]) -> Select[Any]:
    """``query`` over copies, with the name of each copy's item beside it (its source replica's)."""
    name = select(ITEMS.c.item_name).where(ITEMS.c.uid == Migration.source_uid).scalar_subquery()
    return query.add_columns(name.label("item_name"))


async def query_migrations(
    session: AsyncSession,
    *,
    start_date: str | None = None,
    end_date: str | None = None,
    storage_id: str | None = None,
    user: str | None = None,
    status: MigrationStatus | None = None,
    item_name: str = "",
    offset: int = 0,
    limit: int = MAX_ROWS,
) -> list[Row[Any]]:
    """Migrations created on or after ``start_date``, completed on or before ``end_date``, from or to
    ``storage_id``, queued by ``user``, in ``status``, of the item named ``item_name``; newest first,
    ``limit`` of them after the first ``offset``."""
    query = (
        select(Migration.__table__).order_by(Migration.migration_id.desc()).offset(offset).limit(min(limit, MAX_ROWS))
    )
    if user is not None:
        query = query.where(Migration.user == user)
    if status is not None:
        query = query.where(Migration.status == status)
    if item_name:
        query = query.where(Migration.oid.in_(select(ITEMS.c.oid).where(ITEMS.c.item_name == item_name)))
    if start_date:
        query = query.where(Migration.date >= parse_datetime(start_date, "start_date"))
    if end_date:
        end = parse_datetime(end_date, "end_date")
        if len(end_date.strip()) in (8, 10):  # a date alone means the whole of that day
            end = shift(end, datetime.timedelta(days=1), "end_date")
        query = query.where(Migration.completion_date < end)
    if storage_id:
        storage = parse_uuid(storage_id, "storage_id")
        query = query.where((Migration.source_storage_id == storage) | (Migration.destination_storage_id == storage))
    return list((await session.execute(with_item_names(query))).all())


async def get_migration(session: AsyncSession, migration_id: int, *, user: str | None = None) -> list[Row[Any]]:
    """The migration as a one-row list; empty when there is none (or, given ``user``, none of theirs)."""
    query = select(Migration.__table__).where(Migration.migration_id == migration_id)
    if user is not None:
        query = query.where(Migration.user == user)
    return list((await session.execute(query)).all())


async def _lock_migration(session: AsyncSession, migration_id: int) -> Migration:
    migration = await session.scalar(select(Migration).where(Migration.migration_id == migration_id).with_for_update())
    if migration is None:
        raise NotFound(f"migration_id {migration_id} does not exist")
    return migration


async def discard_destination(session: AsyncSession, migration: Migration, *, remove_payload: bool = True) -> None:
    """Mark the destination replica DELETED (if it is not already) and remove whatever payload reached
    the destination, unless another live replica has since taken that path (or ``remove_payload`` is
    false: what is there is not the copy's)."""
    if migration.destination_uid is None:
        return
    # Every writer locks an item's replicas in one order (by uid) before changing any: copies of one item
    # failing together used to lock their own replica first and then deadlock refreshing the others.
    await lock_replicas(session, migration.oid)
    replica = (await session.execute(select(ITEMS).where(ITEMS.c.uid == migration.destination_uid))).first()
    if replica is None:
        return
    if replica.item_state is not ItemState.DELETED:
        await change_items(session, ITEMS.c.uid == replica.uid, {"item_state": ItemState.DELETED})
    if not replica.uri or not remove_payload:
        return
    taken = await session.scalar(
        select(ITEMS.c.uid).where(
            ITEMS.c.storage_id == migration.destination_storage_id,
            func.ltrim(ITEMS.c.uri, "/") == payload_key(replica.uri),
            ITEMS.c.item_state != ItemState.DELETED,
        )
    )
    storage = await session.get(Storage, migration.destination_storage_id)
    if taken is not None or storage is None:
        return
    try:
        async with await storage_backend(session, storage) as backend:
            await backend.delete(replica.uri)
    except (TransferError, DLMError) as exc:
        # The rows say DELETED either way, and the job's outcome must be recorded whatever is at that path
        # (an unreachable storage, a symlink planted there); the audit reports a payload left behind.
        log.warning("migration %s: could not remove %r: %s", migration.migration_id, replica.uri, exc)


async def cancel_migration(session: AsyncSession, migration_id: int) -> Row[Any]:
    """Stop a PENDING or RUNNING copy. Its destination replica becomes DELETED; a worker copying it
    notices within a heartbeat and stops, and what reached the destination is removed."""
    migration = await _lock_migration(session, migration_id)
    if migration.status not in ACTIVE:
        raise UnmetPreconditionForOperation(
            f"migration_id {migration_id}: {migration.status.value}; "
            "only PENDING or RUNNING migrations can be cancelled"
        )
    now = datetime.datetime.now(datetime.UTC)
    copying = (
        migration.status is MigrationStatus.RUNNING
        and migration.lease_expires is not None
        and migration.lease_expires > now
    )
    if copying:
        # The worker owns the destination until it sees the cancellation; it cleans up itself.
        await lock_replicas(session, migration.oid)
        await change_items(session, ITEMS.c.uid == migration.destination_uid, {"item_state": ItemState.DELETED})
    else:
        await discard_destination(session, migration)
    values: dict[str, Any] = {
        "status": MigrationStatus.CANCELLED,
        "complete": True,
        "completion_date": now,
        "last_error": "cancelled",
        "job_status": {"finished": True, "success": False, "error": "cancelled"},
    }
    if not copying:
        values["lease_owner"] = values["lease_expires"] = None
    return await set_migration(session, migration_id, **values)


async def retry_migration(session: AsyncSession, migration_id: int) -> dict[str, Any]:
    """Run a FAILED or CANCELLED migration again, to a fresh destination replica."""
    migration = await _lock_migration(session, migration_id)
    if migration.status not in (MigrationStatus.FAILED, MigrationStatus.CANCELLED):
        raise UnmetPreconditionForOperation(
            f"migration_id {migration_id}: {migration.status.value}; only FAILED or CANCELLED migrations can be retried"
        )
    now = datetime.datetime.now(datetime.UTC)
    if migration.lease_owner is not None and migration.lease_expires is not None and migration.lease_expires > now:
        raise Conflict(
            f"migration_id {migration_id}: its worker is still stopping and removing what it wrote; retry in a moment"
        )
    source = await pick_source(session, uid=str(migration.source_uid))
    destination = await session.get(Storage, migration.destination_storage_id)
    assert destination is not None  # a foreign key
    old_uri = await session.scalar(select(ITEMS.c.uri).where(ITEMS.c.uid == migration.destination_uid))
    uri = old_uri or source.uri
    await _check_destination(session, source, destination, uri, reuse=False)
    [replica_uid] = await create_items(
        session, [replica_values(source, storage=destination, uri=uri, state=ItemState.INITIALISED)]
    )
    await set_migration(
        session,
        migration_id,
        status=MigrationStatus.PENDING,
        destination_uid=replica_uid,
        complete=False,
        completion_date=None,
        attempts=0,
        bytes_done=0,
        last_error=None,
        next_attempt_at=datetime.datetime.now(datetime.UTC),
        lease_owner=None,
        lease_expires=None,
        job_status={"finished": False, "success": False, "error": ""},
        job_stats=None,
    )
    return {"uid": str(replica_uid), "migration_id": migration_id}


async def set_migration(session: AsyncSession, migration_id: int, **values: Any) -> Row[Any]:
    """Change columns of one migration; returns its row as it now is."""
    statement = (
        update(Migration)
        .where(Migration.migration_id == migration_id)
        .values(**values)
        .returning(*Migration.__table__.c)
    )
    return (await session.execute(statement)).one()
