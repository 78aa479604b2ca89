"""Every hot query of DLM on a big catalogue, through the API beside the same SQL on the same indexes,
and each engine's pass when it has nothing to do:

    python bench/make_catalogue.py --items 10000000      # once: minutes
    python bench/catalogue_queries.py [--database dlm_catalogue] [--requests 500]

Each query is asked ``--requests`` times, one after another on one keep-alive connection to a
`dlm serve` of its own (engines off), with arguments drawn from a sample of the catalogue, and as the
equivalent statement prepared on one asyncpg connection; p50 and p99 in milliseconds and DLM's p99
over raw's (goal: ≤ 2×). Then each engine's pass runs in this process against the catalogue, which
`make_catalogue.py` left with nothing due (goal: ≤ 50 ms). The catalogue is not changed.
"""

import argparse
import asyncio
import datetime
import random
import statistics
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import asyncpg
import bench_db  # the benches' shared database helpers, beside this script
from bench_server import Connection, dlm_serve, percentile, timed
from make_catalogue import DEFAULT_ROOT
from sqlalchemy.engine import make_url

ROWS = "SELECT * FROM data_item WHERE "
ORDERED = " ORDER BY uid_creation, uid LIMIT 1000"


class Sample:
    """Items to ask for: READY replicas drawn from across the catalogue."""

    def __init__(self, rows: list[asyncpg.Record]) -> None:
        self.rows = rows

    def pick(self, column: str) -> Any:
        return random.choice(self.rows)[column]


def cases(sample: Sample, now: datetime.datetime) -> list[tuple[str, Callable[[], tuple[str, list[Any]]], str]]:
    """(name, a request's target and the raw statement's arguments, the raw statement)."""
    hour_ago = (now - datetime.timedelta(hours=1)).isoformat()

    def by(column: str) -> Callable[[], tuple[str, list[Any]]]:
        def draw() -> tuple[str, list[Any]]:
            value = sample.pick(column)
            return f"/request/query_data_item?{column}={value}", [value]

        return draw

    def named(route: str, column: str = "item_name") -> Callable[[], tuple[str, list[Any]]]:
        def draw() -> tuple[str, list[Any]]:
            value = sample.pick(column)
            return f"/request/{route}?" + urlencode({column: str(value)}), [value]

        return draw

    def params_filter() -> tuple[str, list[Any]]:
        moment = sample.pick("uid_creation")
        query = urlencode(
            {"item_state": "eq.READY", "uid_phase": "eq.SOLID", "uid_creation": f"gt.{moment.isoformat()}"}
        )
        return "/request/query_data_item?" + urlencode({"params": query}), [moment]

    return [
        ("query_data_item by item_name", by("item_name"), ROWS + "item_name = $1" + ORDERED),
        ("query_data_item by uid", by("uid"), ROWS + "uid = $1" + ORDERED),
        ("query_data_item by oid", by("oid"), ROWS + "oid = $1" + ORDERED),
        ("params: state, phase, date", params_filter,
         ROWS + "item_state = 'READY' AND uid_phase = 'SOLID' AND uid_creation > $1" + ORDERED),
        ("query_expired?offset=P1D", lambda: ("/request/query_expired?offset=P1D", []),
         ROWS + "uid_expiration < now() + interval '1 day' AND item_state = 'READY' "
         "ORDER BY uid_expiration, uid LIMIT 1000"),
        ("query_new (last hour)", lambda: ("/request/query_new?" + urlencode({"check_date": hour_ago}), []),
         ROWS + f"uid_creation > '{hour_ago}'" + ORDERED),
        ("query_deleted (1000 rows)", lambda: ("/request/query_deleted", []),
         ROWS + "item_state = 'DELETED' ORDER BY uid_deletion, uid LIMIT 1000"),
        ("query_exists by item_name", named("query_exists"),
         "SELECT EXISTS (SELECT 1 FROM data_item WHERE item_name = $1)"),
        ("query_item_storage by item_name", named("query_item_storage"),
         "SELECT d.uid, d.oid, d.item_name, d.item_type, d.uri, d.uid_phase, d.item_state, s.storage_id, "
         "s.storage_name, s.storage_type, s.storage_interface, s.root_directory, s.storage_phase "
         "FROM data_item d JOIN storage s USING (storage_id) WHERE d.item_name = $1 AND d.item_state = 'READY' "
         "ORDER BY d.uid_creation, d.uid LIMIT 1000"),
        ("query_item_history by oid", named("query_item_history", "oid"),
         "SELECT * FROM data_item_event WHERE oid = $1 ORDER BY event_id LIMIT 1000"),
    ]  # fmt: skip


async def queries(url: str, requests: int) -> None:
    raw = await asyncpg.connect(bench_db.dsn(url))
    sample = Sample(
        await raw.fetch(
            "SELECT uid, oid, item_name, uid_creation FROM data_item TABLESAMPLE SYSTEM (0.1) "
            "WHERE item_state = 'READY' LIMIT 2000"
        )
    )
    work = str(DEFAULT_ROOT)
    with dlm_serve(url, work) as (base, _):
        http = Connection(base)
        print(f"\n{'':34} {'DLM p50':>9} {'p99':>7} {'raw p50':>9} {'p99':>7} {'p99 ratio':>10}   (ms)")
        floor = await timed(lambda: http.request("GET", "/health/live"), requests, warm=20)
        print(f"{'GET /health/live (HTTP floor)':34} {percentile(floor, 0.5):9.2f} {percentile(floor, 0.99):7.2f}")
        for name, draw, statement in cases(sample, datetime.datetime.now(datetime.UTC)):
            prepared = await raw.prepare(statement)
            count = requests if "1000" not in name and "expired" not in name else max(20, requests // 10)

            async def through_dlm() -> None:
                target, _ = draw()
                status, body = await http.request("GET", target)
                assert status == 200, (target, body[:300])

            async def direct() -> None:
                await prepared.fetch(*draw()[1])

            dlm_ms = await timed(through_dlm, count, warm=20)
            raw_ms = await timed(direct, count, warm=20)
            print(
                f"{name:34} {percentile(dlm_ms, 0.5):9.2f} {percentile(dlm_ms, 0.99):7.2f} "
                f"{percentile(raw_ms, 0.5):9.2f} {percentile(raw_ms, 0.99):7.2f} "
                f"{percentile(dlm_ms, 0.99) / percentile(raw_ms, 0.99):9.1f}×",
                flush=True,
            )
        for target in ("/ui/overview", "/metrics"):
            took = await timed(lambda: http.request("GET", target), max(10, requests // 50), warm=20)  # noqa: B023
            print(f"{'GET ' + target:34} {percentile(took, 0.5):9.2f} {percentile(took, 0.99):7.2f}", flush=True)
        await http.close()
    await raw.close()


async def idle_passes(url: str, rounds: int) -> None:
    """Each engine's pass, several times, on a catalogue with nothing due."""
    from dlm.db.engine import create_engine, create_sessionmaker
    from dlm.lifecycle.loops import engines

    settings = bench_db.app_settings(url)
    engine = create_engine(url)
    sessionmaker = create_sessionmaker(engine)
    print(f"\n{'engine pass, nothing to do':34} {'median':>9} {'max':>7}   (ms, {rounds} passes)")
    try:
        for name, (run_once, interval) in engines(settings).items():
            if interval == 0:
                continue  # not run with these settings (events: no sink configured)
            took, report = [], None
            for _ in range(rounds):
                started = time.perf_counter()
                report = await run_once(sessionmaker)
                took.append((time.perf_counter() - started) * 1000)
            print(f"{name:34} {statistics.median(took):9.1f} {max(took):7.1f}   {report.summary()}", flush=True)
    finally:
        await engine.dispose()


async def run(options: argparse.Namespace) -> None:
    url = make_url(bench_db.admin_url()).set(database=options.database).render_as_string(hide_password=False)
    connection = await asyncpg.connect(bench_db.dsn(url))
    try:
        items = await connection.fetchval("SELECT count(DISTINCT oid) FROM data_item WHERE uid = oid")
        replicas = await connection.fetchval("SELECT count(*) FROM data_item")
    finally:
        await connection.close()
    print(f"catalogue {options.database}: {items:,} items, {replicas:,} replicas")
    await queries(url, options.requests)
    await idle_passes(url, options.rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="dlm_catalogue")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5, help="passes of each engine")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
