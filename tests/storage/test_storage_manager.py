"""The storage manager: locations, storages, configs (validated, never shown with secrets), usage,
payload deletion under the resilience rule, and seeding from files."""

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from dlm.config import Settings
from dlm.db.engine import create_engine, create_sessionmaker, transaction
from dlm.serve import seed_listed_storages
from tests.conftest import Registry, assert_error, make_settings


async def test_locations_and_facilities(client: AsyncTestClient) -> None:
    facilities = (await client.get("/storage/query_location_facility")).json()
    assert "Pawsey Centre" in facilities, facilities
    created = await client.post(
        "/storage/init_location",
        params={"location_name": "pawsey", "location_type": "low-operations", "location_city": "Perth"},
    )
    assert created.status_code == 200, created.text
    [row] = (await client.get("/storage/query_location", params={"location_name": "pawsey"})).json()
    assert row["location_id"] == created.json()
    assert (row["location_type"], row["location_city"]) == ("low-operations", "Perth")

    again = await client.post(
        "/storage/init_location", params={"location_name": "pawsey", "location_type": "low-operations"}
    )
    assert again.status_code == 422, again.text
    assert "pawsey" in again.json()["message"]
    bad_type = await client.post("/storage/init_location", params={"location_name": "x", "location_type": "moon"})
    assert bad_type.status_code == 422 and "location_type" in bad_type.json()["message"]
    bad_facility = await client.post(
        "/storage/init_location",
        params={"location_name": "x", "location_type": "low-operations", "location_facility": "Atlantis"},
    )
    # As SKA-DLM answers it (its test_location_init_with_invalid_facility): a foreign key, 409.
    assert_error(bad_facility, 409, "DatabaseOperationError", "location_facility", "foreign key", "Atlantis")


async def test_storage_creation_errors(registry: Registry, tmp_path: Path) -> None:
    client = registry.client
    (tmp_path / "elsewhere").mkdir()
    base = {
        "storage_type": "filesystem",
        "storage_interface": "posix",
        "root_directory": str(tmp_path / "elsewhere"),
        "location_name": "site",
    }
    duplicate = await client.post("/storage/init_storage", params={**base, "storage_name": "disk"})
    assert_error(duplicate, 422, "ValueAlreadyInDB", "storage_name", "disk")
    relative = await client.post("/storage/init_storage", params={**base, "storage_name": "b", "root_directory": "x"})
    assert_error(relative, 422, "InvalidQueryParameters", "root_directory")
    # A root that is not on this host waits, unavailable, for a config saying how to reach it (as
    # ska-dlm-client registers its watch directory); a relative one is refused.
    missing = await client.post(
        "/storage/init_storage", params={**base, "storage_name": "absent", "root_directory": str(tmp_path / "absent")}
    )
    assert missing.status_code == 200, missing.text
    [waiting] = (await client.get("/storage/query_storage", params={"storage_name": "absent"})).json()
    assert waiting["storage_available"] is False
    events = (await client.get("/storage/query_storage_events", params={"storage_name": "absent"})).json()
    assert "waiting_for_config" in [event["event"] for event in events]
    nowhere = await client.post("/storage/init_storage", params={**base, "storage_name": "b", "location_name": "moon"})
    assert_error(nowhere, 422, "InvalidQueryParameters", "moon")
    wrong_config = await client.post(
        "/storage/init_storage", params={**base, "storage_name": "b"}, json={"type": "s3", "provider": "Other"}
    )
    assert_error(wrong_config, 422, "InvalidQueryParameters", "config.type", "posix")
    assert [row["storage_name"] for row in (await client.get("/storage/query_storage")).json()] == ["absent", "disk"]


async def test_init_storage_takes_skas_json_row(registry: Registry, tmp_path: Path) -> None:
    """SKA-DLM's init_storage also took the whole storage row as its body; its values stand for the
    query's (which SKA's route required all the same)."""
    client = registry.client
    (tmp_path / "tape").mkdir()
    [site] = (await client.get("/storage/query_location", params={"location_name": "site"})).json()
    query = {
        "storage_name": "ignored",
        "storage_type": "filesystem",
        "storage_interface": "posix",
        "root_directory": "/",
    }
    row = {
        "storage_name": "archive", "storage_type": "filesystem", "storage_interface": "posix",
        "root_directory": str(tmp_path / "tape"), "location_id": site["location_id"],
        "storage_capacity": 1000, "storage_phase": "SOLID",
    }  # fmt: skip
    made = await client.post("/storage/init_storage", params=query, json=row)
    assert made.status_code == 200, made.text
    [storage] = (await client.get("/storage/query_storage", params={"storage_id": made.json()})).json()
    assert (storage["storage_name"], storage["root_directory"], storage["storage_phase"]) == (
        "archive",
        str(tmp_path / "tape"),
        "SOLID",
    )
    assert storage["storage_capacity"] == 1000 and storage["location_id"] == site["location_id"]
    for broken, field in (
        ({**row, "storage_name": "x", "storage_type": "floppy"}, "storage_type"),
        (
            {key: value for key, value in row.items() if key != "root_directory"} | {"storage_name": "y"},
            "root_directory",
        ),
        ({key: value for key, value in row.items() if key != "location_id"} | {"storage_name": "z"}, "location"),
    ):
        refused = await client.post("/storage/init_storage", params=query, json=broken)
        assert_error(refused, 422, "InvalidQueryParameters", "body", field)
    assert {row["storage_name"] for row in (await client.get("/storage/query_storage")).json()} == {"disk", "archive"}


BAD_S3_CONFIGS = [
    ({}, "config"),
    ({"type": "ftp-ish"}, "config.type"),
    ({"type": "s3", "secret_access_key": "s"}, "config.access_key_id"),
    ({"type": "s3", "access_key_id": "a", "secret_access_key": "s", "endpoint": "minio:9000"}, "config.endpoint"),
    (
        {"type": "s3", "access_key_id": "a", "secret_access_key": "s", "endpoint": "http://127.0.0.1:abc"},
        "config.endpoint",
    ),
    (
        {"type": "s3", "access_key_id": "a", "secret_access_key": "s", "endpoint": "http://127.0.0.1:99999"},
        "config.endpoint",
    ),
    (
        {"type": "s3", "access_key_id": "a", "secret_access_key": "s", "endpoint": "http://127.0.0.1:-1"},
        "config.endpoint",
    ),
    ({"type": "s3", "access_key_id": "a", "secret_access_key": "s", "endpoint": "http://[::1"}, "config.endpoint"),
    ({"type": "s3", "access_key_id": "a", "secret_access_key": "s", "part_size": 1024}, "config.part_size"),
    ({"type": "s3", "access_key_id": "a", "secret_access_key": "s", "region": {"nested": 1}}, "config.region"),
    ({"name": "objects", "type": "s3", "parameters": "not an object"}, "config.parameters"),
    ({"type": "local"}, "config.type"),
]


@pytest.mark.parametrize(("config", "field"), BAD_S3_CONFIGS)
async def test_bad_s3_configs_are_refused_with_the_field_named(
    registry: Registry, s3_config: dict[str, Any], config: dict[str, Any], field: str
) -> None:
    await registry.s3_storage("objects", "some-bucket", s3_config, check=False)
    response = await registry.client.post(
        "/storage/create_storage_config", params={"storage_name": "objects"}, json=config
    )
    assert_error(response, 422, "InvalidQueryParameters", field)
    # Nothing was stored: the storage still has only the config it was created with.
    stored = (await registry.client.get("/storage/get_storage_config", params={"storage_name": "objects"})).json()
    assert len(stored) == 1


async def test_configs_are_stored_newest_first_and_never_shown_with_secrets(
    registry: Registry, s3_config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await registry.s3_storage("objects", "some-bucket", s3_config, check=False)
    newer = {**s3_config, "secret_access_key": "rotated-secret", "session_token": "tok-123"}
    response = await registry.client.post(
        "/storage/create_storage_config", params={"storage_name": "objects"}, json=newer
    )
    assert response.status_code == 200, response.text

    listed = await registry.client.get("/storage/get_storage_config", params={"storage_name": "objects"})
    assert listed.status_code == 200, listed.text
    first, second = listed.json()
    assert first["secret_access_key"] == "***" and first["session_token"] == "***"
    assert first["access_key_id"] == s3_config["access_key_id"] and first["endpoint"] == s3_config["endpoint"]
    assert second["secret_access_key"] == "***"
    for secret in ("rotated-secret", "tok-123", s3_config["secret_access_key"]):
        assert secret not in listed.text
        assert secret not in caplog.text

    storage_id = (await registry.client.get("/storage/query_storage", params={"storage_name": "objects"})).json()[0][
        "storage_id"
    ]
    by_id = await registry.client.get("/storage/get_storage_config", params={"storage_id": storage_id})
    assert by_id.json() == listed.json()
    unknown = await registry.client.get("/storage/get_storage_config", params={"storage_name": "nope"})
    assert_error(unknown, 422, "InvalidQueryParameters", "nope")
    # Neither name nor id: every storage's configs, newest first, as SKA-DLM lists them.
    await registry.s3_storage("others", "other-bucket", s3_config, check=False)
    everything = await registry.client.get("/storage/get_storage_config")
    assert everything.status_code == 200, everything.text
    assert len(everything.json()) == 3 and everything.json()[1:] == listed.json()
    for secret in ("rotated-secret", "tok-123", s3_config["secret_access_key"]):
        assert secret not in everything.text


async def test_rclone_config_stores_a_remote_named_after_its_storage(
    registry: Registry, s3_config: dict[str, Any]
) -> None:
    await registry.s3_storage("objects", "some-bucket", s3_config, check=False)
    parameters = {key: value for key, value in s3_config.items() if key != "type"}
    remote = {"name": "objects", "type": "s3", "parameters": {**parameters, "secret_access_key": "new-secret"}}
    response = await registry.client.post("/storage/rclone_config", json=remote)
    assert response.status_code == 200, response.text
    assert response.json() is True
    [newest, _] = (await registry.client.get("/storage/get_storage_config", params={"storage_name": "objects"})).json()
    assert newest["parameters"]["secret_access_key"] == "***"
    assert newest["parameters"]["endpoint"] == s3_config["endpoint"]

    nameless = await registry.client.post("/storage/rclone_config", json={"type": "s3", "parameters": parameters})
    assert_error(nameless, 422, "InvalidQueryParameters", "config.name")
    unknown = await registry.client.post("/storage/rclone_config", json={**remote, "name": "elsewhere"})
    assert_error(unknown, 422, "InvalidQueryParameters", "elsewhere")


async def test_ssh_public_key(database_url: str, tmp_path: Path) -> None:
    from dlm.app import create_app

    settings = make_settings(database_url, tmp_path)
    async with AsyncTestClient(create_app(settings)) as client:
        assert_error(
            await client.get("/storage/get_ssh_public_key"), 422, "InvalidQueryParameters", "DLM_SSH_PUBLIC_KEY_FILE"
        )
    key = tmp_path / "id_ed25519.pub"
    key.write_text("ssh-ed25519 AAAAC3Nza dlm@observatory\n")
    settings = make_settings(database_url, tmp_path, ssh_public_key_file=str(key))
    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.get("/storage/get_ssh_public_key")
    assert response.status_code == 200, response.text
    assert response.json() == "ssh-ed25519 AAAAC3Nza dlm@observatory"


async def test_storage_usage_counts_what_dlm_holds(registry: Registry) -> None:
    client = registry.client
    small = registry.root.parent / "small"
    small.mkdir()
    response = await client.post(
        "/storage/init_storage",
        params={
            "storage_name": "small",
            "storage_type": "filesystem",
            "storage_interface": "posix",
            "root_directory": str(small),
            "location_name": "site",
            "storage_capacity": 1000,
        },
    )
    assert response.status_code == 200, response.text
    registry.payload("a", b"x" * 100, root=small)
    registry.payload("b", b"y" * 150, root=small)
    await registry.register("a", storage="small", do_storage_access_check=False, item_size=100)
    uid = await registry.register("b", storage="small", do_storage_access_check=False, item_size=150)

    usage = {row["storage_name"]: row for row in (await client.get("/storage/storage_usage")).json()}
    small = usage["small"]
    assert (small["capacity_bytes"], small["used_bytes"], small["objects"], small["use_pct"]) == (1000, 250, 2, 25.0)
    assert small["filesystem_total_bytes"] > 0 and small["filesystem_free_bytes"] > 0
    assert (usage["disk"]["used_bytes"], usage["disk"]["capacity_bytes"], usage["disk"]["use_pct"]) == (0, None, None)

    deleted = await client.post("/storage/delete_data_item_payload", params={"uid": uid, "force": True})
    assert deleted.status_code == 200, deleted.text
    [small] = (await client.get("/storage/storage_usage", params={"storage_name": "small"})).json()
    assert (small["used_bytes"], small["objects"]) == (100, 1)
    assert_error(await client.get("/storage/storage_usage", params={"storage_name": "nope"}), 404, "NotFound")


async def _second_storage(registry: Registry, tmp_path: Path, phase: str = "GAS") -> Path:
    root = tmp_path / "second"
    await registry.storage("second", root=root, phase=phase)
    return root


async def test_deleting_a_payload_keeps_the_row_as_the_trace(registry: Registry) -> None:
    uid = await registry.register("obs-1", target_phase="GAS")
    path = registry.root / "obs-1"
    response = await registry.client.post("/storage/delete_data_item_payload", params={"uid": uid, "force": True})
    assert response.status_code == 200, response.text
    [row] = response.json()
    assert (row["uid"], row["item_state"]) == (uid, "DELETED")
    assert not path.exists()
    assert (await registry.item(uid))["item_state"] == "DELETED"

    again = await registry.client.post("/storage/delete_data_item_payload", params={"uid": uid})
    assert_error(again, 422, "UnmetPreconditionForOperation", "DELETED")
    assert_error(
        await registry.client.post("/storage/delete_data_item_payload", params={"uid": "not-a-uuid"}),
        422,
        "InvalidQueryParameters",
        "uid",
    )


async def test_deletion_that_would_break_the_target_phase_is_refused(registry: Registry, tmp_path: Path) -> None:
    second_root = await _second_storage(registry, tmp_path, phase="SOLID")
    gas_uid = await registry.register("obs-1")
    solid_uid = await registry.replica(gas_uid, "second", second_root, "replica")
    assert (await registry.item(gas_uid))["target_phase"] == "SOLID"  # registration's default target

    # The GAS replica adds nothing the SOLID one does not give: it may go.
    assert (await registry.client.post("/storage/delete_data_item_payload", params={"uid": gas_uid})).status_code == 200
    # The SOLID one is the last: the item would fall to PLASMA, below its SOLID target.
    refused = await registry.client.post("/storage/delete_data_item_payload", params={"uid": solid_uid})
    assert_error(refused, 422, "UnmetPreconditionForOperation", "target_phase", "force=true")
    assert (second_root / "replica").exists()
    assert (await registry.item(solid_uid))["item_state"] == "READY"

    forced = await registry.client.post("/storage/delete_data_item_payload", params={"uid": solid_uid, "force": True})
    assert forced.status_code == 200, forced.text
    assert not (second_root / "replica").exists()


async def test_an_expired_item_may_lose_its_last_replica(registry: Registry) -> None:
    uid = await registry.register("obs-1")
    refused = await registry.client.post("/storage/delete_data_item_payload", params={"uid": uid})
    assert refused.status_code == 422
    expired = await registry.client.patch(
        "/request/set_oid_expiration", params={"oid": (await registry.item(uid))["oid"], "expiration": "2000-01-01"}
    )
    assert expired.status_code == 200, expired.text
    response = await registry.client.post("/storage/delete_data_item_payload", params={"uid": uid})
    assert response.status_code == 200, response.text


async def test_deleting_a_container_takes_its_registered_children(registry: Registry) -> None:
    for member in ("run/a.ms", "run/sub/b.ms"):
        registry.payload(member)
    container_uid = await registry.register("run", item_type="container", target_phase="GAS")
    container_oid = (await registry.item(container_uid))["oid"]
    child_uid = await registry.register("run/a.ms", parents=container_oid, target_phase="GAS")
    bystander = await registry.register("other", target_phase="GAS")

    deleted = await registry.client.post(
        "/storage/delete_data_item_payload", params={"uid": container_uid, "force": True}
    )
    assert deleted.status_code == 200, deleted.text
    assert {row["uid"] for row in deleted.json()} == {container_uid, child_uid}
    assert not (registry.root / "run").exists()
    assert (await registry.item(child_uid))["item_state"] == "DELETED"
    assert (await registry.item(bystander))["item_state"] == "READY"
    assert (registry.root / "other").exists()


async def test_seeding_from_files_is_idempotent(
    database_url: str, tmp_path: Path, s3_config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dlm.serve")
    posix_root = tmp_path / "posix"
    posix_root.mkdir()
    locations = tmp_path / "locations.toml"
    locations.write_text(
        '[[locations]]\nlocation_name = "pawsey"\nlocation_type = "low-operations"\nlocation_city = "Perth"\n'
    )
    storages = tmp_path / "storages.json"
    entries = [
        {
            "storage_name": "scratch",
            "location_name": "pawsey",
            "storage_type": "filesystem",
            "storage_interface": "posix",
            "root_directory": str(posix_root),
        },
        {
            "storage_name": "acacia",
            "location_name": "pawsey",
            "storage_type": "objectstore",
            "storage_interface": "s3",
            "root_directory": "acacia-bucket",
            "storage_phase": "SOLID",
            "config": s3_config,
        },
    ]
    storages.write_text(json.dumps({"storages": entries}))
    settings = Settings(
        database_url=database_url,
        data_dir=str(tmp_path / "data"),
        location_config=str(locations),
        storage_config=str(storages),
    )
    await _seed(settings)
    await _seed(settings)  # a restart changes nothing
    assert caplog.text.count("created storage acacia") == 1
    assert "updated the config" not in caplog.text

    entries[1]["config"] = {**s3_config, "secret_access_key": "rotated"}
    storages.write_text(json.dumps(entries))  # a bare list is accepted too
    await _seed(settings)
    assert caplog.text.count("updated the config of storage acacia") == 1
    assert "rotated" not in caplog.text

    engine = create_engine(database_url, pool_size=1)
    try:
        from dlm.storage import service

        async with transaction(create_sessionmaker(engine), actor="test") as session:
            storages_found = {row.storage_name: row for row in await service.query_storages(session)}
            assert set(storages_found) == {"scratch", "acacia"}
            assert storages_found["acacia"].storage_phase.value == "SOLID"
            assert len(await service.get_storage_configs(session, storage_name="acacia")) == 2
            assert len(await service.query_locations(session, location_name="pawsey")) == 1
    finally:
        await engine.dispose()


async def test_a_bad_seed_file_names_the_file_and_the_field(database_url: str, tmp_path: Path) -> None:
    storages = tmp_path / "storages.json"
    storages.write_text(json.dumps([{"storage_name": "x", "location_name": "nowhere"}]))
    settings = Settings(database_url=database_url, data_dir=str(tmp_path), storage_config=str(storages))
    from dlm.errors import InvalidQueryParameters

    with pytest.raises(InvalidQueryParameters) as raised:
        await _seed(settings)
    assert "storages.json" in str(raised.value) and "storage_type" in str(raised.value)


async def _seed(settings: Settings) -> None:
    """What `dlm serve` does with the seed files at start-up."""
    assert settings.database_url is not None
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        async with transaction(create_sessionmaker(engine), actor="test") as session:
            await seed_listed_storages(session, settings)
    finally:
        await engine.dispose()


async def _put(config: dict[str, Any], bucket: str, uri: str, content: bytes) -> None:
    from dlm.enums import StorageInterface
    from dlm.transfer.backends import make_backend

    async def chunks() -> Any:
        yield content

    async with make_backend(StorageInterface.S3, bucket, config, "test") as backend:
        await backend.write(uri, chunks())


async def test_s3_payloads_are_checked_at_registration_and_deleted_from_the_bucket(
    registry: Registry, s3_config: dict[str, Any], s3_bucket: str
) -> None:
    await registry.s3_storage("objects", s3_bucket, s3_config)
    await _put(s3_config, s3_bucket, "obs/vis.ms", b"v" * 1000)
    client = registry.client
    absent = await client.post(
        "/ingest/register_data_item", params={"item_name": "nope", "uri": "obs/absent", "storage_name": "objects"}
    )
    assert absent.status_code == 422 and "obs/absent" in absent.json()["message"], absent.text
    escape = await client.post(
        "/ingest/register_data_item", params={"item_name": "esc", "uri": "../other/x", "storage_name": "objects"}
    )
    assert escape.status_code == 422 and "uri" in escape.json()["message"], escape.text

    response = await client.post(
        "/ingest/register_data_item",
        params={"item_name": "vis", "uri": "obs/vis.ms", "storage_name": "objects", "target_phase": "GAS"},
    )
    assert response.status_code == 200, response.text
    item = await registry.item(response.json())
    assert item["item_size"] == 1000 and item["uid_phase"] == "SOLID"

    deleted = await client.post("/storage/delete_data_item_payload", params={"uid": item["uid"], "force": True})
    assert deleted.status_code == 200, deleted.text
    again = await client.post(
        "/ingest/register_data_item", params={"item_name": "vis2", "uri": "obs/vis.ms", "storage_name": "objects"}
    )
    assert again.status_code == 422, "the object is gone from the bucket"


async def test_an_unreachable_s3_endpoint_is_a_503_not_a_500(registry: Registry, s3_config: dict[str, Any]) -> None:
    from tests.conftest import free_port

    dead = {**s3_config, "endpoint": f"http://127.0.0.1:{free_port()}"}
    await registry.s3_storage("dead", "some-bucket", dead, check=False)
    response = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "x", "uri": "x", "storage_name": "dead"}
    )
    assert_error(response, 503, "StorageUnreachable")
