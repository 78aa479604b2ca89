"""What an account may do to other people's items (issue 24): below operator only an item's owner changes
it, on every route that changes items (the owner × route matrix, from the OpenAPI document); a payload
is one payload however its uri is spelt; set_uri checks the bytes it points at; owner, group and acl
changes are in the history; API tokens and an identity provider's users never share a name."""

from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.app import create_app
from dlm.enums import Role
from tests.auth.conftest import bearer, make_token
from tests.conftest import Registry, assert_error, make_settings

# How to call each route that changes an item, for an item with this uid, oid and storage_id. A new
# PATCH route, or any ingest-level route that names an existing item, must say here how it is called.
CALLS: dict[str, tuple[str, str, dict[str, str], Any]] = {
    "update_data_item": ("PATCH", "/request/update_data_item", {"uid": "{uid}"}, {"item_format": "fits"}),
    "set_uri": ("PATCH", "/request/set_uri", {"uid": "{uid}", "uri": "obs.dat", "storage_id": "{storage_id}"}, None),
    "set_metadata": ("PATCH", "/request/set_metadata", {"uid": "{uid}"}, {"scan": 8}),
    "set_state": ("PATCH", "/request/set_state", {"uid": "{uid}", "state": "EXPIRED"}, None),
    "set_oid_expiration": ("PATCH", "/request/set_oid_expiration", {"oid": "{oid}", "expiration": "2031-01-01"}, None),
    "set_uid_expiration": ("PATCH", "/request/set_uid_expiration", {"uid": "{uid}", "expiration": "2031-01-01"}, None),
    "set_user": ("PATCH", "/request/set_user", {"uid": "{uid}", "user": "token:other"}, None),
    "set_group": ("PATCH", "/request/set_group", {"oid": "{oid}", "group": "theirs"}, None),
    "set_acl": ("PATCH", "/request/set_acl", {"oid": "{oid}", "acl": '{{"read": []}}'}, None),
    "set_phase": ("PATCH", "/request/set_phase", {"uid": "{uid}", "phase": "LIQUID"}, None),
    "update_item_tags": ("PATCH", "/request/update_item_tags", {"oid": "{oid}"}, {"campaign": "x"}),
    # A further replica of an existing item is a change to that item.
    "init_data_item": ("POST", "/ingest/init_data_item", {}, {"oid": "{oid}"}),
}
# Ingest-level routes that create new items only (their owner is the caller): not in the matrix.
CREATING = {"register_data_item", "register_data_items"}


@pytest.fixture
async def accounts(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, dict[str, str]]:
    made = {
        "owner": await make_token(sessionmaker, "owner", Role.INGEST),
        "other": await make_token(sessionmaker, "other", Role.INGEST),
        "operator": await make_token(sessionmaker, "ops", Role.OPERATOR),
        "admin": await make_token(sessionmaker, "root", Role.ADMIN),
        "reader": await make_token(sessionmaker, "eve", Role.READER),
    }
    return {name: bearer(secret) for name, secret in made.items()}


@pytest.fixture
async def owned(closed: AsyncTestClient, accounts: dict[str, dict[str, str]], tmp_path: Path) -> Registry:
    """A storage, and a registry that registers as the account "owner"."""
    closed.headers.update(accounts["admin"])
    registry = Registry(closed, tmp_path / "store")
    await registry.storage()
    closed.headers.update(accounts["owner"])
    return registry


def _fill(value: Any, item: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return value.format(**item)
    if isinstance(value, dict):
        return {key: _fill(inner, item) for key, inner in value.items()}
    return value


async def test_every_route_that_changes_an_item_is_in_the_owner_matrix(closed: AsyncTestClient) -> None:
    document = (await closed.get("/schema/openapi.json")).json()
    changing = {
        operation["operationId"]
        for methods in document["paths"].values()
        for method, operation in methods.items()
        if operation.get("x-dlm-role") == "ingest" and (method == "patch" or method == "post")
    }
    assert changing - CREATING == set(CALLS), "a new route that changes items needs a row in CALLS"


@pytest.mark.parametrize("route", sorted(CALLS))
async def test_below_operator_only_the_owner_changes_an_item(
    owned: Registry, accounts: dict[str, dict[str, str]], route: str
) -> None:
    client = owned.client
    method, path, params, body = CALLS[route]
    for actor, allowed in (("other", False), ("reader", False), ("owner", True), ("operator", True), ("admin", True)):
        uid = await owned.register(f"obs-{actor}", "obs.dat" if actor == "owner" else f"obs-{actor}.dat")
        item = await owned.item(uid)
        query = {**params, "uri": item["uri"]} if route == "set_uri" else params
        response = await client.request(
            method, path, params=_fill(query, item), json=_fill(body, item), headers=accounts[actor]
        )
        if allowed:
            assert response.status_code == 200, (route, actor, response.text)
        else:
            reason = "needs role ingest" if actor == "reader" else "only its owner may"
            assert_error(response, 403, "Forbidden", reason)
            assert await owned.item(uid) == item, f"{route} by {actor}: the item is unchanged"
            replicas = (await client.get("/request/query_data_item", params={"oid": item["oid"]})).json()
            assert len(replicas) == 1, "no replica was added"


async def test_by_name_or_oid_a_change_touching_anothers_replica_changes_none(
    owned: Registry, accounts: dict[str, dict[str, str]]
) -> None:
    client = owned.client
    mine = await owned.register("shared-name", "mine.dat")
    client.headers.update(accounts["admin"])
    await owned.storage("second", root=owned.root.parent / "second")
    client.headers.update(accounts["other"])
    theirs = await Registry(client, owned.root.parent / "second").register(
        "shared-name", "theirs.dat", storage="second"
    )
    response = await client.patch(
        "/request/update_data_item",
        params={"item_name": "shared-name"},
        json={"item_format": "x"},
        headers=accounts["owner"],
    )
    assert_error(response, 403, "Forbidden", "token:owner", "token:other")
    for uid in (mine, theirs):
        assert (await owned.item(uid))["item_format"] != "x"


async def test_owner_group_and_acl_changes_are_in_the_history_with_their_actor(
    owned: Registry, accounts: dict[str, dict[str, str]]
) -> None:
    client = owned.client
    uid = await owned.register("traced")
    await client.patch("/request/set_acl", params={"uid": uid, "acl": '{"read": ["group:low"]}'})
    await client.patch("/request/set_group", params={"uid": uid, "group": "low"})
    await client.patch("/request/update_data_item", params={"uid": uid}, json={"acl": None})
    await client.patch("/request/set_user", params={"uid": uid, "user": "alice"})
    events = (await client.get("/request/query_item_history", params={"uid": uid})).json()
    ownership = ("acl", "item_group", "item_owner")
    changes = [(e["event"], e["old_value"], e["new_value"], e["actor"]) for e in events if e["event"] in ownership]
    assert changes[-4:] == [
        ("acl", None, '{"read": ["group:low"]}', "token:owner"),
        ("item_group", "SKA", "low", "token:owner"),
        ("acl", '{"read": ["group:low"]}', "null", "token:owner"),
        ("item_owner", "token:owner", "oidc:alice", "token:owner"),
    ]
    after = await client.patch("/request/set_group", params={"uid": uid, "group": "back"})
    assert_error(after, 403, "Forbidden", "oidc:alice"), "given away: no longer theirs to change"


@pytest.mark.parametrize("alias", ["./secret.dat", ".//secret.dat", "secret.dat/", "/secret.dat", "a/../secret.dat"])
async def test_a_payload_is_one_payload_however_its_uri_is_spelt(
    owned: Registry, accounts: dict[str, dict[str, str]], alias: str
) -> None:
    client = owned.client
    secret = await owned.register("secret", "secret.dat")
    await client.patch("/request/set_acl", params={"uid": secret, "acl": '{"read": []}'})
    attacker = accounts["other"]
    stolen = await client.post(
        "/ingest/register_data_item",
        params={"item_name": "steal", "uri": alias, "storage_name": "disk"},
        headers=attacker,
    )
    if ".." in alias:
        assert_error(stolen, 422, "InvalidQueryParameters", "'..'")
    else:
        assert_error(stolen, 422, "ValueAlreadyInDB", "secret")
    bulk = await client.post(
        "/ingest/register_data_items",
        json=[{"item_name": "steal", "uri": alias, "storage_name": "disk"}],
        headers=attacker,
    )
    assert bulk.status_code in (409, 422), bulk.text
    # Re-pointing an item of one's own at the other's bytes is refused the same way.
    (owned.root / "decoy.dat").write_bytes(b"payload\n")
    client.headers.update(attacker)
    decoy = await owned.register("decoy", "decoy.dat")
    storage_id = (await owned.item(decoy))["storage_id"]
    repointed = await client.patch("/request/set_uri", params={"uid": decoy, "uri": alias, "storage_id": storage_id})
    assert repointed.status_code in (409, 422), repointed.text
    assert (await owned.item(decoy))["uri"] == "decoy.dat"
    readable = await client.get("/request/retrieve", params={"item_name": "secret"}, headers=attacker)
    assert_error(readable, 403, "Forbidden")


async def test_uris_are_stored_canonical(owned: Registry) -> None:
    owned.payload("runs/a.dat")
    uid = await owned.register("canonical", "./runs//a.dat/")
    assert (await owned.item(uid))["uri"] == "runs/a.dat"
    owned.payload("runs/b.dat")
    kept = await owned.register("ska-style", "/runs/b.dat")
    assert (await owned.item(kept))["uri"] == "/runs/b.dat", "SKA-DLM's leading '/' is kept"


async def test_set_uri_checks_the_payload_and_records_its_size_and_checksum(
    owned: Registry, accounts: dict[str, dict[str, str]]
) -> None:
    client = owned.client
    uid = await owned.register("pointed", "first.dat")
    before = await owned.item(uid)
    storage_id = before["storage_id"]

    missing = await client.patch(
        "/request/set_uri", params={"uid": uid, "uri": "nowhere.dat", "storage_id": storage_id}
    )
    assert_error(missing, 422, "UnmetPreconditionForOperation", "no payload at 'nowhere.dat'")
    owned.payload("same-size.dat", b"PAYLOAD\n")
    other_bytes = await client.patch(
        "/request/set_uri", params={"uid": uid, "uri": "same-size.dat", "storage_id": storage_id}
    )
    assert other_bytes.status_code == 200, "the item's only replica: nothing to compare with"
    assert other_bytes.json()["item_checksum"] != before["item_checksum"], "the checksum of the bytes it points at"

    client.headers.update(accounts["admin"])
    second = owned.root.parent / "second"
    second_id = await owned.storage("second", root=second)
    client.headers.update(accounts["owner"])
    replica = (await client.post("/ingest/init_data_item", json={"oid": before["oid"]})).json()
    for name, content, fragments in (
        ("longer.dat", b"longer payload\n", ("15 bytes", "not a replica of that item")),
        ("differs.dat", b"payload\n", ("differs from the item's READY replicas",)),
    ):
        owned.payload(name, content, root=second)
        refused = await client.patch("/request/set_uri", params={"uid": replica, "uri": name, "storage_id": second_id})
        assert_error(refused, 422, "UnmetPreconditionForOperation", *fragments)
    owned.payload("copy.dat", b"PAYLOAD\n", root=second)
    accepted = await client.patch(
        "/request/set_uri", params={"uid": replica, "uri": "copy.dat", "storage_id": second_id}
    )
    assert accepted.status_code == 200, accepted.text
    assert (accepted.json()["item_size"], accepted.json()["item_checksum"]) == (8, other_bytes.json()["item_checksum"])


async def test_new_items_get_the_default_group_of_the_deployment(
    database_url: str, tmp_path: Path, accounts: dict[str, dict[str, str]]
) -> None:
    settings = make_settings(database_url, tmp_path, auth="required", default_group="low-sw")
    async with AsyncTestClient(create_app(settings)) as client:
        client.headers.update(accounts["admin"])
        registry = Registry(client, tmp_path / "store")
        await registry.storage()
        client.headers.update(accounts["owner"])
        registered = await registry.item(await registry.register("grouped"))
        assert (registered["item_owner"], registered["item_group"]) == ("token:owner", "low-sw")
        registry.payload("b.dat")
        bulk = await client.post(
            "/ingest/register_data_items", json=[{"item_name": "b", "uri": "b.dat", "storage_name": "disk"}]
        )
        assert (await registry.item(bulk.json()[0]))["item_group"] == "low-sw"
        initialised = (await client.post("/ingest/init_data_item", params={"item_name": "later"})).json()
        assert (await registry.item(initialised))["item_group"] == "low-sw"
