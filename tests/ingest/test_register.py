import os
from pathlib import Path

import crc32c
import pytest

from tests.conftest import Registry, assert_error


async def test_register_in_one_call_makes_a_ready_replica(registry: Registry) -> None:
    registry.payload("obs/vis.ms", b"0123456789")
    response = await registry.client.post(
        "/ingest/register_data_item",
        params={"item_name": "vis", "uri": "obs/vis.ms", "storage_name": "disk"},
        json={"scan": 7, "nested": {"a": [1, 2]}},
    )
    assert response.status_code == 200, response.text
    uid = response.json()
    item = await registry.item(uid)
    assert item["item_state"] == "READY"
    assert item["oid"] == uid
    assert item["uri"] == "obs/vis.ms"
    assert item["item_size"] == 10
    assert item["item_checksum"] == f"{crc32c.crc32c(b'0123456789'):08x}"
    assert item["checksum_method"] == "crc32c"
    assert item["item_version"] == 1
    assert item["uid_phase"] == item["oid_phase"] == "GAS"
    assert item["target_phase"] == "SOLID"
    assert item["item_owner"] == item["item_group"] == "SKA"
    # Metadata is a JSON object (never a double-encoded string), as sent, with uid and item_name added:
    # what DLM finds about the payload is in columns of its own.
    assert item["metadata"] == {"scan": 7, "nested": {"a": [1, 2]}, "uid": uid, "item_name": "vis"}
    assert item["payload_modified"].endswith("+00:00") and item["item_mime_type"] == "application/octet-stream"
    assert item["uid_creation"].endswith("+00:00")


async def test_registering_twice_on_one_storage_is_refused(registry: Registry) -> None:
    await registry.register("twice")
    response = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "twice", "uri": "twice", "storage_name": "disk"}
    )
    assert_error(response, 422, "ValueAlreadyInDB", "already registered", "disk")
    rows = (await registry.client.get("/request/query_data_item", params={"item_name": "twice"})).json()
    assert len(rows) == 1


async def test_a_payload_backs_one_live_replica_only(registry: Registry) -> None:
    """Two items naming one file would mean deleting either deletes the other's bytes."""
    await registry.register("original", "shared.dat")
    again = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "alias", "uri": "shared.dat", "storage_name": "disk"}
    )
    assert_error(again, 422, "ValueAlreadyInDB", "uri: 'shared.dat'", "item 'original'")
    registry.payload("b.dat")
    bulk = await registry.client.post(
        "/ingest/register_data_items",
        json=[
            {"item_name": "b", "uri": "b.dat", "storage_name": "disk"},
            {"item_name": "b-again", "uri": "b.dat", "storage_name": "disk"},
        ],
    )
    assert_error(bulk, 422, "ValueAlreadyInDB", "items[0].uri: 'b.dat' appears twice")
    assert (await registry.client.get("/request/query_data_item", params={"item_name": "b"})).json() == []

    other = await registry.register("other", "other.dat")
    storage_id = (await registry.item(other))["storage_id"]
    moved = await registry.client.patch(
        "/request/set_uri", params={"uid": other, "uri": "shared.dat", "storage_id": storage_id}
    )
    assert_error(moved, 422, "ValueAlreadyInDB", "uri: this payload is already another live replica's")


async def test_the_same_name_on_another_storage_is_a_new_version(registry: Registry, tmp_path: Path) -> None:
    first = await registry.register("product")
    await registry.storage("tape-cache", root=tmp_path / "other")
    registry.payload("product", root=tmp_path / "other")
    response = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "product", "uri": "product", "storage_name": "tape-cache"}
    )
    assert response.status_code == 200, response.text
    second = await registry.item(response.json())
    assert second["oid"] != first
    assert second["item_version"] == 2


async def test_a_deleted_registration_does_not_block_a_new_one(registry: Registry) -> None:
    uid = await registry.register("again")
    await registry.client.patch("/request/set_state", params={"uid": uid, "state": "DELETED"})
    response = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "again", "uri": "again", "storage_name": "disk"}
    )
    assert response.status_code == 200, response.text


async def test_storage_by_id_and_defaults_for_expiry(registry: Registry) -> None:
    storage_id = (await registry.client.get("/storage/query_storage", params={"storage_name": "disk"})).json()[0][
        "storage_id"
    ]
    registry.payload("by-id")
    response = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "by-id", "uri": "by-id", "storage_id": storage_id}
    )
    item = await registry.item(response.json())
    assert item["storage_id"] == storage_id
    assert item["oid_expiration"] == "2099-12-31T23:59:59+00:00"
    assert item["uid_expiration"] > item["uid_creation"]


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("2030-01-01T00:00:00", "2030-01-01T00:00:00+00:00"),  # naive means UTC
        ("2030-01-01T02:00:00+02:00", "2030-01-01T00:00:00+00:00"),
        ("2030-01-01T00:00:00Z", "2030-01-01T00:00:00+00:00"),
        ("2030-01-01", "2030-01-01T00:00:00+00:00"),
    ],
)
async def test_expirations_accept_naive_and_aware_times(registry: Registry, value: str, stored: str) -> None:
    uid = await registry.register("timed", uid_expiration=value, oid_expiration=value)
    item = await registry.item(uid)
    assert item["uid_expiration"] == item["oid_expiration"] == stored


async def test_the_payload_must_exist_unless_the_check_is_off(registry: Registry) -> None:
    params = {"item_name": "ghost", "uri": "nowhere.dat", "storage_name": "disk"}
    response = await registry.client.post("/ingest/register_data_item", params=params)
    assert_error(response, 422, "UnmetPreconditionForOperation", "no payload", "nowhere.dat")
    response = await registry.client.post(
        "/ingest/register_data_item", params={**params, "do_storage_access_check": "false", "item_size": 5}
    )
    assert response.status_code == 200
    item = await registry.item(response.json())
    assert item["item_size"] == 5 and item["item_checksum"] is None


async def test_containers_are_directories(registry: Registry) -> None:
    registry.payload("run1/a.dat")
    uid = await registry.register("run1", "run1", item_type="container")
    assert (await registry.item(uid))["item_type"] == "container"
    response = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "dir-as-file", "uri": "run1", "storage_name": "disk"}
    )
    assert_error(response, 422, "UnmetPreconditionForOperation", "is a directory, not a file")
    response = await registry.client.post(
        "/ingest/register_data_item",
        params={"item_name": "file-as-dir", "uri": "run1/a.dat", "storage_name": "disk", "item_type": "container"},
    )
    assert_error(response, 422, "UnmetPreconditionForOperation", "is a file, not a container")


async def test_children_point_at_their_container(registry: Registry) -> None:
    registry.payload("run2/a.dat")
    container = await registry.register("run2", "run2", item_type="container")
    child = await registry.register("run2/a.dat", "run2/a.dat", parents=container)
    assert (await registry.item(child))["parents"] == container
    response = await registry.client.post(
        "/ingest/register_data_item",
        params={
            "item_name": "orphan",
            "uri": "run2/a.dat",
            "storage_name": "disk",
            "parents": "00000000-0000-0000-0000-000000000001",
        },
    )
    assert_error(response, 422, "InvalidQueryParameters", "parents")


async def test_a_container_can_register_its_members_in_the_same_call(registry: Registry) -> None:
    members = {"run/a.ms": b"a" * 10, "run/sub/b.ms": b"b" * 20}
    for uri, content in members.items():
        registry.payload(uri, content)
    response = await registry.client.post(
        "/ingest/register_data_item",
        params={
            "item_name": "run",
            "uri": "run",
            "storage_name": "disk",
            "item_type": "container",
            "register_members": True,
            "target_phase": "LIQUID",
        },
    )
    assert response.status_code == 200, response.text
    container = await registry.item(response.json())
    rows = (await registry.client.get("/request/query_data_item", params={"params": "item_name=like.run/*"})).json()
    by_name = {row["item_name"]: row for row in rows}
    assert set(by_name) == {"run/a.ms", "run/sub/b.ms"}
    for name, row in by_name.items():
        assert (row["parents"], row["uri"], row["item_state"]) == (container["oid"], name, "READY")
        assert row["item_size"] == len(members[name]) and row["target_phase"] == "LIQUID"

    registry.payload("single", b"x")
    not_a_container = await registry.client.post(
        "/ingest/register_data_item",
        params={"item_name": "single", "uri": "single", "storage_name": "disk", "register_members": True},
    )
    assert_error(not_a_container, 422, "InvalidQueryParameters", "register_members")
    assert (await registry.client.get("/request/query_data_item", params={"item_name": "single"})).json() == []


@pytest.mark.parametrize("uri", ["../outside.txt", "/../etc/passwd", "a/../../b", "", "  ", "/", "\\share\\x"])
async def test_uris_cannot_escape_the_storage_root(registry: Registry, uri: str) -> None:
    response = await registry.client.post(
        "/ingest/register_data_item",
        params={"item_name": "escape", "uri": uri, "storage_name": "disk", "do_storage_access_check": "false"},
    )
    assert_error(response, 422, "InvalidQueryParameters", "uri")


async def test_a_symlink_out_of_the_root_is_refused(registry: Registry, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    os.symlink(secret, registry.root / "link.txt")
    response = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "link", "uri": "link.txt", "storage_name": "disk"}
    )
    assert_error(response, 422, "InvalidQueryParameters", "outside the storage root")


@pytest.mark.parametrize(
    ("params", "status", "name", "fragment"),
    [
        ({"item_type": "folder"}, 422, "InvalidQueryParameters", "item_type"),
        ({"target_phase": "STEAM"}, 422, "InvalidQueryParameters", "target_phase"),
        ({"item_size": "big"}, 422, "InvalidQueryParameters", "item_size"),
        ({"item_size": "-1"}, 422, "InvalidQueryParameters", "item_size"),
        ({"do_storage_access_check": "perhaps"}, 422, "InvalidQueryParameters", "do_storage_access_check"),
        ({"uid_expiration": "next tuesday"}, 422, "InvalidQueryParameters", "uid_expiration"),
        ({"oid_expiration": "2030-13-01"}, 422, "InvalidQueryParameters", "oid_expiration"),
        ({"storage_name": "nope"}, 422, "InvalidQueryParameters", "nope"),
        ({"storage_name": "", "storage_id": "not-a-uuid"}, 422, "InvalidQueryParameters", "storage_id"),
        (
            {"storage_name": "", "storage_id": "00000000-0000-0000-0000-000000000000"},
            422,
            "InvalidQueryParameters",
            "storage",
        ),
        ({"storage_name": ""}, 422, "InvalidQueryParameters", "storage_name"),
        ({"item_name": ""}, 422, "InvalidQueryParameters", "item_name"),
        ({"parents": "x"}, 422, "InvalidQueryParameters", "parents"),
    ],
)
async def test_bad_registration_input_is_a_clear_4xx(
    registry: Registry, params: dict[str, str], status: int, name: str, fragment: str
) -> None:
    registry.payload("good.dat")
    base = {"item_name": "good", "uri": "good.dat", "storage_name": "disk"}
    response = await registry.client.post("/ingest/register_data_item", params={**base, **params})
    assert_error(response, status, name, fragment)
    assert (await registry.client.get("/request/query_data_item")).json() == [], "nothing half-written"


async def test_required_parameters_and_body_shape(registry: Registry) -> None:
    response = await registry.client.post("/ingest/register_data_item", params={"uri": "x"})
    assert_error(response, 422, "InvalidQueryParameters", "item_name")
    registry.payload("body.dat")
    params = {"item_name": "body", "uri": "body.dat", "storage_name": "disk"}
    response = await registry.client.post("/ingest/register_data_item", params=params, json=[1, 2])
    assert_error(response, 422, "InvalidQueryParameters", "data")
    response = await registry.client.post(
        "/ingest/register_data_item", params=params, content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(response, 422, "InvalidQueryParameters", "body")


async def test_a_retired_storage_takes_no_registrations(registry: Registry, engine: object) -> None:
    from sqlalchemy import text

    async with engine.begin() as connection:  # type: ignore[attr-defined]
        await connection.execute(text("UPDATE storage SET storage_retired = true"))
    registry.payload("late.dat")
    response = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "late", "uri": "late.dat", "storage_name": "disk"}
    )
    assert_error(response, 422, "UnmetPreconditionForOperation", "retired")


async def test_large_payloads_are_registered_without_a_checksum(registry: Registry, settings: object) -> None:
    path = registry.payload("big.bin", b"")
    with path.open("wb") as stream:  # sparse: 1 GiB on paper, nothing on disk
        stream.truncate(1 << 30)
    uid = await registry.register("big", "big.bin")
    item = await registry.item(uid)
    assert item["item_size"] == 1 << 30
    assert item["item_checksum"] is None
