from tests.conftest import Registry, assert_error


async def test_history_traces_every_change_with_actor_and_time(registry: Registry) -> None:
    uid = await registry.register("traced")
    client = registry.client
    await client.patch("/request/set_uid_expiration", params={"uid": uid, "expiration": "2030-01-01"})
    await client.patch("/request/set_state", params={"uid": uid, "state": "EXPIRED"})
    await client.patch("/request/set_user", params={"uid": uid, "user": "someone"})

    events = (await client.get("/request/query_item_history", params={"uid": uid})).json()
    assert [event["event"] for event in events] == [
        "created",
        "uid_expiration",
        "item_state",
        "oid_phase",
        "item_owner",
    ]
    assert (events[-3]["old_value"], events[-3]["new_value"]) == ("READY", "EXPIRED")
    assert (events[-2]["old_value"], events[-2]["new_value"]) == ("GAS", "PLASMA"), "no READY replica is left"
    assert events[-4]["new_value"] == "2030-01-01T00:00:00.000000+00:00"
    assert (events[-1]["old_value"], events[-1]["new_value"]) == ("SKA", "oidc:someone"), "a change of owner"
    # One event for a replica's creation, holding every initial value.
    created = events[0]
    assert created["new_value"] == "READY" and created["old_value"] is None
    assert set(created["detail"]) == {
        "storage_id",
        "uri",
        "uid_phase",
        "target_phase",
        "uid_expiration",
        "oid_expiration",
    }
    assert (created["detail"]["uri"], created["detail"]["uid_phase"], created["detail"]["target_phase"]) == (
        "traced",
        "GAS",
        "SOLID",
    )
    assert {event["actor"] for event in events} == {"anonymous"}, "open mode: nobody in particular"
    assert all(event["event_time"].endswith("+00:00") for event in events)
    ids = [event["event_id"] for event in events]
    assert ids == sorted(ids)

    page = (
        await client.get("/request/query_item_history", params={"uid": uid, "after_event_id": ids[1], "limit": 1})
    ).json()
    assert [event["event_id"] for event in page] == [ids[2]]


async def test_history_by_oid_and_name_covers_all_replicas(registry: Registry) -> None:
    uid = await registry.register("multi")
    replica = (await registry.client.post("/ingest/init_data_item", json={"oid": uid})).json()
    for params in ({"oid": uid}, {"item_name": "multi"}):
        events = (await registry.client.get("/request/query_item_history", params=params)).json()
        assert {event["uid"] for event in events} == {uid, replica}, params


async def test_history_errors(registry: Registry) -> None:
    client = registry.client
    assert_error(await client.get("/request/query_item_history"), 422, "InvalidQueryParameters")
    assert_error(
        await client.get("/request/query_item_history", params={"uid": "00000000-0000-0000-0000-000000000001"}),
        404,
        "NotFound",
    )
    assert_error(
        await client.get("/request/query_item_history", params={"item_name": "x", "limit": "0"}),
        422,
        "InvalidQueryParameters",
        "limit",
    )
