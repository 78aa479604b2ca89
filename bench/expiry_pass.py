"""Expiry: one pass of DLM's expiry engine over N expired items on one POSIX storage (each payload
deleted, each row marked DELETED with its history event) against a bare loop of os.unlink over as
many files, in the same run; beside the floor of any crash-safe pass on this table (the two state
changes, DELETING then DELETED, of the same rows in bare SQL, batch by batch); and one pass over N
replicas past their uid_expiration that an earlier pass kept for their items (the steady state of an
archive whose replicas outlive their default 24 hours), which should find nothing to do, quickly.

    python bench/expiry_pass.py [--items 100000]

The database is DLM_BENCH_DATABASE_URL, else DLM_TEST_DATABASE_URL, else the local PostgreSQL.
"""

import argparse
import asyncio
import contextlib
import datetime
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bench_db  # the benches' shared database helpers, beside this script
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dlm.db.engine import create_engine, create_sessionmaker, transaction
from dlm.enums import LocationType, StorageInterface, StorageType
from dlm.ingest.service import ItemRegistration, register_items
from dlm.lifecycle import expiry
from dlm.storage.confinement import Confinement
from dlm.storage.service import init_location, init_storage

CHUNK = 20_000


def _make_files(root: Path, count: int) -> None:
    """``count`` small payloads, on disk as an archive's are by the time they expire: unlinking files
    the kernel has not yet written back costs a fraction (here 1.5-5 s for 100,000 instead of 8.5-9.5),
    and whether DLM's or the baseline's were would then decide the comparison."""
    for index in range(count):
        directory = root / f"d{index // 1000:04d}"
        if index % 1000 == 0:
            directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{index}").write_bytes(b"x" * 64)
    os.sync()


def bare_unlink(root: Path, count: int) -> float:
    _make_files(root, count)
    paths = [root / f"d{index // 1000:04d}" / f"f{index}" for index in range(count)]
    started = time.perf_counter()
    for path in paths:
        os.unlink(path)
    return time.perf_counter() - started


@contextlib.asynccontextmanager
async def expired_catalogue(
    admin_url: str, root: Path, count: int, *, kept: bool = False
) -> AsyncIterator[tuple[AsyncEngine, Any]]:
    """A fresh database holding ``count`` expired items on one POSIX storage under ``root``, as a
    pass meets them; ``kept``: replicas past uid_expiration that a previous pass kept for their items
    (their expiry_kept events are written here, in bulk)."""
    _make_files(root, count)
    url = await bench_db.fresh_database(admin_url)
    engine = create_engine(url, pool_size=4)
    try:
        sessionmaker = create_sessionmaker(engine)
        async with transaction(sessionmaker, actor="bench") as session:
            await init_location(session, location_name="bench", location_type=LocationType.LOCAL_DEV)
            await init_storage(
                session,
                confinement=Confinement(posix_roots=(root.resolve(),)),
                storage_name="bench",
                storage_type=StorageType.FILESYSTEM,
                storage_interface=StorageInterface.POSIX,
                root_directory=str(root),
                location_name="bench",
            )
        expired = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
        for start in range(0, count, CHUNK):
            entries = [
                ItemRegistration(
                    item_name=f"item-{index}",
                    uri=f"d{index // 1000:04d}/f{index}",
                    storage_name="bench",
                    **({"uid_expiration": expired} if kept else {"oid_expiration": expired}),
                    do_storage_access_check=False,
                )
                for index in range(start, min(start + CHUNK, count))
            ]
            async with transaction(sessionmaker, actor="bench") as session:
                await register_items(session, entries)
        if kept:
            async with transaction(sessionmaker, actor="bench") as session:
                await session.execute(
                    text(
                        "INSERT INTO data_item_event (uid, oid, event, new_value, actor) "
                        "SELECT uid, oid, :event, 'kept by an earlier pass', 'bench' FROM data_item"
                    ),
                    {"event": expiry.KEPT_EVENT},
                )
        # Items expire long after they are registered: by then autovacuum has analysed the table (on a
        # table loaded a moment ago the planner knows nothing of it and reads it whole).
        async with engine.connect() as connection:
            await connection.execute(text("ANALYZE data_item, data_item_event"))
            await connection.execute(text("CHECKPOINT"))
        os.sync()
        yield engine, sessionmaker
    finally:
        await engine.dispose()
        await bench_db.drop_database(admin_url, url)


async def dlm_expiry(admin_url: str, root: Path, count: int, *, kept: bool = False) -> float:
    """Seconds for one pass over ``count`` expired items (``kept``: see expired_catalogue)."""
    async with expired_catalogue(admin_url, root, count, kept=kept) as (_, sessionmaker):
        started = time.perf_counter()
        report = await expiry.run_once(sessionmaker)
        elapsed = time.perf_counter() - started
    if kept:
        assert report.deleted == report.kept == [], report.summary()
        assert sum(1 for _ in root.rglob("f*")) == count, "every payload kept"
    else:
        assert len(report.deleted) == count, report.summary()
        assert not any(root.rglob("f*")), "every payload deleted"
    return elapsed


# The two committed steps every crash-safe deletion of a replica takes (issue 25), as bare SQL on the
# same rows, batch by batch as the pass commits them: DLM's own floor on this table, with no decision,
# no lock, no read and no payload.
STATE_STEPS = (
    "UPDATE data_item SET item_state = 'DELETING' WHERE uid = ANY($1::uuid[])",
    (
        "UPDATE data_item SET item_state = 'DELETED', deleted = true, uid_deletion = now(), oid_phase = 'PLASMA', "
        "oid_deletion = now() WHERE uid = ANY($1::uuid[])"
    ),
)


async def state_changes_alone(admin_url: str, root: Path, count: int, batch: int = 1000) -> float:
    """Seconds for the two state changes of ``count`` expired replicas in SQL alone."""
    async with expired_catalogue(admin_url, root, count) as (engine, _), engine.connect() as connection:
        raw = (await connection.get_raw_connection()).driver_connection
        uids = [row[0] for row in await raw.fetch("SELECT uid FROM data_item ORDER BY uid")]
        started = time.perf_counter()
        for first in range(0, count, batch):
            for step in STATE_STEPS:
                async with raw.transaction():
                    await raw.execute(step, uids[first : first + batch])
        return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dlm-bench-expiry-") as directory:
        baseline = bare_unlink(Path(directory) / "unlink", args.items)
        dlm = await dlm_expiry(bench_db.admin_url(), Path(directory) / "dlm", args.items)
        floor = await state_changes_alone(bench_db.admin_url(), Path(directory) / "floor", args.items)
        steady = await dlm_expiry(bench_db.admin_url(), Path(directory) / "kept", args.items, kept=True)
    print(f"\nOne expiry pass over {args.items:,} expired items on one POSIX storage\n")
    print(f"| {'method':<47} | {'seconds':>8} | {'µs/item':>8} | {'vs baseline':>11} |")
    print(f"|{'-' * 49}|{'-' * 10}|{'-' * 10}|{'-' * 13}|")
    for label, seconds in (
        ("bare os.unlink loop (baseline)", baseline),
        ("DLM expiry.run_once (rows + payloads)", dlm),
        ("DELETING then DELETED in bare SQL (no payload)", floor),
        ("DLM expiry.run_once, all kept before (no-op)", steady),
    ):
        per_item = seconds / args.items * 1e6
        print(f"| {label:<47} | {seconds:8.2f} | {per_item:8.1f} | {seconds / baseline:10.1f}x |")


if __name__ == "__main__":
    asyncio.run(main())
