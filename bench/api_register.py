"""Registration through DLM's API by 8 concurrent clients against raw single-row INSERTs into the same
table (same triggers) over 8 asyncpg connections, in one run:

    python bench/api_register.py [--clients 8] [--items 4000] [--rows 0] [--servers 1]

DLM registers ``--items`` items (POST /ingest/register_data_item, one per request, keep-alive, no
payload check: the comparison is of the database path), and prints requests per second and latency
p50/p99 beside the raw inserts per second. ``--rows`` first fills the table with that many items
(COPY, triggers off) so that the registrations go into a catalogue that is not empty. The database is
DLM_BENCH_DATABASE_URL, else DLM_TEST_DATABASE_URL, else the local PostgreSQL.
"""

import argparse
import asyncio
import contextlib
import tempfile
import time
import uuid
from urllib.parse import urlencode

import asyncpg
import bench_db  # the benches' shared database helpers, beside this script
from api_query import fill
from bench_server import Connection, bench_storage, dlm_serve, percentile


async def through_dlm(bases: list[str], clients: int, items: int) -> tuple[float, list[float]]:
    latencies: list[float] = []

    async def client(number: int) -> None:
        connection = Connection(bases[number % len(bases)])
        for index in range(number, items, clients):
            query = urlencode({"item_name": f"api/{index:08d}", "uri": f"api/{index:08d}", "storage_name": "bench",
                               "do_storage_access_check": "false"})  # fmt: skip
            started = time.perf_counter()
            status, body = await connection.request("POST", f"/ingest/register_data_item?{query}")
            latencies.append((time.perf_counter() - started) * 1000)
            assert status == 200, body
        await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(number) for number in range(clients)))
    return items / (time.perf_counter() - started), latencies


async def raw_inserts(url: str, storage_id: uuid.UUID, clients: int, items: int) -> float:
    connections = [await asyncpg.connect(bench_db.dsn(url)) for _ in range(clients)]
    statement = (
        "INSERT INTO data_item (uid, item_name, storage_id, uri, item_state, uid_phase, oid_phase) "
        "VALUES ($1, $2, $3, $2, 'READY', 'GAS', 'GAS')"
    )

    async def client(number: int) -> None:
        for index in range(number, items, clients):
            await connections[number].execute(statement, uuid.uuid4(), f"raw/{index:08d}", storage_id)

    started = time.perf_counter()
    await asyncio.gather(*(client(number) for number in range(clients)))
    took = time.perf_counter() - started
    for connection in connections:
        await connection.close()
    return items / took


async def run(options: argparse.Namespace) -> None:
    admin = bench_db.admin_url()
    url = await bench_db.fresh_database(admin)
    try:
        with tempfile.TemporaryDirectory(prefix="dlm-bench-register-") as work, contextlib.ExitStack() as servers:
            bases = [
                servers.enter_context(dlm_serve(url, work, data_dir=f"{work}/dlm-{number}"))[0]
                for number in range(options.servers)
            ]
            base = bases[0]
            storage_id = await bench_storage(base, work)
            if options.rows:
                await fill(url, options.rows, storage_id)
            raw = await raw_inserts(url, storage_id, options.clients, options.items)
            rate, latencies = await through_dlm(bases, options.clients, options.items)
            print(f"{options.items} registrations by {options.clients} clients into {options.rows:,} existing items, "
                  f"{options.servers} dlm serve process(es)")  # fmt: skip
            print(f"{'DLM POST /ingest/register_data_item':40} {rate:8.0f} req/s  "
                  f"p50 {percentile(latencies, 0.5):6.1f} ms  p99 {percentile(latencies, 0.99):6.1f} ms")  # fmt: skip
            print(f"{'raw asyncpg single-row INSERT':40} {raw:8.0f} rows/s")
            print(f"\nDLM / raw: {rate / raw:.0%} (goal ≥ 50 %)")
    finally:
        await bench_db.drop_database(admin, url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--items", type=int, default=4000)
    parser.add_argument("--rows", type=int, default=0)
    parser.add_argument("--servers", type=int, default=1, help="dlm serve processes, clients spread over them")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
