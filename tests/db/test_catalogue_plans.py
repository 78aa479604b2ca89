"""On a big catalogue, DLM's hot paths read about what they answer, never the catalogue.

The catalogue is built the way `bench/make_catalogue.py` builds ten million items (here forty
thousand, with statistics). Every statement that the hot API queries, the operator page, the metrics
and each engine's pass with nothing to do send to PostgreSQL is captured, then run again under
EXPLAIN ANALYZE (and rolled back): no big table may be scanned sequentially, and no scan may read more
rows than a bounded page of answers. A plan that walks an index while filtering every row, or counts
the whole table, fails here long before it would cost seconds at ten million."""

import datetime
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import msgspec
from litestar.testing import AsyncTestClient
from sqlalchemy import event
from sqlalchemy.engine import Engine

from dlm.app import create_app
from dlm.db.engine import create_engine, create_sessionmaker
from dlm.lifecycle.loops import INTERVALS, engines
from tests.conftest import _asyncpg_dsn, make_settings

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
import make_catalogue  # noqa: E402  # the bench's own builder, beside its scripts

ITEMS = 40_000  # 54,000 replicas, 13,500 migrations, 430,000 history entries
BIG_TABLES = {"data_item", "data_item_event", "migration"}
# A page is 1000 rows; a scan that filters on one more column may read a few pages for one.
MOST_ROWS_READ = 5000


def _nodes(node: dict[str, Any]) -> Any:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


def _problems(plan: dict[str, Any]) -> list[str]:
    problems = []
    for node in _nodes(plan):
        if node.get("Relation Name") not in BIG_TABLES or not node["Actual Loops"]:
            continue  # (a plan's branch never taken costs nothing)
        read = node["Actual Loops"] * (
            node["Actual Rows"] + node.get("Rows Removed by Filter", 0) + node.get("Rows Removed by Index Recheck", 0)
        )
        if node["Node Type"] == "Seq Scan":
            problems.append(f"sequential scan of {node['Relation Name']}")
        elif read > MOST_ROWS_READ:
            problems.append(f"{node['Node Type']} of {node['Relation Name']} read {read} rows")
    return problems


async def test_hot_paths_read_what_they_answer_not_the_catalogue(database_url: str, tmp_path: Path) -> None:
    await make_catalogue.build(database_url, ITEMS, jobs=1, roots=tmp_path / "storages", quiet=True)
    connection = await asyncpg.connect(**_asyncpg_dsn(database_url))
    try:
        item = await connection.fetchrow(
            "SELECT uid, oid, item_name FROM data_item WHERE item_state = 'READY' AND uid <> oid LIMIT 1"
        )
        recent = await connection.fetchval(
            "SELECT uid_creation FROM data_item ORDER BY uid_creation DESC OFFSET 3000 LIMIT 1"
        )
    finally:
        await connection.close()
    hour_ago = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)).isoformat()
    requests = [
        f"/request/query_data_item?item_name={item['item_name']}",
        f"/request/query_data_item?uid={item['uid']}",
        f"/request/query_data_item?oid={item['oid']}",
        "/request/query_data_item?"
        + urlencode(
            {
                "params": urlencode(
                    {"item_state": "eq.READY", "uid_phase": "eq.SOLID", "uid_creation": f"gt.{recent.isoformat()}"}
                )
            }
        ),
        "/request/query_expired?offset=P1D",
        "/request/query_new?" + urlencode({"check_date": hour_ago}),
        "/request/query_deleted",
        f"/request/query_exists?item_name={item['item_name']}",
        f"/request/query_exist_and_ready?item_name={item['item_name']}",
        f"/request/query_item_storage?item_name={item['item_name']}",
        f"/request/query_item_history?oid={item['oid']}",
        f"/request/query_item_history?uid={item['uid']}",
        "/migration/query_migrations",
        "/ui/overview",
        "/metrics",
    ]
    settings = make_settings(database_url, tmp_path)
    statements: list[tuple[str, Any, str]] = []
    doing = ""

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        statements.append((statement, parameters, doing))

    event.listen(Engine, "before_cursor_execute", capture)
    try:
        async with AsyncTestClient(create_app(settings)) as client:
            for target in requests:
                doing = f"GET {target}"
                response = await client.get(target)
                assert response.status_code == 200, (target, response.text)
        engine = create_engine(database_url)
        sessionmaker = create_sessionmaker(engine)
        every_engine = msgspec.structs.replace(settings, **dict.fromkeys(INTERVALS.values(), 60))
        for name, (run_once, interval) in engines(every_engine).items():
            if interval:
                doing = f"the {name} pass"
                report = await run_once(sessionmaker)
                assert "0" in report.summary(), report.summary()  # nothing to do on this catalogue
    finally:
        event.remove(Engine, "before_cursor_execute", capture)

    failures = []
    async with engine.connect() as explaining:
        for statement, parameters, origin in statements:
            if not statement.lstrip().upper().startswith(("SELECT", "WITH", "UPDATE", "DELETE", "INSERT")):
                continue
            transaction = await explaining.begin()
            result = await explaining.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
            plan = result.scalar()
            await transaction.rollback()
            if problems := _problems((plan if isinstance(plan, list) else msgspec.json.decode(plan))[0]["Plan"]):
                failures.append(
                    f"{origin}: {', '.join(problems)}\n    {' '.join(statement.split())[-600:]} {parameters} {plan}"
                )
    await engine.dispose()
    assert len(statements) > 50, "the statements were captured"
    assert not failures, "\n".join(failures)
