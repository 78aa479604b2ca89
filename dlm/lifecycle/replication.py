"""Phase enforcement: an item whose READY replicas do not reach its ``target_phase`` gets new ones,
copied by the migration manager, until they do; a CORRUPTED replica is replaced from a good one,
on its own storage at its own path while that storage can take copies.

Where new replicas go (the placement policy), best first, among storages that are available, not
retired, writable, and not already holding a live replica of the item:

1. one with room for the payload (its capacity minus what DLM holds there, and for POSIX the file
   system's free space);
2. one some location's workers reach from a READY replica's storage too (dlm.sites: else no worker
   could carry the copy);
3. at a location that holds no replica of the item yet (another site survives a site's loss);
4. not over a link carrying as many transfers as it may;
5. of a higher phase (SOLID before LIQUID before GAS);
6. over the least loaded link from a READY replica, then the nearest (the same location, the same
   country, elsewhere);
7. with more room; then by name, so that the choice is stable.

Each copy reads from the READY replica with the best link to its destination (dlm.sites.Links.cost),
then the safest.

Storages are taken in that order until the combined phase (SPEC §1) reaches the target: exactly the
missing copies, no more. An item with a copy already queued is left until that copy ends.

Replicas on a storage being retired do not count towards the target: the item is copied elsewhere
first, and once it reaches its target without them they are removed there. A retiring storage that
holds nothing any more is retired.
"""

import datetime
import logging
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
from sqlalchemy import Row, and_, any_, exists, or_, select, union, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.data_item import ITEMS
from dlm.db import tally
from dlm.db.engine import transaction
from dlm.db.models import Migration, PhaseChange, Storage
from dlm.enums import ItemState, Phase, combined_phase
from dlm.errors import DLMError
from dlm.lifecycle import claim_items, phase_weight
from dlm.migration.service import ACTIVE, CopyPlan, queue_copies
from dlm.sites.service import Links
from dlm.storage.service import (
    ITEM_LOCK,
    delete_replica,
    file_system_usages,
    finish_retirements,
)
from dlm.transfer.base import TransferError

log = logging.getLogger("dlm.lifecycle.replication")

ACTOR = "replication"


class Planned(msgspec.Struct, frozen=True):
    oid: uuid.UUID
    item_name: str | None
    destination: str
    migration_id: int | None


class Unmet(msgspec.Struct, frozen=True):
    oid: uuid.UUID
    item_name: str | None
    reason: str


class ReplicationReport(msgspec.Struct, kw_only=True):
    dry_run: bool
    queued: list[Planned] = msgspec.field(default_factory=list)
    replaced: list[uuid.UUID] = msgspec.field(default_factory=list)  # CORRUPTED replicas removed
    # Replicas removed from storages being retired, once their items reached their target elsewhere.
    vacated: list[uuid.UUID] = msgspec.field(default_factory=list)
    retired: list[str] = msgspec.field(default_factory=list)  # storages whose retirement finished
    unmet: list[Unmet] = msgspec.field(default_factory=list)
    # Phase-change requests (set_phase) whose item now has the phase asked for.
    phase_changes_completed: int = 0

    def summary(self) -> str:
        verb = "would queue" if self.dry_run else "queued"
        retiring = f", moved {len(self.vacated)} off retiring storages" if self.vacated else ""
        return (
            f"{verb} {len(self.queued)} copies, replaced {len(self.replaced)} corrupted{retiring}, "
            f"{len(self.unmet)} unmet"
        )


async def run_once(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    now: datetime.datetime | None = None,
    dry_run: bool = False,
    batch_size: int = 2000,
    on_queued: Callable[[], None] | None = None,
) -> ReplicationReport:
    """One pass over every item with something to do, ``batch_size`` items per transaction: their
    replicas read and locked in one statement, the copies they need planned in memory and queued in a
    few (``queue_copies``). ``on_queued`` is told when copies were queued (this process's workers
    start at once rather than at their next poll)."""
    now = now or datetime.datetime.now(datetime.UTC)
    report = ReplicationReport(dry_run=dry_run)
    placement: _Placement | None = None
    after = uuid.UUID(int=0)
    async with transaction(sessionmaker, actor=ACTOR) as session:
        retiring = set(
            await session.scalars(
                select(Storage.storage_id).where(
                    Storage.storage_retire_date.is_not(None), Storage.storage_retired.is_(False)
                )
            )
        )
    while True:
        async with transaction(sessionmaker, actor=ACTOR) as session:
            oids = list(await session.scalars(_next_batch(now, after, batch_size, retiring)))
        if not oids:
            if not dry_run:
                async with transaction(sessionmaker, actor=ACTOR) as session:
                    report.phase_changes_completed = await _complete_phase_changes(session, now)
                    report.retired = await finish_retirements(session)
            return report
        after = oids[-1]
        # Which storages may take copies, and how much room they have, is read once per pass.
        placement = placement or await _Placement.load(sessionmaker)
        queued_before = len(report.queued)
        async with transaction(sessionmaker, actor=ACTOR) as session:
            # Items another process's pass holds are its to plan: claimed without waiting.
            claimed = await claim_items(session, ITEM_LOCK, oids)
            await _enforce(session, sorted(claimed), placement, report, retiring)
        if on_queued is not None and not dry_run and len(report.queued) > queued_before:
            on_queued()


def _next_batch(now: datetime.datetime, after: uuid.UUID, batch_size: int, retiring: set[uuid.UUID]) -> Any:
    """The next items after ``after`` (in oid order) with something to do: below their target phase, a
    replica corrupted, or a replica on a storage being retired. Each is asked of an index (the first
    two of ix_data_item_below_target, whose condition is written here as it is there so that the
    planner can use it; the last of the storage's): a pass with nothing to do reads next to nothing."""
    # A container's registered members travel with its copies (and leave with its removal): copied on
    # their own into its tree, they would collide with it. Only a corrupted member is repaired alone.
    container = ITEMS.alias("container")
    rides_with_container = and_(
        ITEMS.c.parents.is_not(None),
        exists().where(container.c.oid == ITEMS.c.parents, container.c.item_state == ItemState.READY),
    )
    corrupted = ITEMS.c.item_state == ItemState.CORRUPTED
    below_target_or_corrupted = or_(
        corrupted, and_(ITEMS.c.item_state == ItemState.READY, ITEMS.c.oid_phase < ITEMS.c.target_phase)
    )
    live = and_(ITEMS.c.oid > after, ITEMS.c.oid_expiration > now)
    wanted = select(ITEMS.c.oid).where(below_target_or_corrupted, live, or_(corrupted, ~rides_with_container))
    if retiring:
        leaving = select(ITEMS.c.oid).where(
            ITEMS.c.storage_id.in_(retiring),
            ITEMS.c.item_state.in_([ItemState.READY, ItemState.CORRUPTED]),
            live,
            ~rides_with_container,
        )
        found = union(wanted, leaving).subquery()
        return select(found.c.oid).order_by(found.c.oid).limit(batch_size)
    return wanted.group_by(ITEMS.c.oid).order_by(ITEMS.c.oid).limit(batch_size)


async def _enforce(
    session: AsyncSession,
    oids: list[uuid.UUID],
    placement: "_Placement",
    report: ReplicationReport,
    retiring: set[uuid.UUID],
) -> None:
    """Plan what these items need (their replicas read and locked in one statement), then queue every
    copy of the batch at once."""
    busy = set(
        await session.scalars(
            select(Migration.oid).where(Migration.oid == any_(oids), Migration.status.in_(ACTIVE)).distinct()
        )
    )
    todo = [oid for oid in oids if oid not in busy]  # one with a copy under way: look again next pass
    replicas: dict[uuid.UUID, list[Row[Any]]] = {oid: [] for oid in todo}
    if todo:
        # Every writer locks an item's replicas in one order (by uid): this batch's, all at once.
        query = select(*_PLANNED_FROM).where(ITEMS.c.oid == any_(todo)).order_by(ITEMS.c.uid).with_for_update()
        for row in await session.execute(query):
            replicas[row.oid].append(row)
    plans: list[tuple[CopyPlan, Planned]] = []
    for oid in todo:
        await _plan(session, oid, replicas[oid], placement, report, retiring, plans)
    if not plans:
        return
    if report.dry_run:
        report.queued += [planned for _, planned in plans]
        return
    results = await queue_copies(session, [plan for plan, _ in plans])
    for (plan, planned), result in zip(plans, results, strict=True):
        if isinstance(result, dict):
            report.queued.append(msgspec.structs.replace(planned, migration_id=result["migration_id"]))
        else:
            log.info("replication of %s: %s refused: %s", planned.item_name, planned.destination, result)


# What planning (and a removal it makes) reads of a replica: not its metadata, which it has no use for.
_PLANNED_FROM = [
    ITEMS.c[name]
    for name in (
        "uid", "oid", "item_name", "item_state", "item_type", "storage_id", "uri", "uid_phase",
        "target_phase", "item_size", "oid_expiration", "parents",
    )
]  # fmt: skip


async def _plan(
    session: AsyncSession,
    oid: uuid.UUID,
    replicas: list[Row[Any]],
    placement: "_Placement",
    report: ReplicationReport,
    retiring: set[uuid.UUID],
    plans: list[tuple[CopyPlan, Planned]],
) -> None:
    """What one item needs: corrupted replicas removed (and repaired where they were), replicas off
    retiring storages once it reaches its target without them, and the copies that bring it to its
    target phase (appended to ``plans``; the pass's room is taken as they are planned)."""
    ready = [row for row in replicas if row.item_state is ItemState.READY]
    if not ready:
        return  # nothing good to copy from: the audit has said so
    name = ready[0].item_name
    removed = []
    for corrupted in [row for row in replicas if row.item_state is ItemState.CORRUPTED]:
        if not report.dry_run:
            try:
                async with session.begin_nested():
                    await delete_replica(session, corrupted, replicas, force=True)
            except (DLMError, TransferError) as exc:
                report.unmet.append(Unmet(oid, name, f"cannot remove corrupted replica {corrupted.uid}: {exc}"))
                continue
        report.replaced.append(corrupted.uid)
        removed.append(corrupted)
    live_storages = {row.storage_id for row in replicas if row.item_state in (ItemState.READY, ItemState.INITIALISED)}
    target = ready[0].target_phase
    # Replicas on storages being retired do not count: the item must reach its target without them.
    phases = [row.uid_phase for row in ready if row.storage_id not in retiring]
    leaving = [row for row in ready if row.storage_id in retiring]
    if leaving and _phase_of(phases).weight >= target.weight:
        await _leave_retiring(session, leaving, replicas, report)
        return
    size = max((row.item_size or 0) for row in ready)
    sources = [placement.every[row.storage_id] for row in ready if row.storage_id in placement.every]

    def queue(storage: Storage, path: str = "") -> None:
        source = placement.best_source(ready, storage)
        plans.append((CopyPlan(source, storage, path), Planned(oid, name, storage.storage_name, None)))
        phases.append(storage.storage_phase)
        live_storages.add(storage.storage_id)
        placement.use(storage, size)

    # A corrupted replica is repaired where it was, whether or not the target needs it: pipelines may
    # read it there, and its copy was part of the item's resilience. Only a storage that can no longer
    # take copies leaves the choice to the policy.
    for corrupted in removed:
        storage = placement.usable(corrupted.storage_id)
        if storage is not None and storage.storage_id not in live_storages:
            queue(storage, corrupted.uri)
    if _phase_of(phases).weight >= target.weight:
        return
    locations = {placement.locations.get(row.storage_id) for row in ready}
    for storage in placement.rank(exclude=live_storages, locations=locations, size=size, sources=sources):
        if _phase_of(phases).weight >= target.weight:
            break
        queue(storage)
    if _phase_of(phases).weight < target.weight:
        reached = _phase_of(phases).value
        report.unmet.append(Unmet(oid, name, f"no suitable storage left: reaches {reached}, needs {target.value}"))


def _phase_of(phases: list[Phase]) -> Phase:
    return combined_phase(phases) if phases else Phase.PLASMA


async def _leave_retiring(
    session: AsyncSession, leaving: list[Row[Any]], replicas: list[Row[Any]], report: ReplicationReport
) -> None:
    """The item reaches its target elsewhere: its replicas on storages being retired go (read-only or
    not: retiring a storage is an admin's decision to empty it)."""
    for replica in leaving:
        if report.dry_run:
            report.vacated.append(replica.uid)
            continue
        try:
            async with session.begin_nested():
                await delete_replica(session, replica, replicas, override_read_only=True)
        except (DLMError, TransferError) as exc:
            report.unmet.append(Unmet(replica.oid, replica.item_name, f"cannot leave retiring storage: {exc}"))
            continue
        report.vacated.append(replica.uid)


async def _complete_phase_changes(session: AsyncSession, now: datetime.datetime) -> int:
    """Mark the phase-change requests whose items have reached the phase asked for (at once for a
    lowered target); returns how many."""
    reached = exists().where(
        ITEMS.c.oid == PhaseChange.oid,
        ITEMS.c.item_state == ItemState.READY,
        phase_weight(ITEMS.c.oid_phase) >= phase_weight(PhaseChange.final_phase),
    )
    result = await session.execute(
        update(PhaseChange).where(PhaseChange.completed.is_(None), reached).values(completed=now)
    )
    return result.rowcount or 0


class _Placement:
    """The storages a pass may copy to and the room each has left (loaded once per pass); each copy
    the pass queues takes its size off the room of its storage."""

    def __init__(
        self,
        storages: list[Storage],
        room: dict[uuid.UUID, int | None],
        every: dict[uuid.UUID, Storage],
        links: Links,
    ) -> None:
        self.storages = storages
        self.room = room
        # Every storage (those that take no copies too: where an item's replicas are already).
        self.every = every
        self.locations = {storage_id: storage.location_id for storage_id, storage in every.items()}
        self.links = links

    @classmethod
    async def load(cls, sessionmaker: async_sessionmaker[AsyncSession]) -> "_Placement":
        async with transaction(sessionmaker, actor=ACTOR) as session:
            storages = list(
                await session.scalars(
                    select(Storage).where(
                        Storage.storage_available.is_(True),
                        Storage.storage_retired.is_(False),
                        Storage.storage_retire_date.is_(None),
                        Storage.storage_permissions.contains("W"),
                    )
                )
            )
            held = await tally.held_by_storage(session, [storage.storage_id for storage in storages])
            disks = await file_system_usages(session, storages)
            room: dict[uuid.UUID, int | None] = {}
            for storage in storages:
                limits = []
                if storage.storage_capacity >= 0:
                    limits.append(storage.storage_capacity - held.get(storage.storage_id, (0, 0))[0])
                if (disk := disks[storage.storage_id]) is not None:
                    limits.append(disk.free)  # 0 when not mounted: no room
                room[storage.storage_id] = min(limits) if limits else None
            every = {storage.storage_id: storage for storage in await session.scalars(select(Storage))}
            links = await Links.load(session)
        return cls(storages, room, every, links)

    def usable(self, storage_id: uuid.UUID) -> Storage | None:
        return next((storage for storage in self.storages if storage.storage_id == storage_id), None)

    def rank(
        self, *, exclude: set[uuid.UUID], locations: set[uuid.UUID], size: int, sources: list[Storage]
    ) -> list[Storage]:
        """Storages with room for ``size`` bytes, best first (the policy in the module's docstring),
        judged by their links from the best of ``sources``."""
        ranked = []
        for storage in self.storages:
            room = self.room[storage.storage_id]
            if storage.storage_id in exclude or (room is not None and room < size):
                continue
            unplaceable, full, load, distance = min(
                (self.links.cost(source, storage) for source in sources), default=(False, False, 0.0, 0)
            )
            ranked.append(
                (
                    unplaceable,  # one a worker can carry a copy to
                    storage.location_id in locations,  # a new site first
                    full,  # not over a full link
                    -storage.storage_phase.weight,  # then the safer storage
                    load,  # over the least loaded link
                    distance,  # the nearer
                    -(room if room is not None else 2**62),  # then the roomier one
                    storage.storage_name,
                    storage,
                )
            )
        ranked.sort(key=lambda entry: entry[:-1])
        return [entry[-1] for entry in ranked]

    def best_source(self, ready: list[Row[Any]], destination: Storage) -> Row[Any]:
        """The READY replica to copy to ``destination`` from: the one with the best link to it, then
        the safest."""

        def cost(row: Row[Any]) -> tuple[Any, ...]:
            storage = self.every.get(row.storage_id)
            link = self.links.cost(storage, destination) if storage is not None else (True, True, 1.0, 2)
            return (*link, -row.uid_phase.weight, str(row.uid))

        return min(ready, key=cost)

    def use(self, storage: Storage, size: int) -> None:
        room = self.room[storage.storage_id]
        if room is not None:
            self.room[storage.storage_id] = room - size
