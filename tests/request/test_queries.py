import datetime
import json

import pytest

from dlm.api import json_rows
from dlm.db.engine import create_read_sessionmaker, reading
from dlm.request.service import query_items
from dlm.rows import row_dicts
from tests.conftest import Registry, assert_error

NO_SUCH_UID = "00000000-0000-0000-0000-0000000000aa"


async def test_query_by_each_identifier(registry: Registry) -> None:
    uid = await registry.register("q1")
    await registry.register("q2")
    item = await registry.item(uid)
    client = registry.client
    for params in ({"uid": uid}, {"oid": item["oid"]}, {"item_name": "q1"}):
        rows = (await client.get("/request/query_data_item", params=params)).json()
        assert [row["uid"] for row in rows] == [uid]
    rows = (await client.get("/request/query_data_item", params={"storage_id": item["storage_id"]})).json()
    assert len(rows) == 2
    assert (await client.get("/request/query_data_item", params={"uid": NO_SUCH_UID})).json() == []
    assert_error(
        await client.get("/request/query_data_item", params={"oid": "zzz"}), 422, "InvalidQueryParameters", "oid"
    )


async def test_exists_and_ready(registry: Registry) -> None:
    uid = await registry.register("here")
    initialised = (await registry.client.post("/ingest/init_data_item", params={"item_name": "pending"})).json()
    client = registry.client

    async def ask(path: str, **params: str) -> bool:
        response = await client.get(path, params=params)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        return response.json()

    assert await ask("/request/query_exists", item_name="here") is True
    assert await ask("/request/query_exists", uid=uid, ready="true") is True
    assert await ask("/request/query_exists", uid=initialised) is True
    assert await ask("/request/query_exists", uid=initialised, ready="true") is False
    assert await ask("/request/query_exist_and_ready", uid=initialised) is False
    assert await ask("/request/query_exist_and_ready", item_name="here") is True
    assert await ask("/request/query_exists", item_name="nobody") is False
    assert_error(await client.get("/request/query_exists"), 422, "InvalidQueryParameters", "item_name")
    assert_error(
        await client.get("/request/query_exists", params={"item_name": "x", "ready": "sometimes"}),
        422,
        "InvalidQueryParameters",
        "ready",
    )


async def test_query_expired_with_and_without_offset(registry: Registry) -> None:
    now = datetime.datetime.now(datetime.UTC)
    past = await registry.register("past", uid_expiration=(now - datetime.timedelta(hours=1)).isoformat())
    soon = await registry.register("soon", uid_expiration=(now + datetime.timedelta(minutes=30)).isoformat())
    await registry.register("later", uid_expiration=(now + datetime.timedelta(days=3)).isoformat())
    client = registry.client

    async def expired(**params: str) -> list[str]:
        response = await client.get("/request/query_expired", params=params)
        assert response.status_code == 200, response.text
        return [row["uid"] for row in response.json()]

    assert await expired() == [past]
    assert await expired(offset="PT1H") == [past, soon]
    assert await expired(offset="3600") == [past, soon]
    assert await expired(offset="-PT2H") == []
    draft = (
        await client.post("/ingest/init_data_item", json={"item_name": "draft", "uid_expiration": "2000-01-01"})
    ).json()
    assert draft not in await expired(), "as in SKA-DLM, only READY replicas: a draft is not expired data"
    await client.patch("/request/set_state", params={"uid": past, "state": "DELETED"})
    assert await expired() == [], "deleted replicas are no longer candidates"
    assert_error(
        await client.get("/request/query_expired", params={"offset": "soon"}), 422, "InvalidQueryParameters", "offset"
    )


async def test_a_uid_names_the_item_whatever_else_is_given_as_in_ska_dlm(registry: Registry) -> None:
    uid = await registry.register("obs")
    await registry.register("other")
    found = await registry.client.get("/request/query_data_item", params={"uid": uid, "item_name": "other"})
    assert [row["uid"] for row in found.json()] == [uid]
    narrowed = await registry.client.get(
        "/request/query_data_item", params={"uid": uid, "params": '{"item_state": "eq.DELETED"}'}
    )
    assert narrowed.json() == [], "params narrow what the uid names"
    assert_error(
        await registry.client.get("/request/query_data_item", params={"uid": uid, "oid": "nope"}),
        422,
        "InvalidQueryParameters",
        "oid",
    )


async def test_query_deleted_and_new(registry: Registry) -> None:
    client = registry.client
    first = await registry.register("first")
    between = (await registry.item(first))["uid_creation"]
    second = await registry.register("second")
    response = await client.get("/request/query_new", params={"check_date": between})
    assert [row["uid"] for row in response.json()] == [second]
    response = await client.get("/request/query_new", params={"check_date": "2000-01-01", "uid": first})
    assert [row["uid"] for row in response.json()] == [first]
    assert_error(await client.get("/request/query_new"), 422, "InvalidQueryParameters", "check_date")
    assert_error(
        await client.get("/request/query_new", params={"check_date": "tomorrow"}),
        422,
        "InvalidQueryParameters",
        "check_date",
    )

    assert (await client.get("/request/query_deleted")).json() == []
    await client.patch("/request/set_state", params={"uid": first, "state": "DELETED"})
    deleted = (await client.get("/request/query_deleted")).json()
    assert [row["uid"] for row in deleted] == [first]
    assert deleted[0]["deleted"] is True and deleted[0]["uid_deletion"] is not None
    assert (await client.get("/request/query_deleted", params={"uid": second})).json() == []


async def test_query_item_storage_lists_ready_replicas_with_their_storage(registry: Registry) -> None:
    uid = await registry.register("where")
    rows = (await registry.client.get("/request/query_item_storage", params={"item_name": "where"})).json()
    assert len(rows) == 1
    assert rows[0]["uid"] == uid and rows[0]["storage_name"] == "disk"
    assert rows[0]["root_directory"] == str(registry.root) and rows[0]["uri"] == "where"
    await registry.client.patch("/request/set_state", params={"uid": uid, "state": "DELETED"})
    assert (await registry.client.get("/request/query_item_storage", params={"uid": uid})).json() == []
    assert_error(await registry.client.get("/request/query_item_storage"), 422, "InvalidQueryParameters")


@pytest.mark.parametrize("path", ["/request/query_data_item", "/request/query_expired", "/request/query_deleted"])
async def test_empty_database_queries_return_empty_lists(client: object, path: str) -> None:
    response = await client.get(path)  # type: ignore[attr-defined]
    assert response.status_code == 200 and response.json() == []


async def test_postgresql_writes_the_same_json_as_dlm_would(registry: Registry, sessionmaker) -> None:
    # The busiest queries are answered with the JSON PostgreSQL writes: every kind of column must come
    # out as row_dicts has always written it (timestamps with their offset, uuids, enums, JSON, arrays,
    # nulls, whole seconds).
    uid = await registry.register("a/b.ms", "b.ms", metadata={"nested": {"x": [1, 2.5, None]}, "s": "é\\n"})
    tagged = await registry.client.patch("/request/update_item_tags", params={"item_name": "a/b.ms"}, json={"t": ["x"]})
    assert tagged.status_code == 200, tagged.text
    await registry.client.patch(
        "/request/update_data_item", params={"uid": uid}, json={"uid_expiration": "2030-01-02T03:04:05Z"}
    )
    await registry.register("other", "other")
    statement = query_items(params="order=item_name.desc")
    async with reading(create_read_sessionmaker(sessionmaker.kw["bind"])) as session:
        expected = row_dicts((await session.execute(statement)).all())
        written = json.loads((await json_rows(session, statement)).content)
        assert written == expected
        assert [row["item_name"] for row in written] == ["other", "a/b.ms"], "in the statement's order"
        assert json.loads((await json_rows(session, query_items(item_name="nothing"))).content) == []
    answered = (await registry.client.get("/request/query_data_item", params={"uid": uid})).json()
    assert answered == [row for row in expected if row["uid"] == uid]
    assert answered[0]["uid_expiration"] == "2030-01-02T03:04:05+00:00"
    assert answered[0]["item_tags"] == {"t": ["x"]} and answered[0]["metadata"]["nested"] == {"x": [1, 2.5, None]}
