"""Replication planning (issue 25: "the planning of 10,000 items takes well under a second of database
time"): one pass of DLM's replication engine over N items registered on a GAS POSIX storage, each
wanting a SOLID replica, with no copy worker running, so that the pass alone is timed (choosing a
destination for each, checking its room and paths, queueing a replica and a job each); beside the
floor of any plan on DLM's tables: the same replicas and jobs written by two INSERT ... SELECT
statements in bare SQL (same triggers, no reads, no decisions).

    python bench/replication_planning.py [--items 10000]

"In statements" is the time the pass spent waiting for PostgreSQL's answers (round trips included):
an upper bound on its database time. The database is DLM_BENCH_DATABASE_URL, else
DLM_TEST_DATABASE_URL, else the local PostgreSQL.
"""

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bench_db  # the benches' shared database helpers, beside this script
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from dlm.db.engine import create_engine, create_sessionmaker, transaction
from dlm.enums import LocationType, Phase, StorageInterface, StorageType
from dlm.ingest.service import ItemRegistration, register_items
from dlm.lifecycle import replication
from dlm.storage.confinement import Confinement
from dlm.storage.service import init_location, init_storage

CHUNK = 20_000


@contextlib.asynccontextmanager
async def catalogue(admin_url: str, root: Path, count: int) -> AsyncIterator[tuple[AsyncEngine, Any, dict[str, str]]]:
    """A fresh database with ``count`` items on a GAS storage and an empty SOLID one; yields the
    engine, a sessionmaker and the two storages' ids by name."""
    url = await bench_db.fresh_database(admin_url)
    engine = create_engine(url, pool_size=4)
    try:
        sessionmaker = create_sessionmaker(engine)
        storages = {}
        async with transaction(sessionmaker, actor="bench") as session:
            await init_location(session, location_name="bench", location_type=LocationType.LOCAL_DEV)
            for name, phase in (("gas", Phase.GAS), ("solid", Phase.SOLID)):
                (root / name).mkdir(parents=True)
                storage_id = await init_storage(
                    session,
                    confinement=Confinement(posix_roots=(root.resolve(),)),
                    storage_name=name,
                    storage_type=StorageType.FILESYSTEM,
                    storage_interface=StorageInterface.POSIX,
                    root_directory=str(root / name),
                    location_name="bench",
                    storage_phase=phase,
                )
                storages[name] = str(storage_id)
        for start in range(0, count, CHUNK):
            entries = [
                ItemRegistration(
                    item_name=f"obs-{index:07d}.dat",
                    uri=f"batch/obs-{index:07d}.dat",
                    storage_name="gas",
                    item_size=4096,
                    do_storage_access_check=False,
                )
                for index in range(start, min(start + CHUNK, count))
            ]
            async with transaction(sessionmaker, actor="bench") as session:
                await register_items(session, entries)
        async with engine.connect() as connection:
            await connection.execute(text("ANALYZE"))
        yield engine, sessionmaker, storages
    finally:
        await engine.dispose()
        await bench_db.drop_database(admin_url, url)


async def dlm_plan(admin_url: str, root: Path, count: int) -> tuple[float, float]:
    """Seconds for one replication pass over ``count`` items, and of those, seconds in statements."""
    async with catalogue(admin_url, root, count) as (engine, sessionmaker, _):
        waiting = 0.0
        began: list[float] = []

        def before(*_: Any) -> None:
            began.append(time.perf_counter())

        def after(*_: Any) -> None:
            nonlocal waiting
            waiting += time.perf_counter() - began.pop()

        event.listen(engine.sync_engine, "before_cursor_execute", before)
        event.listen(engine.sync_engine, "after_cursor_execute", after)
        started = time.perf_counter()
        report = await replication.run_once(sessionmaker)
        elapsed = time.perf_counter() - started
        assert len(report.queued) == count and not report.unmet, report.summary()
        return elapsed, waiting


FLOOR = (
    (
        "INSERT INTO data_item (oid, item_name, storage_id, uri, item_type, item_size, target_phase, item_state) "
        "SELECT oid, item_name, CAST($2 AS uuid), uri, item_type, item_size, target_phase, 'INITIALISED' "
        "FROM data_item WHERE storage_id = CAST($1 AS uuid)"
    ),
    (
        "INSERT INTO migration (oid, source_uid, destination_uid, source_storage_id, destination_storage_id, "
        "bytes_total) SELECT s.oid, s.uid, d.uid, s.storage_id, d.storage_id, s.item_size "
        "FROM data_item s JOIN data_item d ON d.oid = s.oid AND d.storage_id = CAST($2 AS uuid) "
        "WHERE s.storage_id = CAST($1 AS uuid)"
    ),
)


async def bare_inserts(admin_url: str, root: Path, count: int) -> float:
    """Seconds for the replicas and jobs of ``count`` copies written in bare SQL."""
    async with catalogue(admin_url, root, count) as (engine, _, storages), engine.connect() as connection:
        raw = (await connection.get_raw_connection()).driver_connection
        started = time.perf_counter()
        async with raw.transaction():
            for statement in FLOOR:
                await raw.execute(statement, storages["gas"], storages["solid"])
        return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dlm-bench-planning-") as directory:
        floor = await bare_inserts(bench_db.admin_url(), Path(directory) / "floor", args.items)
        elapsed, waiting = await dlm_plan(bench_db.admin_url(), Path(directory) / "dlm", args.items)
    print(f"\nOne replication pass planning {args.items:,} copies GAS POSIX -> SOLID POSIX (no copy running)\n")
    print(f"| {'method':<52} | {'seconds':>8} | {'µs/item':>8} | {'vs floor':>8} |")
    print(f"|{'-' * 54}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for label, seconds in (
        ("replicas and jobs in two INSERT ... SELECT (floor)", floor),
        ("DLM replication.run_once", elapsed),
        ("  of which in statements (database + round trips)", waiting),
    ):
        per_item = seconds / args.items * 1e6
        print(f"| {label:<52} | {seconds:8.2f} | {per_item:8.1f} | {seconds / floor:7.1f}x |")


if __name__ == "__main__":
    asyncio.run(main())
