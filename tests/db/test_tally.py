"""The running tallies (revision 0011) always say what counting the catalogue would say, folded or
not, and writers never wait for one another on them."""

import asyncio
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.data_item import ITEMS
from dlm.db import tally
from dlm.db.engine import transaction
from dlm.db.models import Migration
from dlm.enums import ItemState, Phase
from tests.conftest import Registry, _asyncpg_dsn
from tests.migration.conftest import wait_for


async def _counted(session: AsyncSession) -> tuple[dict[Any, tuple[int, int]], list[tuple[Any, ...]], dict[Any, int]]:
    """What the tallies stand for, counted over the tables themselves."""
    held = {
        storage_id: (int(size), count)
        for storage_id, size, count in await session.execute(
            select(ITEMS.c.storage_id, func.coalesce(func.sum(ITEMS.c.item_size), 0), func.count())
            .where(ITEMS.c.item_state != ItemState.DELETED, ITEMS.c.storage_id.is_not(None))
            .group_by(ITEMS.c.storage_id)
        )
    }
    by_state = [
        tuple(row)
        for row in await session.execute(
            select(ITEMS.c.item_state, ITEMS.c.oid_phase, func.count())
            .group_by(ITEMS.c.item_state, ITEMS.c.oid_phase)
            .order_by(ITEMS.c.item_state, ITEMS.c.oid_phase)
        )
    ]
    migrations = dict(
        tuple(row) for row in await session.execute(select(Migration.status, func.count()).group_by(Migration.status))
    )  # type: ignore[misc]
    return held, by_state, migrations


async def _tallied(session: AsyncSession) -> tuple[dict[Any, tuple[int, int]], list[tuple[Any, ...]], dict[Any, int]]:
    return (
        await tally.held_by_storage(session),
        list(await tally.replicas_by_state_and_phase(session)),
        await tally.migrations_by_status(session),
    )


async def test_the_tallies_follow_every_change_and_fold_to_one_row_per_key(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await registry.storage("archive", root=tmp_path / "archive", phase="SOLID")
    uids = [await registry.register(f"obs-{index}") for index in range(5)]
    await registry.client.post("/ingest/init_data_item", params={"item_name": "pending"})  # no storage yet
    copy = await registry.client.post(
        "/migration/copy_data_item", params={"uid": uids[0], "destination_name": "archive"}
    )
    await wait_for(registry.client, copy.json()["migration_id"])  # a new replica; the item's phase rises
    await registry.client.patch("/request/set_state", params={"uid": uids[1], "state": "CORRUPTED"})
    deleted = await registry.client.post("/storage/delete_data_item_payload", params={"uid": uids[2], "force": "true"})
    assert deleted.status_code == 200, deleted.text
    async with transaction(sessionmaker, actor="test") as session:
        counted = await _counted(session)
        assert counted[0] and counted[1] and counted[2], "there is something to count"
        assert await _tallied(session) == counted
        rows_before = await session.scalar(text("SELECT count(*) FROM replica_tally"))
        await tally.fold(session)
        assert await _tallied(session) == counted, "folding changes no count"
        keys = await session.scalar(
            text("SELECT count(*) FROM (SELECT DISTINCT storage_id, item_state, oid_phase FROM replica_tally) AS keys")
        )
        assert await session.scalar(text("SELECT count(*) FROM replica_tally")) == keys < rows_before
        assert await session.scalar(text("SELECT count(*) FROM migration_tally")) == len(counted[2])
    assert (ItemState.READY, Phase.SOLID, 2) in counted[1], "the copied item's replicas moved to SOLID"


async def test_writers_never_wait_on_a_count(registry: Registry, database_url: str) -> None:
    storage_id = (await registry.client.get("/storage/query_storage", params={"storage_name": "disk"})).json()[0][
        "storage_id"
    ]
    first, second = [await asyncpg.connect(**_asyncpg_dsn(database_url)) for _ in range(2)]
    try:
        for connection in (first, second):
            await connection.execute("BEGIN")
            await connection.execute("SET LOCAL lock_timeout = '2s'")
        insert = (
            "INSERT INTO data_item (uid, item_name, storage_id, uri, item_state, item_size) "
            "VALUES ($1, $2, $3, $2, 'READY', 10)"
        )
        # Both transactions add to the same storage's counts and stay open: neither waits for the other.
        await first.execute(insert, uuid.uuid4(), "one", uuid.UUID(storage_id))
        await asyncio.wait_for(second.execute(insert, uuid.uuid4(), "two", uuid.UUID(storage_id)), timeout=5)
        await first.execute("UPDATE data_item SET item_size = 20 WHERE item_name = 'one'")
        await asyncio.wait_for(
            second.execute("UPDATE data_item SET item_state = 'DELETED' WHERE item_name = 'two'"), timeout=5
        )
        for connection in (first, second):
            await connection.execute("COMMIT")
        held = await first.fetchrow(
            "SELECT sum(bytes) AS bytes, sum(replicas) AS replicas FROM replica_tally "
            "WHERE storage_id = $1 AND item_state <> 'DELETED'",
            uuid.UUID(storage_id),
        )
        assert (held["bytes"], held["replicas"]) == (20, 1)
    finally:
        for connection in (first, second):
            await connection.close()


async def test_phases_are_declared_in_the_order_of_their_weights(database_url: str) -> None:
    # ix_data_item_below_target compares oid_phase < target_phase as the enum orders them.
    connection = await asyncpg.connect(**_asyncpg_dsn(database_url))
    try:
        labels = await connection.fetchval("SELECT enum_range(NULL::phase_type)::text[]")
    finally:
        await connection.close()
    assert labels == [phase.value for phase in sorted(Phase, key=lambda phase: phase.weight)]


async def test_a_fold_leaves_the_work_to_one_already_under_way(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    for index in range(3):
        await registry.register(f"obs-{index}")
    count_rows = text("SELECT count(*) FROM replica_tally")
    async with transaction(sessionmaker, actor="first") as first:
        await tally.fold(first)  # holds the fold lock until it commits
        async with transaction(sessionmaker, actor="second") as second:
            before = await second.scalar(count_rows)
            await asyncio.wait_for(tally.fold(second), timeout=5)  # returns at once, folds nothing
            assert await second.scalar(count_rows) == before
            assert await tally.held_by_storage(second), "reading needs no fold"
