"""Input an attacker (or a buggy client) sends gets a clear 4xx naming what is wrong, never a 500, a
stalled event loop, or a half-written row: each case here once reached a 500 or worse."""

import asyncio
import contextlib
import json
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from tests.conftest import Registry, Server, assert_error


async def _items(client: AsyncTestClient) -> list[dict[str, Any]]:
    response = await client.get("/request/query_data_item")
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    ("method", "path", "params"),
    [
        ("GET", "/request/query_data_item", {"item_name": "a\x00b"}),
        ("GET", "/storage/query_storage", {"storage_name": "\x00"}),
        ("POST", "/ingest/register_data_item", {"item_name": "x\x00", "uri": "x", "storage_name": "disk"}),
        ("POST", "/storage/init_location", {"location_name": "nul\x00", "location_type": "local-dev"}),
    ],
)
async def test_nul_in_a_parameter_is_named(registry: Registry, method: str, path: str, params: dict) -> None:
    response = await registry.client.request(method, path, params=params)
    [name] = [key for key, value in params.items() if "\x00" in value]
    assert_error(response, 422, "InvalidQueryParameters", name, "NUL")


async def test_nul_in_a_json_string_is_refused(registry: Registry) -> None:
    uid = await registry.register("plain")
    response = await registry.client.patch("/request/set_metadata", params={"uid": uid}, json={"note": "a\x00b"})
    assert response.status_code == 422, response.text
    assert (await registry.item(uid))["metadata"].get("note") is None
    bulk = await registry.client.post(
        "/ingest/register_data_items", json=[{"item_name": "n\x00", "uri": "n", "storage_name": "disk"}]
    )
    assert bulk.status_code == 422, bulk.text


async def test_unknown_query_parameters_are_refused_on_dlms_routes(registry: Registry) -> None:
    uid = await registry.register("one")
    misspelt = await registry.client.get("/request/query_item_history", params={"uid": uid, "aftereventid": "3"})
    assert_error(misspelt, 422, "InvalidQueryParameters", "aftereventid", "after_event_id")
    empty = await registry.client.get("/request/query_item_history?=x")
    assert_error(empty, 422, "InvalidQueryParameters", "empty name")


async def test_skas_routes_ignore_parameters_they_do_not_take_and_say_so(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    # SKA-DLM's clients send some (register_data_item?...&metadata=...): FastAPI ignored them.
    registry.payload("eb")
    registered = await registry.client.post(
        "/ingest/register_data_item",
        params={"item_name": "eb", "uri": "eb", "storage_name": "disk", "metadata": "execution_block"},
    )
    assert registered.status_code == 200, registered.text
    assert registered.headers["x-dlm-ignored-parameters"] == "metadata"
    with caplog.at_level("INFO", logger="dlm.api"):
        for _ in range(2):
            tagged = await registry.client.patch(
                "/request/update_item_tags",
                params={"item_name": "eb", "item_tags": "x", "zzz": "1"},
                json={"a": 1},
            )
            assert tagged.status_code == 200, tagged.text
            assert tagged.headers["x-dlm-ignored-parameters"] == "item_tags, zzz"
    assert sum("'zzz'" in record.getMessage() for record in caplog.records) == 1, "logged once per route and name"
    clean = await registry.client.get("/request/query_data_item", params={"item_name": "eb"})
    assert "x-dlm-ignored-parameters" not in clean.headers
    assert_error(await registry.client.get("/request/query_data_item?=x"), 422, "InvalidQueryParameters", "empty name")
    nul = await registry.client.get("/request/query_data_item", params={"item_name": "eb\x00"})
    assert_error(nul, 422, "InvalidQueryParameters", "NUL")


@pytest.mark.parametrize(
    ("method", "path", "params", "field"),
    [
        ("GET", "/migration/get_migration", {"migration_id": str(2**64)}, "migration_id"),
        ("POST", "/migration/cancel_migration", {"migration_id": str(2**63)}, "migration_id"),
        ("GET", "/storage/query_storage_events", {"after_event_id": str(2**63)}, "after_event_id"),
        ("GET", "/request/query_data_item", {"params": "item_version=eq.99999999999"}, "item_version"),
        ("GET", "/request/query_data_item", {"params": "item_level=gt.40000"}, "item_level"),
        ("GET", "/request/query_data_item", {"params": "item_size=lt.99999999999999999999"}, "item_size"),
        ("GET", "/migration/query_migrations", {"end_date": "9999-12-31"}, "end_date"),
        ("GET", "/request/query_expired", {"offset": "1e13"}, "offset"),
        ("GET", "/request/query_new", {"check_date": "0001-01-01"}, "check_date"),
    ],
)
async def test_numbers_and_dates_beyond_range(
    registry: Registry, method: str, path: str, params: dict, field: str
) -> None:
    response = await registry.client.request(method, path, params=params)
    assert_error(response, 422, "InvalidQueryParameters", field)


async def test_sizes_beyond_a_bigint_are_refused(registry: Registry) -> None:
    registry.payload("big")
    for params in ({"item_size": str(2**63)}, {"decompressed_size": str(2**64)}):
        response = await registry.client.post(
            "/ingest/register_data_item", params={"item_name": "big", "uri": "big", "storage_name": "disk", **params}
        )
        assert_error(response, 422, "InvalidQueryParameters", next(iter(params)))
    bulk = await registry.client.post(
        "/ingest/register_data_items",
        json=[{"item_name": "big", "uri": "big", "storage_name": "disk", "item_size": 2**63}],
    )
    assert_error(bulk, 422, "InvalidQueryParameters", "item_size")
    assert await _items(registry.client) == []


async def test_an_expiry_at_the_start_of_time_is_refused(registry: Registry) -> None:
    """asyncpg stores datetime.min as -infinity: one such item used to stop every expiry pass."""
    uid = await registry.register("ancient")
    oid = (await registry.item(uid))["oid"]
    for expiration in ("0001-01-01", "0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59"):
        response = await registry.client.patch(
            "/request/set_oid_expiration", params={"oid": oid, "expiration": expiration}
        )
        assert_error(response, 422, "InvalidQueryParameters", "expiration", "1900")
    registry.payload("later")
    response = await registry.client.post(
        "/ingest/register_data_item",
        params={"item_name": "later", "uri": "later", "storage_name": "disk", "uid_expiration": "0001-01-01"},
    )
    assert_error(response, 422, "InvalidQueryParameters", "uid_expiration")
    body = await registry.client.patch(
        "/request/update_data_item", params={"uid": uid}, json={"oid_expiration": "0001-01-01"}
    )
    assert_error(body, 422, "InvalidQueryParameters", "oid_expiration")


@pytest.mark.parametrize("filter_", ["item_state=like.REA*", "item_state=ilike.*dy", "oid=like.*"])
async def test_like_on_enum_and_id_columns_matches_their_text(registry: Registry, filter_: str) -> None:
    await registry.register("one")
    response = await registry.client.get("/request/query_data_item", params={"params": filter_})
    assert response.status_code == 200, response.text
    assert [row["item_name"] for row in response.json()] == ["one"]


@pytest.mark.parametrize("operand", ["5", '"text"', "null", "[1]"])
async def test_contains_with_any_json_document(registry: Registry, operand: str) -> None:
    await registry.register("one", metadata={"k": [1]})
    response = await registry.client.get("/request/query_data_item", params={"params": f"metadata=cs.{operand}"})
    assert response.status_code in (200, 422), response.text


async def test_json_nested_a_thousand_deep_is_refused(registry: Registry) -> None:
    uid = await registry.register("deep")
    nested = '{"a": ' * 1000 + '"bottom"' + "}" * 1000
    for method, path, params in (
        ("PATCH", "/request/set_metadata", {"uid": uid}),
        ("POST", "/ingest/register_data_items", {}),
        ("POST", "/storage/create_storage_config", {"storage_name": "disk"}),
    ):
        response = await registry.client.request(
            method, path, params=params, content=nested, headers={"content-type": "application/json"}
        )
        assert_error(response, 422, "InvalidQueryParameters", "body", "nested")
    assert "a" not in (await registry.item(uid))["metadata"], "nothing of it was stored"


async def test_a_path_beyond_what_a_storage_takes_is_refused_for_good(registry: Registry) -> None:
    long_path = "d/" * 2500 + "f"
    response = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "long", "uri": long_path, "storage_name": "disk"}
    )
    assert_error(response, 422, "InvalidQueryParameters", "uri", "1024 bytes")
    long_name = "n" * 300
    response = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "long", "uri": long_name, "storage_name": "disk"}
    )
    assert_error(response, 422, "InvalidQueryParameters", "uri", "255 bytes")


async def test_a_bulk_body_over_its_limits_is_refused_while_reading(registry: Registry) -> None:
    entry = {"item_name": "x", "uri": "x", "storage_name": "disk", "do_storage_access_check": False}
    too_many = json.dumps([entry] * 100_001)
    response = await registry.client.post(
        "/ingest/register_data_items", content=too_many, headers={"content-type": "application/json"}
    )
    assert_error(response, 422, "InvalidQueryParameters", "100000")
    huge = b"[" + b" " * (80 * 1024 * 1024) + b"]"
    started = time.monotonic()
    response = await registry.client.post(
        "/ingest/register_data_items", content=huge, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413, response.text
    assert response.json()["exec"] == "RequestTooLarge"
    assert time.monotonic() - started < 30
    assert await _items(registry.client) == []


async def test_pool_exhaustion_is_a_busy_503_with_retry_after(database_url: str) -> None:
    import sqlalchemy.exc

    from dlm.api import handle_dlm_error
    from dlm.db.engine import create_engine, create_sessionmaker, transaction
    from dlm.errors import ServiceBusy

    engine = create_engine(database_url, pool_size=1)  # and as many again in overflow
    held = [await engine.connect() for _ in range(2)]
    try:
        with pytest.raises(ServiceBusy, match="busy") as raised:
            async with transaction(create_sessionmaker(engine), actor="test"):
                pass
    finally:
        for connection in held:
            await connection.close()
        await engine.dispose()
    assert isinstance(raised.value.__cause__, sqlalchemy.exc.TimeoutError), "the pool, not the database"
    request = SimpleNamespace(method="GET", url=SimpleNamespace(path="/request/query_data_item"))
    response = handle_dlm_error(request, raised.value)  # type: ignore[arg-type]
    assert (response.status_code, response.headers["Retry-After"]) == (503, "1")
    assert response.content == {"exec": "ServiceBusy", "message": raised.value.message}


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("../../../outside/pwn", "'..'"),
        ("a/../b", "'..'"),
        ("..", "'..'"),
        ("/my/../../etc", "'..'"),
        ("line\r\nbreak", "control characters"),
        ("tab\there", "control characters"),
        ("bell\x07", "control characters"),
        ("c1\x85", "control characters"),
        ("sep\u2028arator", "control characters"),
        ("e\u0301", "NFC"),
        ("x" * 1025, "1024 bytes"),
    ],
)
async def test_item_names_that_could_escape_or_split_are_refused(registry: Registry, name: str, fragment: str) -> None:
    registry.payload("named.dat")
    client = registry.client
    single = await client.post(
        "/ingest/register_data_item", params={"item_name": name, "uri": "named.dat", "storage_name": "disk"}
    )
    assert_error(single, 422, "InvalidQueryParameters", "item_name", fragment)
    entries = [{"item_name": "fine-too", "uri": "named.dat", "storage_name": "disk"}]
    entries.append({"item_name": name, "uri": "other.dat", "storage_name": "disk"})
    bulk = await client.post("/ingest/register_data_items", json=entries)
    assert_error(bulk, 422, "InvalidQueryParameters", "items[1].item_name", fragment)
    initialised = await client.post("/ingest/init_data_item", params={"item_name": name})
    assert_error(initialised, 422, "InvalidQueryParameters", "item_name", fragment)
    uid = await registry.register("fine")
    renamed = await client.patch("/request/update_data_item", params={"uid": uid}, json={"item_name": name})
    assert_error(renamed, 422, "InvalidQueryParameters", "item_name", fragment)
    assert [row["item_name"] for row in await _items(client)] == ["fine"]


async def test_a_leading_slash_is_a_valid_item_name(registry: Registry) -> None:
    uid = await registry.register("/my/ingest/test/item2", "item2")
    assert (await registry.item(uid))["item_name"] == "/my/ingest/test/item2"


@pytest.mark.parametrize("uri", ["./secret.dat", ".//secret.dat", "secret.dat/", "a/../secret.dat", "secret.dat/."])
async def test_uri_aliases_are_one_payload(registry: Registry, uri: str) -> None:
    await registry.register("secret", "secret.dat")
    response = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "steal", "uri": uri, "storage_name": "disk"}
    )
    assert response.status_code == 422, response.text
    assert [row["item_name"] for row in await _items(registry.client)] == ["secret"]


@pytest.mark.parametrize(
    "endpoint", ["http://127.0.0.1:abc", "http://127.0.0.1:99999", "http://127.0.0.1:-1", "http://[::1", "http://:80"]
)
async def test_endpoints_that_do_not_parse_are_a_422_not_a_500(registry: Registry, endpoint: str) -> None:
    config = {"type": "s3", "endpoint": endpoint, "access_key_id": "a", "secret_access_key": "b"}
    storage = await registry.client.post(
        "/storage/init_storage",
        params={
            "storage_name": "s3",
            "storage_type": "objectstore",
            "storage_interface": "s3",
            "root_directory": "bucket",
            "location_name": "site",
        },
        json=config,
    )
    assert_error(storage, 422, "InvalidQueryParameters", "config.endpoint")
    await registry.register("obs")
    delivered = await registry.client.post(
        "/request/deliver", json={"items": ["obs"], "destination": {"s3": {"bucket": "b", **config}}}
    )
    assert delivered.status_code == 422, delivered.text


async def test_a_client_that_goes_away_mid_body_is_no_server_error(database_url: str, tmp_path: Path) -> None:
    server = await Server(database_url, tmp_path / "data").ready()
    head = "POST /ingest/register_data_items HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    try:
        for request in (
            f'{head}Content-Length: 1000\r\n\r\n[{{"item_name":',  # an upload aborted half-way
            f"{head}Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",  # a chunked body that does not parse
        ):
            with socket.create_connection(("127.0.0.1", server.port)) as connection:
                connection.sendall(request.encode())
                connection.settimeout(0.5)
                with contextlib.suppress(TimeoutError):
                    connection.recv(4096)
        async with httpx.AsyncClient(base_url=server.base) as client:
            traced = await client.request("TRACE", "/request/query_data_item")
            assert traced.status_code == 405 and "GET" in traced.headers["allow"], "405 says what is allowed"
            deadline = time.monotonic() + 10
            while 'route="/ingest/register_data_items",status="499"} 2.0' not in (
                text := (await client.get("/metrics")).text
            ):
                assert time.monotonic() < deadline, [
                    line for line in text.splitlines() if "register_data_items" in line
                ]
                await asyncio.sleep(0.2)
        assert 'route="/ingest/register_data_items",status="500"' not in text, "no 5xx alert for a client's leaving"
    finally:
        server.stop()
    log = server.log.read_text()
    assert log.count("POST /ingest/register_data_items 499") == 2 and "Traceback" not in log, log[-2000:]
