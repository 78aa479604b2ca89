"""What the operator page shows of one storage: the storage and how full it is, how its fill changed
over the last FILL_DAYS days (from DLM's own rows: the replicas created and deleted since, read by
their time indexes, so the cost follows recent activity, not the catalogue's size), its replicas by
state, the copies under way into and out of it, its latest copies and failures, and its events."""

import datetime
import uuid
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.data_item import ITEMS
from dlm.db import tally
from dlm.db.models import Migration, StorageEvent
from dlm.enums import ItemState, MigrationStatus
from dlm.migration.service import with_item_names
from dlm.rows import row_dicts
from dlm.storage.service import resolve_storage, storage_usage

FILL_DAYS = 30
LATEST_COPIES = 20
RECENT_EVENTS = 20
UNDER_WAY = (MigrationStatus.PENDING, MigrationStatus.RUNNING)


async def storage_page(session: AsyncSession, *, storage_name: str = "", storage_id: str = "") -> dict[str, Any]:
    storage = await resolve_storage(session, storage_name=storage_name, storage_id=storage_id)
    [usage] = await storage_usage(session, storage_id=str(storage.storage_id))
    return {
        "storage": {
            **usage,
            "storage_phase": storage.storage_phase.value,
            "storage_interface": storage.storage_interface.value,
            "storage_type": storage.storage_type.value,
            "root_directory": storage.root_directory,
            "storage_available": storage.storage_available,
            "storage_retired": storage.storage_retired,
            "storage_permissions": storage.storage_permissions,
        },
        "fill": await _fill(session, storage.storage_id, usage["used_bytes"]),
        "replicas": await _replicas(session, storage.storage_id),
        "copies_under_way": {
            "in": await _under_way(session, Migration.destination_storage_id == storage.storage_id),
            "out": await _under_way(session, Migration.source_storage_id == storage.storage_id),
        },
        "latest_copies": await _latest_copies(session, storage.storage_id),
        "events": row_dicts(
            await session.execute(
                select(StorageEvent.__table__)
                .where(StorageEvent.storage_id == storage.storage_id)
                .order_by(StorageEvent.event_id.desc())
                .limit(RECENT_EVENTS)
            )
        ),
    }


async def _replicas(session: AsyncSession, storage_id: uuid.UUID) -> dict[str, int]:
    return {
        state.value: count
        for held_on, state, count in await tally.replicas_by_storage_and_state(session)
        if held_on == storage_id
    }


async def _fill(session: AsyncSession, storage_id: uuid.UUID, held_now: int) -> list[dict[str, Any]]:
    """Bytes DLM held on the storage at the end of each of the last FILL_DAYS days (today: now): what it
    holds now, less what was created since and is still there, plus what was deleted since but
    existed then."""
    today = await session.scalar(select(func.date_trunc("day", func.now())))
    assert today is not None
    start = today - datetime.timedelta(days=FILL_DAYS - 1)
    day = func.date_trunc("day", ITEMS.c.uid_creation)
    size = func.coalesce(func.sum(ITEMS.c.item_size), 0)
    created = dict(
        (
            await session.execute(
                select(day, size)
                .where(
                    ITEMS.c.uid_creation >= start,
                    ITEMS.c.storage_id == storage_id,
                    ITEMS.c.item_state != ItemState.DELETED,
                )
                .group_by(day)
            )
        ).all()
    )
    went = func.date_trunc("day", ITEMS.c.uid_deletion)
    deleted = (
        await session.execute(
            select(day, went, size)
            .where(
                ITEMS.c.item_state == ItemState.DELETED,
                ITEMS.c.uid_deletion >= start,
                ITEMS.c.storage_id == storage_id,
            )
            .group_by(day, went)
        )
    ).all()
    fill = []
    for offset in range(FILL_DAYS):
        end = start + datetime.timedelta(days=offset)  # the day starting here, counted at its end
        held = held_now - sum(int(total) for created_on, total in created.items() if created_on > end)
        held += sum(int(total) for created_on, deleted_on, total in deleted if created_on <= end < deleted_on)
        fill.append({"day": end.date().isoformat(), "bytes": held})
    return fill


async def _under_way(session: AsyncSession, this_storage: ColumnElement[bool]) -> dict[str, int]:
    counted = await session.execute(
        select(Migration.status, func.count())
        .where(Migration.status.in_(UNDER_WAY), this_storage)
        .group_by(Migration.status)
    )
    found = dict(counted.all())
    return {status.value: int(found.get(status, 0)) for status in UNDER_WAY}


async def _latest_copies(session: AsyncSession, storage_id: uuid.UUID) -> list[dict[str, Any]]:
    latest = (
        select(Migration.__table__)
        .where((Migration.destination_storage_id == storage_id) | (Migration.source_storage_id == storage_id))
        .order_by(Migration.migration_id.desc())
        .limit(LATEST_COPIES)
    )
    return row_dicts(await session.execute(with_item_names(latest)))
