"""Capacity: keep each storage under its high watermark by evicting replicas its items do not need,
least recently used first, down to the low watermark.

A storage's fill is the larger of what DLM holds there against ``storage_capacity`` (when set) and,
for POSIX, how full its file system is. A replica may go only if its item keeps its target phase
without it (the resilience rule, SPEC §4); when that leaves the storage above its high watermark,
the pass says so: a warning in the log and the report, and a storage event ``capacity_exceeded``
(recorded once, not every pass), answered by ``capacity_relieved`` when the storage is under its
high watermark again.
"""

import datetime
import logging
import uuid

import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.data_item import ITEMS
from dlm.db import tally
from dlm.db.engine import transaction
from dlm.db.models import Storage, StorageEvent
from dlm.enums import ItemState
from dlm.errors import DLMError, UnmetPreconditionForOperation
from dlm.lifecycle import claim_item
from dlm.storage.service import (
    check_resilience,
    delete_replica,
    file_system_usage,
    lock_replicas,
    record_storage_event,
)
from dlm.transfer.base import TransferError

log = logging.getLogger("dlm.lifecycle.capacity")

ACTOR = "capacity"
LOCK_NAMESPACE = 0x43415059  # "CAPY": an item
STORAGE_LOCK_NAMESPACE = 0x43415053  # "CAPS": a storage being relieved
EXCEEDED_EVENT = "capacity_exceeded"
RELIEVED_EVENT = "capacity_relieved"


class Eviction(msgspec.Struct, frozen=True):
    uid: uuid.UUID
    item_name: str | None
    storage_name: str
    size: int


class Pressure(msgspec.Struct, frozen=True):
    storage_name: str
    fill: float
    reason: str


class CapacityReport(msgspec.Struct, kw_only=True):
    dry_run: bool
    evicted: list[Eviction] = msgspec.field(default_factory=list)
    # Storages left above their high watermark, and why.
    warnings: list[Pressure] = msgspec.field(default_factory=list)

    def summary(self) -> str:
        verb = "would evict" if self.dry_run else "evicted"
        freed = sum(eviction.size for eviction in self.evicted)
        return f"{verb} {len(self.evicted)} replicas ({freed} bytes), {len(self.warnings)} storages still full"


class _Fill(msgspec.Struct):
    """What counts against a storage, in bytes: DLM's own holdings and, for POSIX, the file system."""

    held: int
    capacity: int | None
    disk_used: int | None = None
    disk_total: int | None = None

    def ratio(self, freed: int = 0) -> float:
        ratios = []
        if self.capacity:
            ratios.append((self.held - freed) / self.capacity)
        if self.disk_total:
            ratios.append(((self.disk_used or 0) - freed) / self.disk_total)
        return max(ratios, default=0.0)


async def run_once(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    high_watermark: float = 0.9,
    low_watermark: float = 0.8,
    now: datetime.datetime | None = None,
    dry_run: bool = False,
    check_file_systems: bool = True,
) -> CapacityReport:
    """One pass over every available storage. ``check_file_systems``: also count how full a POSIX
    storage's file system is (False: only what DLM holds against ``storage_capacity``)."""
    now = now or datetime.datetime.now(datetime.UTC)
    report = CapacityReport(dry_run=dry_run)
    async with transaction(sessionmaker, actor=ACTOR) as session:
        await tally.fold(session)  # the pass reads the tally once per storage
        storages = list(await session.scalars(select(Storage).where(Storage.storage_available.is_(True))))
    for storage in storages:
        # The storage is this process's until its transaction ends; another process skips it rather
        # than relieving it a second time from the same reading of how full it is.
        async with transaction(sessionmaker, actor=ACTOR) as guard:
            if not await claim_item(guard, STORAGE_LOCK_NAMESPACE, storage.storage_id):
                continue
            held = await tally.held_by_storage(guard, [storage.storage_id])
            fill = _Fill(
                held=held.get(storage.storage_id, (0, 0))[0],
                capacity=storage.storage_capacity if storage.storage_capacity > 0 else None,
            )
            disk = await file_system_usage(guard, storage) if check_file_systems else None
            if disk is not None:
                fill.disk_used, fill.disk_total = disk.total - disk.free, disk.total
            freed = 0
            if fill.ratio() > high_watermark:
                freed = await _evict(sessionmaker, storage, fill, low_watermark, now, report)
            if fill.ratio(freed) <= high_watermark:
                if not dry_run:
                    await _record(guard, storage, RELIEVED_EVENT, f"{fill.ratio(freed):.0%} full")
                continue
            pressure = Pressure(
                storage.storage_name,
                round(fill.ratio(freed), 4),
                "no replica left there that its item can spare (target phase), or the space is not DLM's",
            )
            report.warnings.append(pressure)
            log.warning(
                "capacity: %s is still %.0f%% full: %s", pressure.storage_name, 100 * pressure.fill, pressure.reason
            )
            if not dry_run:
                await _record(guard, storage, EXCEEDED_EVENT, f"{pressure.fill:.0%} full: {pressure.reason}")
    return report


async def _record(session: AsyncSession, storage: Storage, event: str, detail: str) -> None:
    """Add ``event`` to the storage's events when it changes what the last capacity event said: an
    operator hears once that a storage is stuck full, and once that it is not any more."""
    last = await session.scalar(
        select(StorageEvent.event)
        .where(StorageEvent.storage_id == storage.storage_id, StorageEvent.event.in_([EXCEEDED_EVENT, RELIEVED_EVENT]))
        .order_by(StorageEvent.event_id.desc())
        .limit(1)
    )
    if last == event or (last is None and event == RELIEVED_EVENT):
        return
    await record_storage_event(session, storage.storage_id, event, detail)


async def _evict(
    sessionmaker: async_sessionmaker[AsyncSession],
    storage: Storage,
    fill: _Fill,
    low_watermark: float,
    now: datetime.datetime,
    report: CapacityReport,
) -> int:
    """Evict least recently used replicas that are not needed until the fill is at the low watermark;
    returns the bytes freed."""
    freed = 0
    gone: set[uuid.UUID] = set()
    async with transaction(sessionmaker, actor=ACTOR) as session:
        candidates = (
            await session.execute(
                select(ITEMS.c.uid, ITEMS.c.oid)
                .where(ITEMS.c.storage_id == storage.storage_id, ITEMS.c.item_state == ItemState.READY)
                .order_by(func.coalesce(ITEMS.c.last_access, ITEMS.c.uid_creation), ITEMS.c.uid)
            )
        ).all()
    for candidate in candidates:
        if fill.ratio(freed) <= low_watermark:
            break
        async with transaction(sessionmaker, actor=ACTOR) as session:
            if not await claim_item(session, LOCK_NAMESPACE, candidate.oid):
                continue
            replicas = [row for row in await lock_replicas(session, candidate.oid) if row.uid not in gone]
            replica = next((row for row in replicas if row.uid == candidate.uid), None)
            if replica is None or replica.item_state is not ItemState.READY:
                continue
            try:
                check_resilience(replica, replicas, now)
                if not report.dry_run:
                    await delete_replica(session, replica, replicas, now=now)
            except UnmetPreconditionForOperation:
                continue  # needed: it stays
            except (DLMError, TransferError) as exc:
                log.info("capacity: %s stays for now: %s", replica.uid, exc)
                continue
        size = replica.item_size or 0
        freed += size
        gone.add(replica.uid)
        report.evicted.append(Eviction(replica.uid, replica.item_name, storage.storage_name, size))
    return freed
