from tests.conftest import Registry, assert_error


async def _events(registry: Registry, uid: str) -> list[tuple[str, str | None, str | None]]:
    response = await registry.client.get("/request/query_item_history", params={"uid": uid})
    assert response.status_code == 200, response.text
    return [(event["event"], event["old_value"], event["new_value"]) for event in response.json()]


async def test_classic_ingest_init_set_uri_set_state(registry: Registry) -> None:
    client = registry.client
    response = await client.post("/ingest/init_data_item", params={"item_name": "classic"})
    assert response.status_code == 200, response.text
    uid = response.json()
    item = await registry.item(uid)
    assert item["item_state"] == "INITIALISED"
    assert item["oid_phase"] == "PLASMA", "nothing is persisted yet"
    assert item["uri"] is None and item["storage_id"] is None

    response = await client.patch("/request/set_state", params={"uid": uid, "state": "READY"})
    assert_error(response, 422, "UnmetPreconditionForOperation", "set_uri")

    storage_id = (await client.get("/storage/query_storage", params={"storage_name": "disk"})).json()[0]["storage_id"]
    registry.payload("classic.dat")
    response = await client.patch(
        "/request/set_uri", params={"uid": uid, "uri": "classic.dat", "storage_id": storage_id}
    )
    assert response.status_code == 200, response.text
    assert response.json()["uri"] == "classic.dat"

    response = await client.patch("/request/set_state", params={"uid": uid, "state": "READY"})
    assert response.status_code == 200, response.text
    item = response.json()
    assert item["item_state"] == "READY" and item["oid_phase"] == "GAS"

    events = await _events(registry, uid)
    assert events[0] == ("created", None, "INITIALISED")
    assert ("storage_id", None, storage_id) in events
    assert ("uri", None, "classic.dat") in events
    assert ("item_state", "INITIALISED", "READY") in events
    assert ("oid_phase", "PLASMA", "GAS") in events


async def test_init_with_json_data(registry: Registry) -> None:
    response = await registry.client.post(
        "/ingest/init_data_item",
        json={"item_name": "from-json", "item_tags": {"band": 2}, "metadata": {"x": 1}, "item_format": "ms"},
    )
    assert response.status_code == 200, response.text
    item = await registry.item(response.json())
    assert (item["item_name"], item["item_tags"], item["metadata"], item["item_format"]) == (
        "from-json",
        {"band": 2},
        {"x": 1},
        "ms",
    )


async def test_init_a_further_replica_of_an_item(registry: Registry) -> None:
    first = await registry.register("original")
    response = await registry.client.post("/ingest/init_data_item", json={"oid": first})
    assert response.status_code == 200, response.text
    replica = await registry.item(response.json())
    assert replica["oid"] == first
    assert replica["item_name"] == "original" and replica["item_version"] == 1
    response = await registry.client.post("/ingest/init_data_item", params={"item_name": "other"}, json={"oid": first})
    assert_error(response, 422, "InvalidQueryParameters", "item_name", "original")


async def test_init_versions_a_reused_name(registry: Registry) -> None:
    await registry.register("reused")
    response = await registry.client.post("/ingest/init_data_item", params={"item_name": "reused"})
    assert (await registry.item(response.json()))["item_version"] == 2


async def test_bad_init_input(registry: Registry) -> None:
    client = registry.client
    assert_error(await client.post("/ingest/init_data_item"), 422, "InvalidQueryParameters", "item_name")
    assert_error(
        await client.post("/ingest/init_data_item", json={"item_name": "x", "colour": "red"}),
        422,
        "InvalidQueryParameters",
        "colour",
    )
    assert_error(
        await client.post("/ingest/init_data_item", json={"item_name": "x", "item_size": "large"}),
        422,
        "InvalidQueryParameters",
        "item_size",
    )
    assert_error(
        await client.post("/ingest/init_data_item", json={"item_name": "x", "oid_phase": "SOLID"}),
        422,
        "InvalidQueryParameters",
        "oid_phase",
    )
    assert_error(
        await client.post("/ingest/init_data_item", json={"item_name": "x", "item_state": "READY"}),
        422,
        "InvalidQueryParameters",
        "item_state",
    )
    assert_error(
        await client.post("/ingest/init_data_item", json={"oid": "00000000-0000-0000-0000-000000000009"}),
        422,
        "InvalidQueryParameters",
        "oid",
    )
    assert_error(
        await client.post("/ingest/init_data_item", json={"item_name": "x", "uri": "../up"}),
        422,
        "InvalidQueryParameters",
        "uri",
    )
    assert_error(
        await client.post("/ingest/init_data_item", params={"item_name": "x", "uid_phase": "VAPOUR"}),
        422,
        "InvalidQueryParameters",
        "uid_phase",
    )
    assert (await client.get("/request/query_data_item")).json() == []
