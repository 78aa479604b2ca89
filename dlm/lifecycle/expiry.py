"""Expiry: replicas past their ``uid_expiration`` and items past their ``oid_expiration`` lose their
payloads and become DELETED (the rows stay, as the trace).

A replica whose deletion would leave its item, itself not expired, below its ``target_phase`` is
kept, and the reason is recorded once in the item's history (event ``expiry_kept``); later passes
skip it until the item's other READY replicas could stand in for it, so that a catalogue of replicas
kept for their items does not cost a decision each per pass. Several DLM
processes may run passes at once: an item is claimed with a transaction-scoped advisory lock that a
second process does not wait for but skips, a batch per transaction, each item inside a savepoint
so one storage's trouble does not undo the rest.
"""

import datetime
import logging
import uuid
from typing import Any

import msgspec
from sqlalchemy import Row, case, exists, func, or_, select, true, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.data_item import ITEMS, refresh_oid_phase
from dlm.db.engine import transaction
from dlm.db.models import DataItemEvent, Migration, Storage
from dlm.enums import ItemState, ItemType, MigrationStatus, Phase
from dlm.errors import DLMError, UnmetPreconditionForOperation
from dlm.lifecycle import claim_items, phase_weight
from dlm.storage.service import check_resilience, delete_replica, is_writable, lock_replicas, storage_backend
from dlm.transfer.base import TransferError

log = logging.getLogger("dlm.lifecycle.expiry")

ACTOR = "expiry"
KEPT_EVENT = "expiry_kept"
# The first key of this engine's advisory locks (the second is the oid's hash): "EXPY".
LOCK_NAMESPACE = 0x45585059


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
    ).where(ITEMS.c.item_state != ItemState.DELETED, expiry <= now)
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
    # Items this pass has dealt with; in a dry run, also the replicas it would have deleted.
    done: set[uuid.UUID] = set()
    gone: set[uuid.UUID] = set()
    for expiry in SWEEPS:
        after: tuple[datetime.datetime, uuid.UUID] | None = None
        while True:
            async with transaction(sessionmaker, actor=ACTOR) as session:
                candidates = (await session.execute(_next_candidates(now, expiry, after, batch_size))).all()
                if not candidates:
                    break
                after = (candidates[-1].due, candidates[-1].uid)
                batch = [row for row in candidates if row.worth_deciding]
                oids = [oid for oid in dict.fromkeys(row.oid for row in batch) if oid not in done]
                claimed = await claim_items(session, LOCK_NAMESPACE, oids)  # the others are another process's
                done.update(claimed)
                # An expired item loses everything: no decision per replica, so it goes in bulk.
                whole = {row.oid for row in batch if row.oid in claimed and row.oid_expiration <= now}
                if whole:
                    await _expire_whole_items(session, sorted(whole), report, gone)
                for oid in claimed:
                    if oid not in whole:
                        await _expire_item(session, oid, now, report, gone)
            log.debug("expiry pass: %s so far", report.summary())
            if len(candidates) < batch_size:
                break
    return report


async def _expire_whole_items(
    session: AsyncSession, oids: list[uuid.UUID], report: ExpiryReport, gone: set[uuid.UUID]
) -> None:
    """Delete every live replica of these expired items (and the registered members of their containers),
    a storage at a time: the rows in one statement, then the payloads; a storage that does not answer
    defers its share to the next pass."""
    rows = (
        await session.execute(
            select(ITEMS)
            .where(ITEMS.c.oid.in_(oids), ITEMS.c.item_state != ItemState.DELETED)
            .order_by(ITEMS.c.uid)
            .with_for_update()
        )
    ).all()
    busy = set(
        await session.scalars(
            select(Migration.oid).where(
                Migration.oid.in_(oids), Migration.status.in_([MigrationStatus.PENDING, MigrationStatus.RUNNING])
            )
        )
    )
    containers = [row for row in rows if row.item_type is ItemType.CONTAINER and row.oid not in busy]
    if containers:
        members = (
            await session.execute(
                select(ITEMS)
                .where(
                    ITEMS.c.parents.in_([row.oid for row in containers]),
                    ITEMS.c.item_state != ItemState.DELETED,
                )
                .order_by(ITEMS.c.uid)
                .with_for_update()
            )
        ).all()
        homes = {(row.oid, row.storage_id) for row in containers}
        rows += [
            row for row in members if (row.parents, row.storage_id) in homes and row.uid not in {r.uid for r in rows}
        ]
    by_storage: dict[uuid.UUID | None, list[Row[Any]]] = {}
    for row in rows:
        if row.oid in busy:
            report.deferred.append(Decision(row.uid, row.item_name, "a copy of the item is in progress"))
        else:
            by_storage.setdefault(row.storage_id, []).append(row)
    for storage_id, group in by_storage.items():
        storage = await session.get(Storage, storage_id) if storage_id else None
        if storage is not None and not is_writable(storage):
            reason = f"storage {storage.storage_name!r} is read-only; an admin may force the deletion"
            report.kept.extend(Decision(row.uid, row.item_name, reason) for row in group)
            continue
        if report.dry_run:
            report.deleted.extend(row.uid for row in group)
            gone.update(row.uid for row in group)
            continue
        # Payloads first, in one batch; then the rows of those that went, in one statement. One that
        # could not be deleted keeps its row as it was, deferred to the next pass.
        failed: dict[str, str] = {}
        if storage is not None:
            try:
                async with await storage_backend(session, storage) as backend:
                    failed = await backend.delete_many([row.uri for row in group if row.uri])
            except (TransferError, DLMError) as exc:  # the storage cannot be reached at all
                failed = {row.uri: exc.message for row in group}
        for row in group:
            if row.uri in failed:
                report.deferred.append(Decision(row.uid, row.item_name, failed[row.uri]))
        if failed:
            log.warning("expiry: %d replicas deferred: %s", len(failed), next(iter(failed.values())))
        uids = [row.uid for row in group if row.uri not in failed]
        if uids:
            # PLASMA: what the item's phase is once every replica is gone, set in the same row version
            # (refresh_oid_phase corrects it below for an item that keeps a replica).
            await session.execute(
                update(ITEMS)
                .where(ITEMS.c.uid.in_(uids))
                .values(item_state=ItemState.DELETED, deleted=True, uid_deletion=func.now(), oid_phase=Phase.PLASMA)
            )
        report.deleted.extend(uids)
        gone.update(uids)
    if not report.dry_run:
        # An item none of whose replicas was spared is PLASMA now, on every row the statement above did
        # not touch too (older deleted replicas); only the others need their phase worked out again.
        spared = {row.oid for row in rows if row.uid not in gone}
        finished = {row.oid for row in rows} - spared
        if finished:
            await session.execute(
                update(ITEMS)
                .where(ITEMS.c.oid.in_(sorted(finished)), ITEMS.c.oid_phase != Phase.PLASMA)
                .values(oid_phase=Phase.PLASMA)
            )
        await refresh_oid_phase(session, spared)


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
        try:
            check_resilience(replica, live, now)
            if report.dry_run:
                removed = [replica.uid]
            else:
                async with session.begin_nested():
                    removed = [row.uid for row in await delete_replica(session, replica, live, now=now)]
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
