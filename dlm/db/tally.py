"""Running counts of replicas and copies, kept by triggers (revision 0011): how much lies on each
storage and how many replicas and copies are in each state, read from a few rows however large the
catalogue. The triggers append each statement's change; ``fold`` sums the rows into one per key."""

import uuid
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.db.models import MIGRATION_TALLY, REPLICA_TALLY
from dlm.enums import ItemState, MigrationStatus, Phase

# Rows added while a fold runs (by transactions it cannot see yet) are left for the next fold.
FOLDS = [
    text(
        "WITH folded AS (DELETE FROM replica_tally RETURNING *) "
        "INSERT INTO replica_tally (storage_id, item_state, oid_phase, replicas, bytes) "
        "SELECT storage_id, item_state, oid_phase, sum(replicas), sum(bytes) FROM folded GROUP BY 1, 2, 3 "
        "HAVING sum(replicas) <> 0 OR sum(bytes) <> 0"
    ),
    text(
        "WITH folded AS (DELETE FROM migration_tally RETURNING *) "
        "INSERT INTO migration_tally (status, migrations) "
        "SELECT status, sum(migrations) FROM folded GROUP BY 1 HAVING sum(migrations) <> 0"
    ),
]


# The advisory lock a fold holds for its transaction: one fold at a time across every DLM process.
FOLD_LOCK = 0x54414C59  # "TALY"


async def fold(session: AsyncSession) -> None:
    """One row per key again. The capacity pass and the metrics call this; reading is correct either
    way, only slower the more rows have accumulated. When another process is folding, this one leaves
    it to that one rather than queue behind its row locks."""
    if await session.scalar(select(func.pg_try_advisory_xact_lock(FOLD_LOCK))):
        for statement in FOLDS:
            await session.execute(statement)


async def held_by_storage(
    session: AsyncSession, storage_ids: list[uuid.UUID] | None = None
) -> dict[uuid.UUID, tuple[int, int]]:
    """Bytes and replicas (not DELETED) DLM holds on each storage that holds any; only on
    ``storage_ids`` when given."""
    replicas = func.sum(REPLICA_TALLY.c.replicas)
    query = (
        select(REPLICA_TALLY.c.storage_id, func.sum(REPLICA_TALLY.c.bytes), replicas)
        .where(REPLICA_TALLY.c.item_state != ItemState.DELETED, REPLICA_TALLY.c.storage_id.is_not(None))
        .group_by(REPLICA_TALLY.c.storage_id)
        .having(replicas != 0)
    )
    if storage_ids is not None:
        query = query.where(REPLICA_TALLY.c.storage_id.in_(storage_ids))
    return {storage_id: (int(held), int(count)) for storage_id, held, count in (await session.execute(query)).all()}


async def replicas_by_state_and_phase(session: AsyncSession) -> list[tuple[ItemState, Phase, int]]:
    """How many replicas are in each state with each item phase (only those with any)."""
    replicas = func.sum(REPLICA_TALLY.c.replicas)
    counted = await session.execute(
        select(REPLICA_TALLY.c.item_state, REPLICA_TALLY.c.oid_phase, replicas)
        .group_by(REPLICA_TALLY.c.item_state, REPLICA_TALLY.c.oid_phase)
        .having(replicas != 0)
        .order_by(REPLICA_TALLY.c.item_state, REPLICA_TALLY.c.oid_phase)
    )
    return [(state, phase, int(count)) for state, phase, count in counted]


async def replicas_by_storage_and_state(session: AsyncSession) -> list[tuple[uuid.UUID | None, ItemState, int]]:
    """How many replicas each storage holds in each state (only those with any)."""
    replicas = func.sum(REPLICA_TALLY.c.replicas)
    counted = await session.execute(
        select(REPLICA_TALLY.c.storage_id, REPLICA_TALLY.c.item_state, replicas)
        .group_by(REPLICA_TALLY.c.storage_id, REPLICA_TALLY.c.item_state)
        .having(replicas != 0)
        .order_by(REPLICA_TALLY.c.storage_id, REPLICA_TALLY.c.item_state)
    )
    return [(storage_id, state, int(count)) for storage_id, state, count in counted]


async def replicas_by_state(session: AsyncSession) -> dict[ItemState, int]:
    counts: dict[ItemState, int] = {}
    for state, _, count in await replicas_by_state_and_phase(session):
        counts[state] = counts.get(state, 0) + count
    return counts


async def migrations_by_status(session: AsyncSession) -> dict[MigrationStatus, int]:
    """How many copies are in each status (only those with any)."""
    migrations = func.sum(MIGRATION_TALLY.c.migrations)
    counted: Any = await session.execute(
        select(MIGRATION_TALLY.c.status, migrations).group_by(MIGRATION_TALLY.c.status).having(migrations != 0)
    )
    return {status: int(count) for status, count in counted}
