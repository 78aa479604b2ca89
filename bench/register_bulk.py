"""Bulk registration: DLM's POST /ingest/register_data_items against raw asyncpg inserts into the same
table (same triggers), and against a COPY into a table like it (same columns, defaults and indexes,
none of DLM's triggers), each into a fresh database, in the same run.

    python bench/register_bulk.py [--items 10000] [--rounds 3] [--rows 0]

``--rows`` first fills each database with that many replicas (COPY, triggers off, analysed), so that
the registrations go into a catalogue that is not empty.

The database is DLM_BENCH_DATABASE_URL, else DLM_TEST_DATABASE_URL, else the local PostgreSQL.
"""

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import bench_db  # the benches' shared database helpers, beside this script
from api_query import fill
from litestar.testing import AsyncTestClient

from dlm.app import create_app


async def _storage(client: AsyncTestClient, root: Path) -> None:
    await client.post("/storage/init_location", params={"location_name": "bench", "location_type": "local-dev"})
    response = await client.post(
        "/storage/init_storage",
        params={
            "storage_name": "bench",
            "storage_type": "filesystem",
            "storage_interface": "posix",
            "root_directory": str(root),
            "location_name": "bench",
        },
    )
    response.raise_for_status()


async def _preload(url: str, rows: int) -> None:
    if rows:
        connection = await asyncpg.connect(bench_db.dsn(url))
        try:
            storage_id = await connection.fetchval("SELECT storage_id FROM storage WHERE storage_name = 'bench'")
        finally:
            await connection.close()
        await fill(url, rows, storage_id)


async def dlm_bulk(admin_url: str, root: Path, items: int, check_payloads: bool, rows: int) -> float:
    url = await bench_db.fresh_database(admin_url)
    try:
        async with AsyncTestClient(create_app(bench_db.app_settings(url)), timeout=600) as client:
            await _storage(client, root)
            await _preload(url, rows)
            entries = [
                {
                    "item_name": f"item-{index}",
                    "uri": f"files/{index}.dat",
                    "storage_name": "bench",
                    "do_storage_access_check": check_payloads,
                }
                for index in range(items)
            ]
            started = time.perf_counter()
            response = await client.post("/ingest/register_data_items", json=entries)
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            assert len(response.json()) == items
            return elapsed
    finally:
        await bench_db.drop_database(admin_url, url)


async def raw_asyncpg(admin_url: str, root: Path, items: int, rows: int, *, copy: bool) -> float:
    """Single-row INSERTs into data_item (its triggers fire), or with ``copy`` a COPY into a table like
    it without them."""
    url = await bench_db.fresh_database(admin_url)
    try:
        connection = await asyncpg.connect(bench_db.dsn(url))
        try:
            location = await connection.fetchval(
                "INSERT INTO location (location_name, location_type) VALUES ('bench', 'local-dev') "
                "RETURNING location_id"
            )
            storage = await connection.fetchval(
                "INSERT INTO storage (location_id, storage_name, root_directory, storage_type, storage_interface) "
                "VALUES ($1, 'bench', $2, 'filesystem', 'posix') RETURNING storage_id",
                location,
                str(root),
            )
            await _preload(url, rows)
            if copy:
                await connection.execute(
                    "CREATE TABLE plain_item (LIKE data_item INCLUDING DEFAULTS INCLUDING INDEXES)"
                )
                await connection.execute("INSERT INTO plain_item SELECT * FROM data_item")
                await connection.execute("ANALYZE plain_item")
            uids = [uuid.uuid4() for _ in range(items)]
            # COPY has no trigger to give a new item its oid: it is written as the uid, as the trigger would.
            records = [
                (uid, uid, f"item-{index}", storage, f"files/{index}.dat", "READY") for index, uid in enumerate(uids)
            ]
            started = time.perf_counter()
            async with connection.transaction():
                if copy:
                    await connection.copy_records_to_table(
                        "plain_item",
                        records=records,
                        columns=["uid", "oid", "item_name", "storage_id", "uri", "item_state"],
                    )
                else:
                    await connection.executemany(
                        "INSERT INTO data_item (uid, item_name, storage_id, uri, item_state) VALUES ($1, $2, $3, $4, $5)",
                        [record[:1] + record[2:] for record in records],
                    )
            return time.perf_counter() - started
        finally:
            await connection.close()
    finally:
        await bench_db.drop_database(admin_url, url)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=0)
    args = parser.parse_args()
    admin_url = bench_db.admin_url()
    with tempfile.TemporaryDirectory(prefix="dlm-bench-") as directory:
        root = Path(directory)
        (root / "files").mkdir()
        for index in range(args.items):
            (root / "files" / f"{index}.dat").write_bytes(b"x" * 64)
        runs = {
            "raw asyncpg executemany (baseline)": lambda: raw_asyncpg(
                admin_url, root, args.items, args.rows, copy=False
            ),
            "COPY, a like table without triggers": lambda: raw_asyncpg(
                admin_url, root, args.items, args.rows, copy=True
            ),
            "DLM register_data_items, no payload check": lambda: dlm_bulk(
                admin_url, root, args.items, False, args.rows
            ),
            "DLM register_data_items, payloads stat+crc32c": lambda: dlm_bulk(
                admin_url, root, args.items, True, args.rows
            ),
        }
        results = {}
        for label, run in runs.items():
            results[label] = statistics.median([await run() for _ in range(args.rounds)])
    baseline = results["raw asyncpg executemany (baseline)"]
    print(
        f"\nRegistering {args.items:,} items in one transaction into {args.rows:,} existing replicas "
        f"(median of {args.rounds} rounds)\n"
    )
    print(f"| {'method':<46} | {'seconds':>8} | {'items/s':>9} | {'vs baseline':>11} |")
    print(f"|{'-' * 48}|{'-' * 10}|{'-' * 11}|{'-' * 13}|")
    for label, seconds in results.items():
        print(f"| {label:<46} | {seconds:8.2f} | {args.items / seconds:9,.0f} | {seconds / baseline:10.2f}x |")


if __name__ == "__main__":
    asyncio.run(main())
