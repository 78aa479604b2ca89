from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Registry, assert_error

NO_SUCH_UID = "00000000-0000-0000-0000-0000000000bb"


async def _storage_id(registry: Registry, name: str = "disk") -> str:
    return (await registry.client.get("/storage/query_storage", params={"storage_name": name})).json()[0]["storage_id"]


@pytest.mark.parametrize(
    ("start", "target", "allowed"),
    [
        ("READY", "EXPIRED", True),
        ("READY", "CORRUPTED", True),
        ("READY", "DELETED", True),
        ("READY", "READY", True),
        ("READY", "INITIALISED", False),
        ("EXPIRED", "READY", True),
        ("CORRUPTED", "READY", True),
        ("DELETED", "READY", False),
        ("DELETED", "EXPIRED", False),
    ],
)
async def test_state_transitions(registry: Registry, start: str, target: str, allowed: bool) -> None:
    uid = await registry.register("stateful")
    client = registry.client
    if start != "READY":
        assert (await client.patch("/request/set_state", params={"uid": uid, "state": start})).status_code == 200
    response = await client.patch("/request/set_state", params={"uid": uid, "state": target})
    if allowed:
        assert response.status_code == 200, response.text
        assert response.json()["item_state"] == target
    else:
        assert_error(response, 422, "UnmetPreconditionForOperation", f"from {start} to {target}")
        assert (await registry.item(uid))["item_state"] == start


async def test_set_state_input_errors(registry: Registry) -> None:
    uid = await registry.register("s")
    client = registry.client
    assert_error(
        await client.patch("/request/set_state", params={"uid": uid, "state": "RIPE"}),
        422,
        "InvalidQueryParameters",
        "state",
    )
    assert_error(await client.patch("/request/set_state", params={"uid": uid}), 422, "InvalidQueryParameters", "state")
    assert_error(
        await client.patch("/request/set_state", params={"uid": NO_SUCH_UID, "state": "READY"}),
        422,
        "InvalidQueryParameters",
    )
    assert_error(
        await client.patch("/request/set_state", params={"uid": "123", "state": "READY"}),
        422,
        "InvalidQueryParameters",
        "uid",
    )


async def test_set_uri_checks_storage_and_path(registry: Registry) -> None:
    uid = (await registry.client.post("/ingest/init_data_item", params={"item_name": "u"})).json()
    storage_id = await _storage_id(registry)
    client = registry.client
    assert_error(
        await client.patch("/request/set_uri", params={"uid": uid, "uri": "x", "storage_id": NO_SUCH_UID}),
        422,
        "InvalidQueryParameters",
        "storage",
    )
    assert_error(
        await client.patch("/request/set_uri", params={"uid": uid, "uri": "/../abs", "storage_id": storage_id}),
        422,
        "InvalidQueryParameters",
        "uri",
    )
    assert_error(
        await client.patch("/request/set_uri", params={"uid": NO_SUCH_UID, "uri": "x", "storage_id": storage_id}),
        422,
        "InvalidQueryParameters",
    )
    assert_error(
        await client.patch("/request/set_uri", params={"uid": uid, "uri": "x"}),
        422,
        "InvalidQueryParameters",
        "storage_id",
    )


async def test_uid_phase_follows_the_storage_and_oid_phase_the_replicas(registry: Registry, tmp_path: Path) -> None:
    client = registry.client
    original = await registry.register("resilient")
    await registry.storage("vault", phase="LIQUID", root=tmp_path / "vault")
    vault = await _storage_id(registry, "vault")
    registry.payload("resilient", root=tmp_path / "vault")

    replica = (await client.post("/ingest/init_data_item", json={"oid": original})).json()
    response = await client.patch("/request/set_uri", params={"uid": replica, "uri": "resilient", "storage_id": vault})
    assert response.json()["uid_phase"] == "LIQUID"
    await client.patch("/request/set_state", params={"uid": replica, "state": "READY"})
    # GAS + LIQUID = 3, which counts as LIQUID.
    assert {(await registry.item(uid))["oid_phase"] for uid in (original, replica)} == {"LIQUID"}

    await client.patch("/request/set_state", params={"uid": original, "state": "DELETED"})
    assert {(await registry.item(uid))["oid_phase"] for uid in (original, replica)} == {"LIQUID"}
    await client.patch("/request/set_state", params={"uid": replica, "state": "CORRUPTED"})
    assert (await registry.item(replica))["oid_phase"] == "PLASMA"


async def test_metadata_and_expirations(registry: Registry) -> None:
    uid = await registry.register("meta")
    client = registry.client
    response = await client.patch("/request/set_metadata", params={"uid": uid}, json={"obs": "SB-1"})
    assert response.json()["metadata"] == {"obs": "SB-1"}
    assert_error(
        await client.patch("/request/set_metadata", params={"uid": uid}, json=["x"]), 422, "InvalidQueryParameters"
    )

    response = await client.patch(
        "/request/set_uid_expiration", params={"uid": uid, "expiration": "2031-02-03T04:05:06"}
    )
    assert response.json()["uid_expiration"] == "2031-02-03T04:05:06+00:00"
    oid = response.json()["oid"]
    response = await client.patch(
        "/request/set_oid_expiration", params={"oid": oid, "expiration": "2040-01-01T00:00:00-05:00"}
    )
    assert response.json()["oid_expiration"] == "2040-01-01T05:00:00+00:00"
    assert_error(
        await client.patch("/request/set_uid_expiration", params={"uid": uid, "expiration": "never"}),
        422,
        "InvalidQueryParameters",
        "expiration",
    )
    assert_error(
        await client.patch("/request/set_oid_expiration", params={"oid": NO_SUCH_UID, "expiration": "2040-01-01"}),
        422,
        "InvalidQueryParameters",
    )


async def test_owner_group_acl(registry: Registry) -> None:
    uid = await registry.register("owned")
    client = registry.client
    assert (await client.patch("/request/set_user", params={"uid": uid, "user": "pipeline"})).json()[
        "item_owner"
    ] == "oidc:pipeline", "a bare name is an identity provider's user"
    oid = (await registry.item(uid))["oid"]
    assert (await client.patch("/request/set_group", params={"oid": oid, "group": "ops"})).json()["item_group"] == "ops"
    acl = '{"read": ["ops", "token:pipe-7", "group:low", "*"]}'
    response = await client.patch("/request/set_acl", params={"uid": uid, "acl": acl})
    assert response.json()["acl"] == {"read": ["oidc:ops", "token:pipe-7", "group:low", "*"]}
    assert_error(
        await client.patch("/request/set_acl", params={"uid": uid, "acl": "{read"}),
        422,
        "InvalidQueryParameters",
        "acl",
    )
    assert_error(await client.patch("/request/set_user", params={"user": "x"}), 422, "InvalidQueryParameters", "oid")


async def test_set_phase_sets_the_target_of_every_replica(registry: Registry, engine: AsyncEngine) -> None:
    uid = await registry.register("phased")
    replica = (await registry.client.post("/ingest/init_data_item", json={"oid": uid})).json()
    response = await registry.client.patch("/request/set_phase", params={"uid": uid, "phase": "LIQUID"})
    assert response.status_code == 200, response.text
    assert response.json()["target_phase"] == "LIQUID"
    assert (await registry.item(replica))["target_phase"] == "LIQUID"
    async with engine.connect() as connection:
        requests = (await connection.execute(text("SELECT oid::text, final_phase::text FROM phase_change"))).all()
    assert requests == [(uid, "LIQUID")]
    assert_error(
        await registry.client.patch("/request/set_phase", params={"uid": uid, "phase": "STEAM"}),
        422,
        "InvalidQueryParameters",
        "phase",
    )


async def test_update_item_tags_merges(registry: Registry) -> None:
    await registry.register("tagged")
    client = registry.client
    await client.patch("/request/update_item_tags", params={"item_name": "tagged"}, json={"a": 1, "b": 2})
    response = await client.patch("/request/update_item_tags", params={"item_name": "tagged"}, json={"b": None, "c": 3})
    assert response.json()["item_tags"] == {"a": 1, "c": 3}
    assert_error(
        await client.patch("/request/update_item_tags", params={"item_name": "tagged"}),
        422,
        "InvalidQueryParameters",
        "item_tags",
    )
    assert_error(
        await client.patch("/request/update_item_tags", params={"item_name": "nobody"}, json={"a": 1}),
        422,
        "InvalidQueryParameters",
    )


async def test_update_data_item(registry: Registry) -> None:
    uid = await registry.register("upd")
    client = registry.client
    response = await client.patch(
        "/request/update_data_item",
        params={"uid": uid},
        json={"item_format": "MS", "item_level": 2, "uid_expiration": "2033-01-01"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["item_format"], body["item_level"], body["uid_expiration"]) == ("MS", 2, "2033-01-01T00:00:00+00:00")
    for change, fragment in [
        ({"uid": NO_SUCH_UID}, "uid"),
        ({"uid_phase": "SOLID"}, "storage"),
        ({"item_state": "INITIALISED"}, "from READY to INITIALISED"),
        ({"item_level": "high"}, "item_level"),
        ({"item_size": -5}, "item_size"),
        ({}, "at least one"),
    ]:
        response = await client.patch("/request/update_data_item", params={"uid": uid}, json=change)
        assert response.status_code == 422, (change, response.text)
        assert fragment in response.json()["message"], (change, response.text)
    assert_error(
        await client.patch("/request/update_data_item", params={"item_name": "nobody"}, json={"item_level": 1}),
        422,
        "InvalidQueryParameters",
    )
    assert_error(
        await client.patch("/request/update_data_item", json={"item_level": 1}),
        422,
        "InvalidQueryParameters",
        "item_name",
    )
