"""The audit's claim of its next replica at catalogue scale: the claim's own SQL on a million READY
replicas, with the index it reads (ix_data_item_audit_due) and, in the same run, without it:

    python bench/audit_claim.py [--rows 1000000]

The database is DLM_BENCH_DATABASE_URL, else DLM_TEST_DATABASE_URL, else the local PostgreSQL.
"""

import argparse
import asyncio
import statistics
import time

import asyncpg
import bench_db  # the benches' shared database helpers, beside this script
from api_query import fill

CLAIM = (
    "SELECT uid FROM data_item WHERE item_state = 'READY' AND storage_id IS NOT NULL "
    "AND (last_check IS NULL OR last_check <= now() - interval '1 day') "
    "ORDER BY last_check NULLS FIRST, uid LIMIT 1 FOR UPDATE SKIP LOCKED"
)


async def run(rows: int) -> None:
    admin = bench_db.admin_url()
    url = await bench_db.fresh_database(admin)
    try:
        connection = await asyncpg.connect(bench_db.dsn(url))
        await connection.execute("INSERT INTO location (location_name, location_type) VALUES ('bench', 'local-dev')")
        storage_id = await connection.fetchval(
            "INSERT INTO storage (storage_name, location_id, storage_type, storage_interface, root_directory) "
            "SELECT 'bench', location_id, 'filesystem', 'posix', '/tmp' FROM location RETURNING storage_id"
        )
        await fill(url, rows, storage_id)
        for label in ("with ix_data_item_audit_due", "without it (before revision 0010)"):
            took = []
            for _ in range(5):
                async with connection.transaction():
                    started = time.perf_counter()
                    await connection.fetch(CLAIM)
                    took.append((time.perf_counter() - started) * 1000)
            print(f"audit claim at {rows:,} READY replicas, {label}: median {statistics.median(took):.2f} ms")
            await connection.execute("DROP INDEX IF EXISTS ix_data_item_audit_due")
        await connection.close()
    finally:
        await bench_db.drop_database(admin, url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    asyncio.run(run(parser.parse_args().rows))


if __name__ == "__main__":
    main()
