"""Point queries through DLM's API against the same SQL on the same indexes, in one run, on a catalogue
of a million replicas:

    python bench/api_query.py [--rows 1000000] [--requests 2000]

Each query is asked ``--requests`` times, one after another on one keep-alive connection (latency,
not throughput), through `dlm serve` and as a prepared statement on one asyncpg connection; p50 and p99
in milliseconds, and DLM's p99 over the raw p99 (goal: ≤ 2×). `GET /health/live` is the floor any
route pays for HTTP alone. The catalogue is written with COPY (triggers off: this measures reads), with
1000 replicas past their expiry. The database is DLM_BENCH_DATABASE_URL, else DLM_TEST_DATABASE_URL,
else the local PostgreSQL.
"""

import argparse
import asyncio
import datetime
import random
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

import asyncpg
import bench_db  # the benches' shared database helpers, beside this script
from bench_server import Connection, bench_storage, dlm_serve, percentile, timed

EXPIRED = 1000
COLUMNS = ["uid", "oid", "item_name", "storage_id", "uri", "item_state", "uid_phase", "oid_phase", "item_size",
           "uid_expiration", "item_checksum", "checksum_method"]  # fmt: skip


async def fill(url: str, rows: int, storage_id: uuid.UUID) -> list[tuple[uuid.UUID, str]]:
    """``rows`` READY replicas, each its own item; returns (uid, name) of a sample to ask for."""
    connection = await asyncpg.connect(bench_db.dsn(url))
    now = datetime.datetime.now(datetime.UTC)
    sample = []
    try:
        await connection.execute("SET session_replication_role = replica")  # no triggers: a reads benchmark

        def records(start: int, stop: int):  # noqa: ANN202
            for index in range(start, stop):
                uid = uuid.uuid4()
                name = f"obs-{index // 1000:05d}/product-{index:08d}.ms"
                expires = now - datetime.timedelta(days=1) if index < EXPIRED else now + datetime.timedelta(days=3650)
                if index % (rows // 200 or 1) == 0:
                    sample.append((uid, name))
                yield (
                    uid,
                    uid,
                    name,
                    storage_id,
                    name,
                    "READY",
                    "GAS",
                    "GAS",
                    1000 + index,
                    expires,
                    "0a1b2c3d",
                    "crc32c",
                )

        batch = 100_000
        for start in range(0, rows, batch):
            await connection.copy_records_to_table(
                "data_item", records=records(start, min(rows, start + batch)), columns=COLUMNS
            )
        await connection.execute("ANALYZE data_item")
    finally:
        await connection.close()
    return sample


async def run(options: argparse.Namespace) -> None:
    admin = bench_db.admin_url()
    url = await bench_db.fresh_database(admin)
    try:
        with tempfile.TemporaryDirectory(prefix="dlm-bench-query-") as work, dlm_serve(url, work) as (base, _):
            storage_id = await bench_storage(base, work)
            started = time.perf_counter()
            sample = await fill(url, options.rows, storage_id)
            http = Connection(base)
            print(f"catalogue: {options.rows:,} replicas written in {time.perf_counter() - started:.1f} s")

            raw = await asyncpg.connect(bench_db.dsn(url))
            names = [name for _, name in sample]
            uids = [uid for uid, _ in sample]

            def api(target: Callable[[], str]) -> Callable[[], Awaitable[object]]:
                async def call() -> object:
                    status, body = await http.request("GET", target())
                    assert status == 200, body
                    return body

                return call

            def sql(statement: str, argument: Callable[[], object] | None = None) -> Callable[[], Awaitable[object]]:
                async def call() -> object:
                    return await raw.fetch(statement, *([argument()] if argument else []))

                return call

            everything = "SELECT * FROM data_item WHERE "
            cases = [
                ("by item_name", api(lambda: "/request/query_data_item?" + urlencode({"item_name": random.choice(names)})),
                 sql(everything + "item_name = $1 ORDER BY uid_creation, uid LIMIT 1000", lambda: random.choice(names))),
                ("by uid", api(lambda: f"/request/query_data_item?uid={random.choice(uids)}"),
                 sql(everything + "uid = $1 ORDER BY uid_creation, uid LIMIT 1000", lambda: random.choice(uids))),
                ("params: state and name",
                 api(lambda: "/request/query_data_item?" + urlencode(
                     {"params": f"item_state=eq.READY&item_name=eq.{random.choice(names)}"})),
                 sql(everything + "item_state = 'READY' AND item_name = $1 ORDER BY uid_creation, uid LIMIT 1000",
                     lambda: random.choice(names))),
                ("query_expired (1000 rows)", api(lambda: "/request/query_expired"),
                 sql(everything + "uid_expiration < now() AND item_state = 'READY' "
                     "ORDER BY uid_expiration, uid LIMIT 1000")),
            ]  # fmt: skip
            floor = await timed(api(lambda: "/health/live"), options.requests)
            print(f"\n{'':28} {'DLM p50':>9} {'p99':>7} {'raw p50':>9} {'p99':>7} {'p99 ratio':>10}   (ms)")
            print(f"{'GET /health/live':28} {percentile(floor, 0.5):9.2f} {percentile(floor, 0.99):7.2f}")
            for name, through_dlm, direct in cases:
                count = options.requests if "expired" not in name else max(50, options.requests // 10)
                dlm_ms = await timed(through_dlm, count)
                raw_ms = await timed(direct, count)
                print(
                    f"{name:28} {percentile(dlm_ms, 0.5):9.2f} {percentile(dlm_ms, 0.99):7.2f} "
                    f"{percentile(raw_ms, 0.5):9.2f} {percentile(raw_ms, 0.99):7.2f} "
                    f"{percentile(dlm_ms, 0.99) / percentile(raw_ms, 0.99):9.1f}×"
                )
            await raw.close()
            await http.close()
    finally:
        await bench_db.drop_database(admin, url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=2000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
