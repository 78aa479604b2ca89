"""Build a catalogue the size of an observatory's for the scale benchmarks, in minutes:

    python bench/make_catalogue.py [--items 10000000] [--database dlm_catalogue]

The database (made at DLM's head revision, replaced if it exists) is left in place for
`bench/catalogue_queries.py`, and its URL printed. What it holds, per item number i:

- one replica on `gas-a` (POSIX, GAS, site A); 30 % also on `solid-b` (SOLID, site B); 5 % also on
  `liquid-c` (LIQUID, site C); each item's phase is what its replicas reach, and so is its target:
  the replication engine has nothing to do;
- 1 % containers, each with 20 registered members (`parents`);
- 3 % DELETED (expired long ago, every replica), 0.5 % INITIALISED (no payload yet), the rest READY;
- creation times spread over three years; names `pb-<date>/eb-<n>/scan-<i>.ms`; sizes from 1 kB to
  10 GB; metadata on a tenth; every READY replica audited within the last six days (the audit has
  nothing due); one item in ten thousand expiring within the next day (`query_expired?offset=P1D`
  finds them, the expiry engine has nothing to do yet);
- the history the triggers would have written (creation, storage, uri, phases, expiries, state
  changes), with realistic times; a SUCCEEDED migration for every replica after the first.

PostgreSQL writes the rows itself (`INSERT … SELECT` over `generate_series`, in chunks): no row
crosses the network, which beats COPY from a client. DLM's triggers are off while it loads
(`session_replication_role = replica`, so the server account must be a superuser) because the rows
carry what they would have computed (oids, history); the indexes are built once at the end, then the
tables are vacuumed and analysed. The database is DLM_BENCH_DATABASE_URL's server, else
DLM_TEST_DATABASE_URL's, else the local PostgreSQL.
"""

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import asyncpg
import bench_db  # the benches' shared database helpers, beside this script
from sqlalchemy.engine import make_url

from dlm.db import schema

TABLES = ("data_item", "data_item_event", "migration")
# name, location, phase, and which item numbers have a replica there (SQL on i)
STORAGES = [
    ("gas-a", "site-a", "GAS", "true"),
    ("solid-b", "site-b", "SOLID", "i % 10 < 3"),
    ("liquid-c", "site-c", "LIQUID", "i % 20 = 0"),
]
CHUNK = 250_000


# The history the insert and update triggers would have written for each new replica.
HISTORY_SQL = """
INSERT INTO data_item_event (event_time, uid, oid, event, old_value, new_value, actor)
SELECT d.uid_creation + e.position * interval '1 millisecond', d.uid, d.oid, e.event, e.old_value, e.new_value,
    e.actor
FROM replica d
CROSS JOIN LATERAL (VALUES
    (1, 'created', NULL, 'INITIALISED', 'pipeline'),
    (2, 'storage_id', NULL, d.storage_id::text, 'pipeline'),
    (3, 'uri', NULL, d.uri, 'pipeline'),
    (4, 'uid_phase', NULL, d.uid_phase::text, 'pipeline'),
    (5, 'target_phase', NULL, d.target_phase::text, 'pipeline'),
    (6, 'uid_expiration', NULL, dlm_timestamp_text(d.uid_expiration), 'pipeline'),
    (7, 'oid_expiration', NULL, dlm_timestamp_text(d.oid_expiration), 'pipeline'),
    (8, 'item_state', 'INITIALISED', CASE WHEN d.item_state <> 'INITIALISED' THEN 'READY' END, 'pipeline'),
    (9, 'item_state', 'READY', CASE WHEN d.item_state = 'DELETED' THEN 'DELETED' END, 'expiry')
) AS e(position, event, old_value, new_value, actor)
WHERE e.new_value IS NOT NULL
ORDER BY d.uid, e.position
"""

# Every replica after the first was copied there from the first (on gas-a) by the replication engine.
MIGRATIONS_SQL = """
INSERT INTO migration (oid, source_uid, destination_uid, source_storage_id, destination_storage_id, "user",
    "group", complete, date, completion_date, status, bytes_total, bytes_done, attempts)
SELECT d.oid, d.oid, d.uid, (SELECT storage_id FROM storage WHERE storage_name = 'gas-a'), d.storage_id,
    'replication', 'replication', true, d.uid_creation - interval '1 hour', d.uid_creation, 'SUCCEEDED',
    d.item_size, d.item_size, 1
FROM replica d
"""


DEFAULT_ROOT = Path(tempfile.gettempdir()) / "dlm-catalogue"


def replicas_sql(number: int, storage: str, phase: str, present: str) -> str:
    """One replica on ``storage`` of every item in [$1, $2) that has one there, as the triggers would
    have left it. Replica ``number`` of item i has uid md5('i-number'); replica 0's uid is the oid."""
    first = number == 0
    return f"""
    WITH replica AS (
    INSERT INTO data_item (uid, oid, item_version, item_name, item_type, storage_id, uri, item_format,
        item_mime_type, uid_phase, oid_phase, target_phase, item_state, uid_creation, oid_creation,
        uid_expiration, oid_expiration, uid_deletion, expired, deleted, item_checksum, last_check,
        item_size, parents, metadata, payload_modified)
    SELECT md5(i || '-{number}')::uuid, md5(i || '-0')::uuid, 1, name,
        CASE WHEN i % 100 = 0 THEN 'container' ELSE 'file' END::item_type,
        CASE WHEN state = 'INITIALISED' THEN NULL ELSE (SELECT storage_id FROM storage WHERE storage_name = '{storage}') END,
        CASE WHEN state = 'INITIALISED' THEN NULL ELSE name END,
        'ms', 'application/x-measurement-set', '{phase}', phase, phase, state::item_state,
        created + interval '{number} hours', created,
        CASE WHEN state = 'DELETED' THEN created + interval '30 days'
             WHEN i % 10000 = 1234 THEN now() + (i % 1440) * interval '1 minute'
             ELSE created + interval '5 years' END,
        CASE WHEN state = 'DELETED' THEN created + interval '30 days' ELSE '2099-12-31 23:59:59+00' END,
        CASE WHEN state = 'DELETED' THEN created + interval '30 days 1 hour' END,
        state = 'DELETED', state = 'DELETED', substr(md5(i::text), 1, 8),
        CASE WHEN state = 'READY' THEN now() - ((i * 7919) % 518400) * interval '1 second' END,
        floor(power(10, 3 + ((i * 2654435761) % 7000) / 1000.0))::bigint,
        CASE WHEN i % 100 BETWEEN 1 AND 20 THEN md5((i - i % 100) || '-0')::uuid END,
        CASE WHEN i % 10 = 0 THEN jsonb_build_object('execution_block', 'eb-' || i / 1000, 'scan', i % 1000) END,
        created
    FROM (
        SELECT i,
            now() - interval '3 years' + (i::float8 / $3) * interval '3 years' AS created,
            CASE WHEN i % 20 = 0 THEN 'SOLID' WHEN i % 10 < 3 THEN 'SOLID' ELSE 'GAS' END::phase_type AS phase,
            CASE WHEN i % 100 BETWEEN 50 AND 52 THEN 'DELETED' WHEN i % 200 = 77 THEN 'INITIALISED'
                 ELSE 'READY' END AS state,
            'pb-' || to_char(now() - interval '3 years' + (i::float8 / $3) * interval '3 years', 'YYYYMMDD')
                || '/eb-' || i / 1000 || '/scan-' || i || '.ms' AS name
        FROM generate_series($1::bigint, $2::bigint - 1) AS i
    ) AS item
    WHERE {present}{"" if first else " AND state <> 'INITIALISED'"}
    RETURNING *
    ), history AS ({HISTORY_SQL}
    )
    {"SELECT 1" if first else MIGRATIONS_SQL}
    """


async def build(url: str, items: int, *, jobs: int = 2, roots: Path = DEFAULT_ROOT, quiet: bool = False) -> None:
    """Write the catalogue into the (empty, migrated) database at ``url``; the storages' directories
    (nothing is written there, but the engines look at their file systems) go under ``roots``."""
    say = (lambda *_, **__: None) if quiet else print
    connection = await asyncpg.connect(bench_db.dsn(url))
    try:
        await connection.execute("SET session_replication_role = replica")
        for name, location, phase, _ in STORAGES:
            (roots / name).mkdir(parents=True, exist_ok=True)
            location_id = await connection.fetchval(
                "INSERT INTO location (location_name, location_type) VALUES ($1, 'low-operations') "
                "ON CONFLICT (location_name) DO UPDATE SET location_type = excluded.location_type "
                "RETURNING location_id",
                location,
            )
            await connection.execute(
                "INSERT INTO storage (location_id, storage_name, root_directory, storage_type, storage_interface, "
                "storage_phase) VALUES ($1, $2, $3, 'filesystem', 'posix', $4)",
                location_id,
                name,
                str(roots / name),
                phase,
            )
        # Keys and indexes are built once, at the end: maintaining them row by row is most of a load.
        indexes = await connection.fetch(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE tablename = ANY($1) "
            "AND indexname NOT IN (SELECT conname FROM pg_constraint)",
            list(TABLES),
        )
        for index in indexes:
            await connection.execute(f'DROP INDEX "{index["indexname"]}"')
        await connection.execute("ALTER TABLE data_item DROP CONSTRAINT pk_data_item")

        started = time.perf_counter()
        chunks = iter(range(0, items, CHUNK))
        written = 0

        async def load(loader: asyncpg.Connection) -> None:
            nonlocal written
            await loader.execute("SET session_replication_role = replica")
            for low in chunks:  # shared: each loader takes the next chunk
                high = min(items, low + CHUNK)
                async with loader.transaction():
                    for number, (name, _, phase, present) in enumerate(STORAGES):
                        await loader.execute(replicas_sql(number, name, phase, present), low, high, items)
                written += high - low
                rate = written / (time.perf_counter() - started)
                say(f"  {written:,} items written ({rate:,.0f} items/s)", flush=True)

        loaders = [await asyncpg.connect(bench_db.dsn(url)) for _ in range(jobs)]
        try:
            await asyncio.gather(*(load(loader) for loader in loaders))
        finally:
            for loader in loaders:
                await loader.close()
        say(f"rows written in {time.perf_counter() - started:.0f} s; building keys and indexes", flush=True)

        begun = time.perf_counter()
        await connection.execute("SET maintenance_work_mem = '1GB'")
        await connection.execute("SET max_parallel_maintenance_workers = 2")
        await connection.execute("ALTER TABLE data_item ADD CONSTRAINT pk_data_item PRIMARY KEY (uid)")
        for index in indexes:
            await connection.execute(index["indexdef"])
        say(f"indexes built in {time.perf_counter() - begun:.0f} s; vacuum and analyse", flush=True)
        # The running counts the tally triggers would have kept (revision 0011).
        await connection.execute(
            "INSERT INTO replica_tally (storage_id, item_state, oid_phase, replicas, bytes) "
            "SELECT storage_id, item_state, oid_phase, count(*), coalesce(sum(item_size), 0) FROM data_item "
            "GROUP BY 1, 2, 3"
        )
        await connection.execute(
            "INSERT INTO migration_tally (status, migrations) SELECT status, count(*) FROM migration GROUP BY 1"
        )
        begun = time.perf_counter()
        for table in TABLES:
            await connection.execute(f"VACUUM (ANALYZE) {table}")
        say(f"vacuumed in {time.perf_counter() - begun:.0f} s", flush=True)
        counts = await connection.fetchrow(
            "SELECT (SELECT count(*) FROM data_item) AS replicas, (SELECT count(*) FROM data_item_event) AS events, "
            "(SELECT count(*) FROM migration) AS migrations, pg_size_pretty(pg_database_size(current_database())) AS size"
        )
        say(
            f"catalogue: {items:,} items, {counts['replicas']:,} replicas, {counts['events']:,} history entries, "
            f"{counts['migrations']:,} migrations, {counts['size']} on disk"
        )
    finally:
        await connection.close()


async def run(options: argparse.Namespace) -> None:
    admin = bench_db.admin_url()
    url = make_url(admin).set(database=options.database).render_as_string(hide_password=False)
    await bench_db.drop_database(admin, url)
    connection = await asyncpg.connect(bench_db.dsn(admin))
    try:
        await connection.execute(f'CREATE DATABASE "{options.database}"')
    finally:
        await connection.close()
    await schema.upgrade(url)
    started = time.perf_counter()
    await build(url, options.items, jobs=options.jobs)
    print(f"built in {time.perf_counter() - started:.0f} s: {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000_000)
    parser.add_argument("--database", default="dlm_catalogue")
    parser.add_argument("--jobs", type=int, default=2, help="connections writing chunks at once")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
