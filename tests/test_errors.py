import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from dlm.db.engine import create_read_sessionmaker, reading
from dlm.db.models import DataItem
from tests.conftest import Registry, admin_connection, assert_error


async def test_health(client: AsyncTestClient) -> None:
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    ready = await client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ok"


async def test_unknown_routes_and_methods_are_json_errors(client: AsyncTestClient) -> None:
    assert_error(await client.get("/ingest/nothing_here"), 404, "NotFound")
    assert_error(await client.get("/ingest/register_data_item"), 405, "MethodNotAllowed")


async def test_a_database_outage_is_503_and_recovers(
    client: AsyncTestClient, postgres_url: str, database_url: str
) -> None:
    name = make_url(database_url).database
    async with admin_connection(postgres_url) as admin:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
    try:
        for _ in range(2):  # also once the pool has noticed
            assert_error(await client.get("/request/query_data_item"), 503, "ServiceUnavailable", "database")
        assert_error(await client.post("/ingest/init_data_item", params={"item_name": "x"}), 503, "ServiceUnavailable")
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert (await client.get("/health/live")).status_code == 200
    finally:
        async with admin_connection(postgres_url) as admin:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    assert (await client.get("/request/query_data_item")).status_code == 200


async def test_connections_the_database_dropped_are_replaced_not_handed_out(
    client: AsyncTestClient, postgres_url: str, database_url: str
) -> None:
    # A restart or failover closes every connection in the pool; without a ping per checkout, the first
    # statement finds out (here at once, before the backends have even exited), and the request goes on
    # over a new connection instead of failing: reads and writes alike.
    for _ in range(3):
        assert (await client.get("/request/query_data_item")).status_code == 200
    async with admin_connection(postgres_url) as admin:
        pids = [
            row["pid"]
            for row in await admin.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1", make_url(database_url).database
            )
        ]
        assert pids
        await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)
    for _ in range(3):
        assert (await client.get("/request/query_data_item")).status_code == 200
        response = await client.post("/ingest/init_data_item", params={"item_name": "after-the-drop"})
        assert response.status_code == 200, response.text


async def test_an_unexpected_error_is_a_500_without_a_traceback(client: AsyncTestClient, database_url: str) -> None:
    # Break the database behind DLM's back: a missing table is not something a caller can cause.
    connection = await asyncpg.connect(make_url(database_url).set(drivername="postgresql").render_as_string(False))
    try:
        await connection.execute("ALTER TABLE data_item_event RENAME TO data_item_event_gone")
    finally:
        await connection.close()
    response = await client.post("/ingest/init_data_item", params={"item_name": "x"})
    assert_error(response, 500, "InternalError", "server log")
    assert "Traceback" not in response.text


async def test_reads_travel_without_a_transaction_and_cannot_write(engine: AsyncEngine) -> None:
    sessionmaker = create_read_sessionmaker(engine)
    async with reading(sessionmaker) as session:
        assert await session.scalar(text("SELECT current_setting('transaction_isolation')")) == "read committed"
        # now() is the transaction's start: it moves between statements only outside a transaction.
        first = await session.scalar(text("SELECT now()"))
        assert await session.scalar(text("SELECT now() FROM pg_sleep(0.01)")) > first
        with pytest.raises(AssertionError, match="read-only session"):
            await session.execute(update(DataItem).values(item_name="x"))
        with pytest.raises(AssertionError, match="read-only session"):
            await session.execute(text("DELETE FROM data_item"))


async def test_a_get_that_writes_must_say_so(client: AsyncTestClient) -> None:
    writers = [
        route.path
        for route in client.app.routes
        for handler in getattr(route, "route_handlers", [])
        if handler.opt.get("writes")
    ]
    assert writers == ["/request/retrieve"], "only the retrieval writes (its history entry) on a GET"


async def test_skas_routes_answer_missing_things_as_ska_dlm_did(registry: Registry) -> None:
    # SKA-DLM's clients turn a 422 InvalidQueryParameters into their exception (SKA's
    # test_update_item_tags_exception); a 404 would be a bare HTTP error to them.
    missing = await registry.client.patch(
        "/request/update_item_tags", params={"item_name": "/my/ingest/test/missing"}, json={"a": "SKA"}
    )
    assert_error(missing, 422, "InvalidQueryParameters", "/my/ingest/test/missing")
    # DLM's own routes keep saying what it is.
    history = await registry.client.get("/request/query_item_history", params={"item_name": "/nowhere"})
    assert_error(history, 404, "NotFound", "/nowhere")
    registry.payload("twice")
    await registry.register("twice")
    again = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "twice", "uri": "twice", "storage_name": "disk"}
    )
    assert_error(again, 422, "ValueAlreadyInDB", "Item is already registered on storage 'disk'", "twice")
