import asyncpg
from litestar.testing import AsyncTestClient
from sqlalchemy.engine import make_url

from tests.conftest import admin_connection, assert_error


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
