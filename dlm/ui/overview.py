"""What the operator page's overview shows, read in one transaction: storages and how full they are,
replicas by storage and state, the backlog (items below their target phase, what expires in the next
day, corrupted replicas, failed copies by error), the copy queue, bytes copied per hour, recent
storage events, what the engines of this process last did, and the sites: where copy workers run,
what each link between locations carries and waits for, the copies no running worker can reach. Every count is read from the tallies
or from at most COUNTED_UP_TO rows of an index: "1000+" on a big catalogue, never a table scan."""

import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.data_item import ITEMS
from dlm.db import tally
from dlm.db.models import Migration, Storage, StorageEvent
from dlm.enums import ItemState, MigrationStatus
from dlm.migration.service import with_item_names
from dlm.rows import row_dicts
from dlm.sites import service as sites
from dlm.storage.service import storage_usage

RECENT_EVENTS = 20
ACTIVE_COPIES = 20
CHART_HOURS = 24
# Backlog counts stop here (shown as "1000+"): each is read from an index, and no further.
COUNTED_UP_TO = 1000
# Failed copies grouped by destination and error: the latest this many.
RECENT_FAILURES = 500


async def overview(session: AsyncSession, *, last_passes: dict[str, Any], user: str | None = None) -> dict[str, Any]:
    """The overview; ``user``: the copies listed are only this user's (below the operator role)."""
    return {
        "storages": await _storages(session),
        "replicas": await _replicas(session),
        "backlog": await _backlog(session),
        "migrations": await _migrations(session, user),
        "copied_per_hour": await _copied_per_hour(session),
        "storage_events": await _recent_events(session),
        "engines": {name: last_passes[name] for name in sorted(last_passes)},
        "sites": {
            "workers": await sites.query_workers(session),
            "links": await sites.query_links(session),
            "unplaceable": await sites.unplaceable_copies(session),
        },
    }


async def _storages(session: AsyncSession) -> list[dict[str, Any]]:
    described = {
        str(storage_id): (phase.value, interface.value, retired)
        for storage_id, phase, interface, retired in await session.execute(
            select(Storage.storage_id, Storage.storage_phase, Storage.storage_interface, Storage.storage_retired)
        )
    }
    storages = []
    for usage in await storage_usage(session):
        phase, interface, retired = described[usage["storage_id"]]
        if not retired:
            storages.append({**usage, "storage_phase": phase, "storage_interface": interface})
    return storages


async def _replicas(session: AsyncSession) -> list[dict[str, Any]]:
    """Replicas (not items: an item has one per storage) by storage and state."""
    return [
        {"storage_id": str(storage_id) if storage_id else None, "item_state": state.value, "count": count}
        for storage_id, state, count in await tally.replicas_by_storage_and_state(session)
    ]


def _count(found: int) -> dict[str, Any]:
    return {"count": min(found, COUNTED_UP_TO), "more": found > COUNTED_UP_TO}


async def _backlog(session: AsyncSession) -> dict[str, Any]:
    """What is waiting for DLM or for an operator."""
    # Written as ix_data_item_below_target's condition, so that only the backlog's rows are read.
    below_target = or_(
        ITEMS.c.item_state == ItemState.CORRUPTED,
        and_(ITEMS.c.item_state == ItemState.READY, ITEMS.c.oid_phase < ITEMS.c.target_phase),
    )
    waiting = (
        await session.execute(
            select(ITEMS.c.oid, ITEMS.c.item_state, ITEMS.c.target_phase, ITEMS.c.uid_creation)
            .where(below_target)
            .limit(COUNTED_UP_TO * 4)
        )
    ).all()
    below = {row.oid: row for row in waiting if row.item_state is ItemState.READY}
    by_target: dict[str, int] = {}
    for row in below.values():
        by_target[row.target_phase.value] = by_target.get(row.target_phase.value, 0) + 1
    complete = len(waiting) < COUNTED_UP_TO * 4
    oldest = min((row.uid_creation for row in below.values()), default=None) if complete else None
    now = func.now()
    soon = now + datetime.timedelta(hours=24)
    expiring = []
    for expiry in (ITEMS.c.uid_expiration, ITEMS.c.oid_expiration):
        window = select(ITEMS.c.uid).where(ITEMS.c.item_state != ItemState.DELETED, expiry > now, expiry <= soon)
        expiring.append(
            await session.scalar(select(func.count()).select_from(window.limit(COUNTED_UP_TO + 1).subquery()))
        )
    corrupted = (await tally.replicas_by_state(session)).get(ItemState.CORRUPTED, 0)
    return {
        "below_target": {
            **_count(len(below) if complete else COUNTED_UP_TO + 1),
            "by_target_phase": by_target if complete else {},
            "oldest": oldest.isoformat() if oldest else None,
        },
        "replicas_expiring": _count(expiring[0] or 0),
        "items_expiring": _count(expiring[1] or 0),
        "corrupted_replicas": corrupted,
        "failures": await _failures(session),
    }


async def _failures(session: AsyncSession) -> list[dict[str, Any]]:
    """The latest failed copies, grouped by destination and kind of error (``PayloadMissing``, the
    part of the message before its first colon), each group with one of its messages."""
    recent = (
        select(Migration.destination_storage_id, Migration.last_error, Migration.completion_date)
        .where(Migration.status == MigrationStatus.FAILED)
        .order_by(Migration.completion_date.desc().nulls_last())
        .limit(RECENT_FAILURES)
        .subquery()
    )
    message = func.left(func.split_part(func.coalesce(recent.c.last_error, ""), "\n", 1), 200)
    kind = func.split_part(message, ":", 1)
    grouped = (
        select(
            recent.c.destination_storage_id,
            kind.label("kind"),
            func.max(message),
            func.count(),
            func.max(recent.c.completion_date),
        )
        .group_by(recent.c.destination_storage_id, kind)
        .order_by(func.count().desc())
        .limit(20)
    )
    return [
        {
            "destination_storage_id": str(storage_id) if storage_id else None,
            "error": error,
            "example": example,
            "count": count,
            "last": last.isoformat() if last else None,
        }
        for storage_id, error, example, count, last in await session.execute(grouped)
    ]


async def _migrations(session: AsyncSession, user: str | None) -> dict[str, Any]:
    by_status = await tally.migrations_by_status(session)
    oldest_due = await session.scalar(
        select(func.min(Migration.next_attempt_at)).where(
            Migration.status == MigrationStatus.PENDING, Migration.next_attempt_at <= func.now()
        )
    )
    active = (
        select(Migration.__table__)
        .where(Migration.status.in_([MigrationStatus.PENDING, MigrationStatus.RUNNING]))
        .order_by(Migration.migration_id)
        .limit(ACTIVE_COPIES)
    )
    if user is not None:
        active = active.where(Migration.user == user)
    return {
        "by_status": {status.value: by_status.get(status, 0) for status in MigrationStatus},
        "oldest_due": oldest_due.isoformat() if oldest_due else None,
        "active": row_dicts(await session.execute(with_item_names(active))),
    }


async def _copied_per_hour(session: AsyncSession) -> list[dict[str, Any]]:
    """Bytes of the copies that finished in each of the last CHART_HOURS hours, oldest first, hours
    without any included."""
    now = await session.scalar(select(func.date_trunc("hour", func.now())))
    assert now is not None
    first = now - datetime.timedelta(hours=CHART_HOURS - 1)
    hour = func.date_trunc("hour", Migration.completion_date)
    copied = dict(
        (
            await session.execute(
                select(hour, func.coalesce(func.sum(Migration.bytes_total), 0))
                .where(Migration.status == MigrationStatus.SUCCEEDED, Migration.completion_date >= first)
                .group_by(hour)
            )
        ).all()
    )
    hours = [first + datetime.timedelta(hours=offset) for offset in range(CHART_HOURS)]
    return [{"hour": start.isoformat(), "bytes": int(copied.get(start, 0))} for start in hours]


async def _recent_events(session: AsyncSession) -> list[dict[str, Any]]:
    newest = (
        select(StorageEvent.__table__, Storage.storage_name)
        .join(Storage, Storage.storage_id == StorageEvent.storage_id)
        .order_by(StorageEvent.event_id.desc())
        .limit(RECENT_EVENTS)
    )
    return row_dicts(await session.execute(newest))
