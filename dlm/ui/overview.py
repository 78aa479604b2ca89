"""What the operator page's overview shows, read in one transaction: storages and how full they are,
items by state and phase, the copy queue, bytes copied per hour, recent storage events, and what the
engines of this process last did."""

import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.db import tally
from dlm.db.models import Migration, Storage, StorageEvent
from dlm.enums import MigrationStatus
from dlm.rows import row_dicts
from dlm.storage.service import storage_usage

RECENT_EVENTS = 20
ACTIVE_COPIES = 20
CHART_HOURS = 24


async def overview(session: AsyncSession, *, last_passes: dict[str, Any], user: str | None = None) -> dict[str, Any]:
    """The overview; ``user``: the copies listed are only this user's (below the operator role)."""
    return {
        "storages": await _storages(session),
        "items": await _items(session),
        "migrations": await _migrations(session, user),
        "copied_per_hour": await _copied_per_hour(session),
        "storage_events": await _recent_events(session),
        "engines": {name: last_passes[name] for name in sorted(last_passes)},
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


async def _items(session: AsyncSession) -> list[dict[str, Any]]:
    counted = await tally.replicas_by_state_and_phase(session)
    return [{"item_state": state.value, "oid_phase": phase.value, "count": count} for state, phase, count in counted]


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
        "active": row_dicts(await session.execute(active)),
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
