"""Expiry: replicas past their ``uid_expiration`` and items past their ``oid_expiration`` lose their
payloads and become DELETED (the rows stay, as the trace).

A replica whose deletion would leave its item, itself not expired, below its ``target_phase`` is
kept, and the reason is recorded once in the item's history (event ``expiry_kept``); later passes
skip it until the item's other READY replicas could stand in for it, so that a catalogue of replicas
kept for their items does not cost a decision each per pass. Several DLM processes may run passes
at once: an item is claimed with the transaction-scoped advisory lock under which its replicas change
(dlm.storage.service.ITEM_LOCK), which a pass does not wait for but skips, a batch per transaction,
each item inside a savepoint so one storage's trouble does not undo the rest.

Deleting an expired item's replica takes two committed steps, DELETING and then DELETED once its
payload is gone, so a crash between them leaves rows that say their payload is going, never READY
rows whose bytes are gone: the next pass finishes them first. A batch's payloads are deleted while
the next batch is marked and the previous one recorded.
"""

import asyncio
import datetime
import logging
import uuid
from typing import Any

import msgspec
from sqlalchemy import Row, all_, any_, case, exists, func, or_, select, true, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.data_item import ITEMS, refresh_oid_phase
from dlm.db.engine import transaction
from dlm.db.models import DataItemEvent, Migration, Storage
from dlm.enums import ItemState, ItemType, MigrationStatus, Phase
from dlm.errors import DLMError, UnmetPreconditionForOperation
from dlm.lifecycle import claim_items, phase_weight
from dlm.storage.service import (
    ITEM_LOCK,
    check_resilience,
    delete_replica,
    is_writable,
    lock_replicas,
    storage_backend,
)
from dlm.transfer.base import TransferError

log = logging.getLogger("dlm.lifecycle.expiry")

ACTOR = "expiry"
KEPT_EVENT = "expiry_kept"


class Decision(msgspec.Struct, frozen=True):
    uid: uuid.UUID
    item_name: str | None
    reason: str


class ExpiryReport(msgspec.Struct, kw_only=True):
    """What one pass did (or, in a dry run, would do)."""

    dry_run: bool
    deleted: list[uuid.UUID] = msgspec.field(default_factory=list)
    kept: list[Decision] = msgspec.field(default_factory=list)
    # Not done this pass, to be tried again: a copy reading the replica, a storage not answering.
    deferred: list[Decision] = msgspec.field(default_factory=list)

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        return f"{verb} {len(self.deleted)}, kept {len(self.kept)}, deferred {len(self.deferred)}"


def _worth_deciding(now: datetime.datetime, replica: Any, already_kept: Any) -> Any:
    """Not an expired replica already kept for its item (``already_kept``: its ``expiry_kept`` is
    recorded) whose item's other READY replicas still fall short of its target_phase: nothing has
    changed for it since. The decision itself stays check_resilience's; this only spares a pass from
    repeating it. ``replica``: the candidates' columns."""
    others = ITEMS.alias("others")
    # Only the oid in the WHERE clause: with the state there too, a planner short of statistics (a
    # freshly loaded table) intersects the oid index with the item_state one, whose READY half is the
    # whole table, for every row scanned.
    is_another_ready = (others.c.uid != replica.c.uid) & (others.c.item_state == ItemState.READY)
    others_weight = (
        select(func.coalesce(func.sum(case((is_another_ready, phase_weight(others.c.uid_phase)), else_=0)), 0))
        .where(others.c.oid == replica.c.oid)
        .scalar_subquery()
    )
    return or_(
        replica.c.oid_expiration <= now,
        replica.c.item_state != ItemState.READY,
        ~already_kept,
        others_weight >= phase_weight(replica.c.target_phase),
    )


# A pass sweeps the replicas whose own expiry has passed, then those whose item's has, each in the
# order of its expiry index: asked for in that order with a LIMIT, the planner reads the index, however
# many rows its statistics guess (they count DELETED rows' old expiries: on a big catalogue the guess
# is a million, and a guess that size reads the table).
SWEEPS = (ITEMS.c.uid_expiration, ITEMS.c.oid_expiration)
# Replicas that are no candidates: gone, or going (a pass finishes those first).
GONE_OR_GOING = (ItemState.DELETED, ItemState.DELETING)
# Payload deletions per call to a storage, and how many such calls run at once per storage.
DELETE_BATCH = 1000
DELETES_AT_ONCE = 4


def _next_candidates(
    now: datetime.datetime, expiry: Any, after: tuple[datetime.datetime, uuid.UUID] | None, batch_size: int
) -> Any:
    """The next live replicas, after ``after`` in (expiry, uid) order, whose ``expiry`` has passed,
    each with whether it is worth deciding on."""
    candidates = select(
        ITEMS.c.uid,
        ITEMS.c.oid,
        ITEMS.c.oid_expiration,
        ITEMS.c.item_state,
        ITEMS.c.target_phase,
        expiry.label("due"),
    ).where(ITEMS.c.item_state.notin_(GONE_OR_GOING), expiry <= now)
    if after is not None:
        candidates = candidates.where(tuple_(expiry, ITEMS.c.uid) > tuple_(*after))
    page = candidates.order_by(expiry, ITEMS.c.uid).limit(batch_size).cte("page").prefix_with("MATERIALIZED")
    # Whether each was kept: looked up per replica (LATERAL … LIMIT 1), never by hashing every kept
    # replica's event, which the planner chose as an EXISTS and then did again for every page.
    kept = (
        select(DataItemEvent.uid)
        .where(DataItemEvent.uid == page.c.uid, DataItemEvent.event == KEPT_EVENT)
        .limit(1)
        .lateral("kept")
    )
    worth = _worth_deciding(now, page, kept.c.uid.is_not(None))
    return (
        select(page.c.uid, page.c.oid, page.c.oid_expiration, page.c.due, worth.label("worth_deciding"))
        .select_from(page.outerjoin(kept, true()))
        .order_by(page.c.due, page.c.uid)
    )


class Deleting:
    """One batch's payloads being deleted while the pass marks the next batch and records this one's
    predecessor: the disk and the database work at once, and the pass's own transactions still run one
    at a time (none of them waits for a row another holds)."""

    def __init__(self, rows: list[Row[Any]], payloads: "asyncio.Future[dict[uuid.UUID, str]]") -> None:
        self.rows, self.payloads = rows, payloads

    @classmethod
    async def next(
        cls,
        sessionmaker: async_sessionmaker[AsyncSession],
        report: ExpiryReport,
        previous: "Deleting | None",
        going: list[Row[Any]],
    ) -> "Deleting | None":
        """Wait for the previous batch's payloads, start on ``going``'s, and record the previous batch
        while they go."""
        failed = await previous.payloads if previous is not None else {}
        started = cls(going, asyncio.ensure_future(_delete_payloads(sessionmaker, going))) if going else None
        if previous is not None:
            try:
                await _record_deletions(sessionmaker, report, previous.rows, failed)
            except BaseException:
                if started is not None:
                    started.payloads.cancel()  # the pass stops here: the next one finishes them
                raise
        return started


async def run_once(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    now: datetime.datetime | None = None,
    dry_run: bool = False,
    batch_size: int = 1000,
) -> ExpiryReport:
    """One pass over everything expired at ``now`` (default: the present)."""
    now = now or datetime.datetime.now(datetime.UTC)
    report = ExpiryReport(dry_run=dry_run)
    if not dry_run:
        await finish_deletions(sessionmaker, report)  # what a pass that crashed had begun
    # Items this pass has dealt with; in a dry run, also the replicas it would have deleted.
    done: set[uuid.UUID] = set()
    gone: set[uuid.UUID] = set()
    deleting: Deleting | None = None
    try:
        for expiry in SWEEPS:
            after: tuple[datetime.datetime, uuid.UUID] | None = None
            while True:
                going: list[Row[Any]] = []
                async with transaction(sessionmaker, actor=ACTOR) as session:
                    candidates = (await session.execute(_next_candidates(now, expiry, after, batch_size))).all()
                    if not candidates:
                        break
                    after = (candidates[-1].due, candidates[-1].uid)
                    # Under SKA-DLM's rule a replica kept before is not kept now: each is decided again.
                    unconditional = bool(session.info.get("unconditional_deletion"))
                    batch = [row for row in candidates if row.worth_deciding or unconditional]
                    oids = [oid for oid in dict.fromkeys(row.oid for row in batch) if oid not in done]
                    # The lock under which an item's replicas change: the others are another process's, or
                    # a user's (a deletion, a copy finishing) now; they are left for the next pass.
                    claimed = await claim_items(session, ITEM_LOCK, oids)
                    done.update(claimed)
                    # An expired item loses everything: no decision per replica, so it goes in bulk.
                    whole = {row.oid for row in batch if row.oid in claimed and row.oid_expiration <= now}
                    if whole:
                        going = await _mark_whole_items(session, sorted(whole), report, gone)
                        # Going, as far as the decisions below are concerned (a container's members too).
                        gone.update(row.uid for row in going)
                    for oid in claimed:
                        if oid not in whole:
                            await _expire_item(session, oid, now, report, gone)
                # Marked DELETING and committed: the payloads go now, outside any transaction.
                deleting = await Deleting.next(sessionmaker, report, deleting, going)
                log.debug("expiry pass: %s so far", report.summary())
                if len(candidates) < batch_size:
                    break
        deleting = await Deleting.next(sessionmaker, report, deleting, [])
    finally:
        if deleting is not None:
            deleting.payloads.cancel()  # an error, a shutdown: their replicas stay DELETING for the next pass
    return report


# What marking a replica DELETING needs to know of it (its whole row, metadata and all, cost a tenth of
# the pass to fetch).
_MARKED = (ITEMS.c.uid, ITEMS.c.oid, ITEMS.c.item_name, ITEMS.c.item_type, ITEMS.c.storage_id, ITEMS.c.parents)
# What deleting a DELETING replica's payload needs to know of it.
_DELETING = (ITEMS.c.uid, ITEMS.c.oid, ITEMS.c.item_name, ITEMS.c.item_type, ITEMS.c.storage_id, ITEMS.c.uri)


async def _mark_whole_items(
    session: AsyncSession, oids: list[uuid.UUID], report: ExpiryReport, gone: set[uuid.UUID]
) -> list[Row[Any]]:
    """Mark DELETING every live replica of these expired items (and the registered members of their
    containers), in one statement; returns their rows, for ``_delete_payloads`` once this is committed. Those
    on a read-only storage are kept, those of an item being copied deferred."""
    # Read without locking the rows (that wrote each once more): the items' locks keep every writer of
    # their replica sets out, and the UPDATE below marks only what is still live (a container's member,
    # whose own item lock is not taken, changed meanwhile is waited for, then marked only if still live).
    rows = (
        await session.execute(
            select(*_MARKED).where(ITEMS.c.oid == any_(oids), ITEMS.c.item_state.notin_(GONE_OR_GOING))
        )
    ).all()
    busy = set(
        await session.scalars(
            select(Migration.oid).where(
                Migration.oid == any_(oids), Migration.status.in_([MigrationStatus.PENDING, MigrationStatus.RUNNING])
            )
        )
    )
    containers = [row for row in rows if row.item_type is ItemType.CONTAINER and row.oid not in busy]
    if containers:
        members = (
            await session.execute(
                select(*_MARKED).where(
                    ITEMS.c.parents == any_([row.oid for row in containers]),
                    ITEMS.c.item_state.notin_(GONE_OR_GOING),
                )
            )
        ).all()
        homes = {(row.oid, row.storage_id) for row in containers}
        listed = {row.uid for row in rows}
        rows += [row for row in members if (row.parents, row.storage_id) in homes and row.uid not in listed]
    marked: list[uuid.UUID] = []
    read_only = {
        storage.storage_id: storage.storage_name
        for storage in await session.scalars(
            select(Storage).where(Storage.storage_id.in_({row.storage_id for row in rows if row.storage_id}))
        )
        if not is_writable(storage)
    }
    for row in rows:
        if row.oid in busy:
            report.deferred.append(Decision(row.uid, row.item_name, "a copy of the item is in progress"))
        elif row.storage_id in read_only:
            reason = f"storage {read_only[row.storage_id]!r} is read-only; an admin may force the deletion"
            report.kept.append(Decision(row.uid, row.item_name, reason))
        else:
            marked.append(row.uid)
    if report.dry_run:
        report.deleted.extend(marked)
        gone.update(marked)
        return []
    if not marked:
        return []
    marking = (
        update(ITEMS)
        .where(ITEMS.c.uid == any_(marked), ITEMS.c.item_state.notin_(GONE_OR_GOING))
        .values(item_state=ItemState.DELETING)
        .returning(*_DELETING)
    )
    return list((await session.execute(marking)).all())


async def finish_deletions(sessionmaker: async_sessionmaker[AsyncSession], report: ExpiryReport) -> None:
    """Delete the payloads of every DELETING replica (what a pass that crashed or was stopped began),
    then mark DELETED those whose payload went."""
    async with transaction(sessionmaker, actor=ACTOR) as session:
        rows = list((await session.execute(select(*_DELETING).where(ITEMS.c.item_state == ItemState.DELETING))).all())
    if rows:
        await _record_deletions(sessionmaker, report, rows, await _delete_payloads(sessionmaker, rows))


async def _delete_payloads(
    sessionmaker: async_sessionmaker[AsyncSession], rows: list[Row[Any]]
) -> dict[uuid.UUID, str]:
    """Delete the payloads of these DELETING replicas, a storage's in parallel batches, outside any
    transaction; returns why each that did not go (by uid)."""
    by_storage: dict[uuid.UUID | None, list[Row[Any]]] = {}
    for row in rows:
        by_storage.setdefault(row.storage_id, []).append(row)
    backends: dict[uuid.UUID, Any] = {}
    unreachable: dict[uuid.UUID, str] = {}
    async with transaction(sessionmaker, actor=ACTOR) as session:
        for storage_id in by_storage:
            storage = await session.get(Storage, storage_id) if storage_id else None
            if storage is not None:
                try:
                    backends[storage_id] = await storage_backend(session, storage)
                except (TransferError, DLMError) as exc:
                    unreachable[storage_id] = exc.message
    failed: dict[uuid.UUID, str] = {}
    for storage_id, group in by_storage.items():
        if storage_id in unreachable:
            failed.update({row.uid: unreachable[storage_id] for row in group})
        elif storage_id in backends:
            failed.update(await _delete_on_storage(backends[storage_id], group))
    return failed


async def _record_deletions(
    sessionmaker: async_sessionmaker[AsyncSession],
    report: ExpiryReport,
    rows: list[Row[Any]],
    failed: dict[uuid.UUID, str],
) -> None:
    """Mark DELETED the replicas whose payload went (not in ``failed``), and work out their items'
    phase. One whose payload could not go stays DELETING, deferred to the next pass."""
    for row in rows:
        if row.uid in failed:
            report.deferred.append(Decision(row.uid, row.item_name, failed[row.uid]))
    if failed:
        log.warning(
            "expiry: %d payloads not deleted, their replicas stay DELETING: %s",
            len(failed),
            next(iter(failed.values())),
        )
    went = [row.uid for row in rows if row.uid not in failed]
    if not went:
        return
    async with transaction(sessionmaker, actor=ACTOR) as session:
        # PLASMA: what the item's phase is once every replica is gone, and the item's deletion time when
        # this was its last live replica, set in the same row version (left to the oid_deletion trigger,
        # the second cost as much again as the first).
        live = ITEMS.alias("live")
        others_live = exists().where(
            live.c.oid == ITEMS.c.oid, live.c.item_state != ItemState.DELETED, live.c.uid != all_(went)
        )
        await session.execute(
            update(ITEMS)
            .where(ITEMS.c.uid == any_(went), ITEMS.c.item_state == ItemState.DELETING)
            .values(
                item_state=ItemState.DELETED,
                deleted=True,
                uid_deletion=func.now(),
                oid_phase=Phase.PLASMA,
                oid_deletion=func.coalesce(ITEMS.c.oid_deletion, case((~others_live, func.now()))),
            )
        )
        oids = sorted({row.oid for row in rows})
        spared = set(
            await session.scalars(
                select(ITEMS.c.oid)
                .where(ITEMS.c.oid == any_(oids), ITEMS.c.item_state.notin_([ItemState.DELETED]))
                .distinct()
            )
        )
        finished = [oid for oid in oids if oid not in spared]
        if finished:
            # Every replica of these items is gone: PLASMA on the older deleted rows too.
            await session.execute(
                update(ITEMS)
                .where(ITEMS.c.oid == any_(finished), ITEMS.c.oid_phase != Phase.PLASMA)
                .values(oid_phase=Phase.PLASMA)
            )
        await refresh_oid_phase(session, spared)
    report.deleted.extend(went)


async def _delete_on_storage(backend: Any, group: list[Row[Any]]) -> dict[uuid.UUID, str]:
    """One storage's payloads deleted, files DELETES_AT_ONCE calls of at most DELETE_BATCH at a time
    (a pass's batch split too), then containers in one call: a container's tree removed while another
    call unlinks a member inside it would stop at the vanished member and leave the rest. Returns why
    each that did not go (by uid). A storage that cannot be reached at all fails the lot."""
    by_uri = {row.uri: row.uid for row in group if row.uri}
    containers = [row.uri for row in group if row.uri and row.item_type is ItemType.CONTAINER]
    files = [row.uri for row in group if row.uri and row.item_type is not ItemType.CONTAINER]
    size = min(DELETE_BATCH, max(1, -(-len(files) // DELETES_AT_ONCE)))
    slots = asyncio.Semaphore(DELETES_AT_ONCE)

    async def one_batch(batch: list[str]) -> dict[str, str]:
        async with slots:
            return await backend.delete_many(batch)

    try:
        async with backend:
            results = await asyncio.gather(*(one_batch(files[at : at + size]) for at in range(0, len(files), size)))
            if containers:
                results.append(await backend.delete_many(containers))
    except (TransferError, DLMError) as exc:
        return {uid: exc.message for uid in by_uri.values()}
    return {by_uri[uri]: reason for result in results for uri, reason in result.items()}


async def _expire_item(
    session: AsyncSession, oid: uuid.UUID, now: datetime.datetime, report: ExpiryReport, gone: set[uuid.UUID]
) -> None:
    """Delete the item's expired replicas one by one, each decision seeing the ones before it."""
    replicas = await lock_replicas(session, oid)
    for candidate in replicas:
        live = [row for row in replicas if row.uid not in gone and row.item_state is not ItemState.DELETED]
        replica = next((row for row in live if row.uid == candidate.uid), None)
        if replica is None or (replica.uid_expiration > now and replica.oid_expiration > now):
            continue
        unconditional = bool(session.info.get("unconditional_deletion"))  # DLM_SKA_DELETION
        try:
            if not unconditional:
                check_resilience(replica, live, now)
            if report.dry_run:
                removed = [replica.uid]
            else:
                async with session.begin_nested():
                    deleted = await delete_replica(session, replica, live, force=unconditional, now=now)
                    removed = [row.uid for row in deleted]
            report.deleted.extend(removed)
            gone.update(removed)
        except UnmetPreconditionForOperation as exc:
            report.kept.append(Decision(replica.uid, replica.item_name, exc.message))
            if not report.dry_run:
                await _record_kept_once(session, replica, exc.message)
        except (DLMError, TransferError) as exc:  # a concurrent change, an unreachable storage, a root uri
            report.deferred.append(Decision(replica.uid, replica.item_name, exc.message))
            log.warning("expiry: uid %s deferred: %s", replica.uid, exc.message)


async def _record_kept_once(session: AsyncSession, replica: Row[Any], reason: str) -> None:
    """Say in the item's history why an expired replica stays, once per reason, not once per pass."""
    already = await session.scalar(
        select(
            exists().where(
                DataItemEvent.uid == replica.uid,
                DataItemEvent.event == KEPT_EVENT,
                DataItemEvent.new_value == reason,
            )
        )
    )
    if not already:
        session.add(DataItemEvent(uid=replica.uid, oid=replica.oid, event=KEPT_EVENT, new_value=reason, actor=ACTOR))
        await session.flush()
