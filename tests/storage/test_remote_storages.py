"""Storages as SKA-DLM deployments describe them: POSIX file systems on other hosts reached over SFTP,
SFTP storages, and alias remotes whose ``remote`` path is where the files are."""

from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from dlm.app import create_app
from dlm.config import Settings
from dlm.transfer.obscured import obscure
from tests.conftest import Registry, SshServer, assert_error


def storage(name: str, root: Path | str, interface: str = "posix", **params: Any) -> dict[str, Any]:
    return {
        "storage_name": name,
        "storage_type": "filesystem",
        "storage_interface": interface,
        "root_directory": str(root),
        "location_name": "site",
        **params,
    }


async def test_a_posix_storage_on_another_host_holds_payloads_registered_over_sftp(
    registry: Registry, ssh_server: SshServer, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    (archive / "obs").mkdir(parents=True)
    (archive / "obs" / "vis.dat").write_bytes(b"visibilities")
    created = await registry.client.post(
        "/storage/init_storage", params=storage("archive", archive), json=ssh_server.config()
    )
    assert created.status_code == 200, created.text
    registered = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "vis", "uri": "obs/vis.dat", "storage_name": "archive"}
    )
    assert registered.status_code == 200, registered.text
    item = await registry.item(registered.json())
    assert item["item_size"] == len(b"visibilities") and item["item_state"] == "READY"


async def test_secrets_of_an_sftp_config_are_never_shown(
    registry: Registry, ssh_server: SshServer, tmp_path: Path
) -> None:
    secret = obscure("hunter2")
    config = ssh_server.config(**{"pass": secret, "key_file_pass": obscure("x")})
    created = await registry.client.post("/storage/init_storage", params=storage("archive", tmp_path), json=config)
    assert created.status_code == 200, created.text
    [shown] = (await registry.client.get("/storage/get_storage_config", params={"storage_name": "archive"})).json()
    assert shown["host"] == "127.0.0.1" and shown["user"] == ssh_server.user
    assert shown["pass"] == shown["key_file_pass"] == "***"
    assert secret not in str(shown)


async def test_bad_sftp_configs_are_refused_naming_the_field(
    registry: Registry, ssh_server: SshServer, tmp_path: Path
) -> None:
    cases = [
        ({"host": ""}, "config.host"),
        ({"port": "99999"}, "config.port"),
        ({"pass": "plain text password"}, "config.pass", "rclone obscure"),
        ({"key_file": "relative/key"}, "config.key_file"),
    ]
    for overrides, *fragments in cases:
        response = await registry.client.post(
            "/storage/init_storage", params=storage("archive", tmp_path), json=ssh_server.config(**overrides)
        )
        assert_error(response, 422, "InvalidQueryParameters", *fragments)
    s3_with_sftp = await registry.client.post(
        "/storage/init_storage", params=storage("bucket", "b", "s3"), json=ssh_server.config()
    )
    assert_error(s3_with_sftp, 422, "InvalidQueryParameters", "config.type")


async def test_a_host_dlm_does_not_trust_is_refused_at_creation(
    registry: Registry, ssh_server: SshServer, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    response = await registry.client.post(
        "/storage/init_storage",
        params=storage("archive", tmp_path),
        json=ssh_server.config(known_hosts_file=str(empty)),
    )
    assert_error(response, 422, "UnmetPreconditionForOperation", "host's key is not trusted")


async def test_storages_overlap_only_on_the_same_host(
    registry: Registry, ssh_server: SshServer, tmp_path: Path
) -> None:
    """SKA roots every SFTP storage at "/": on different hosts those are different file systems."""
    first = await registry.client.post("/storage/init_storage", params=storage("a", "/"), json=ssh_server.config())
    assert first.status_code == 200, first.text
    inside = await registry.client.post(
        "/storage/init_storage", params=storage("b", tmp_path, "sftp"), json=ssh_server.config()
    )
    assert_error(inside, 422, "UnmetPreconditionForOperation", "storage 'a'", "must not share bytes")
    elsewhere = await registry.client.post(
        "/storage/init_storage",
        params=storage("c", "/", "sftp", check="false"),
        json=ssh_server.config(host="localhost"),
    )
    assert elsewhere.status_code == 200, elsewhere.text


async def test_an_sftp_storage_may_get_its_config_after_it_is_created(
    registry: Registry, ssh_server: SshServer, tmp_path: Path
) -> None:
    """SKA-DLM's own start-up creates the storage, then its config."""
    created = await registry.client.post("/storage/init_storage", params=storage("archive", tmp_path, "sftp"))
    assert created.status_code == 200, created.text
    (tmp_path / "f").write_bytes(b"x")
    unreachable = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "f", "uri": "f", "storage_name": "archive"}
    )
    assert_error(unreachable, 422, "UnmetPreconditionForOperation", "not available", "waiting for a config")
    configured = await registry.client.post(
        "/storage/create_storage_config", params={"storage_name": "archive"}, json=ssh_server.config()
    )
    assert configured.status_code == 200, configured.text
    registered = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "f", "uri": "f", "storage_name": "archive"}
    )
    assert registered.status_code == 200, registered.text


async def test_an_alias_remote_is_where_a_local_storages_files_are(registry: Registry, tmp_path: Path) -> None:
    """The SKA chart's `local` storage: root "/", an alias whose remote is the data directory."""
    data = tmp_path / "shared"
    (data / "obs").mkdir(parents=True)
    (data / "obs" / "x").write_bytes(b"payload")
    alias = {"name": "local", "type": "alias", "parameters": {"remote": str(data)}}
    created = await registry.client.post("/storage/init_storage", params=storage("local", "/"), json=alias)
    assert created.status_code == 200, created.text
    registered = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "x", "uri": "obs/x", "storage_name": "local"}
    )
    assert registered.status_code == 200, registered.text
    nested = await registry.client.post("/storage/init_storage", params=storage("inner", data / "obs"))
    assert_error(nested, 422, "UnmetPreconditionForOperation", "storage 'local'")
    to_another_remote = await registry.client.post(
        "/storage/init_storage",
        params=storage("chained", "/"),
        json={"type": "alias", "remote": "s3remote:bucket"},
    )
    assert_error(to_another_remote, 422, "InvalidQueryParameters", "config.remote")
    outside = await registry.client.post(
        "/storage/init_storage", params=storage("escape", "/"), json={"type": "alias", "remote": "/etc"}
    )
    assert_error(outside, 422, "InvalidQueryParameters", "DLM_STORAGE_ROOTS")


async def test_sftp_hosts_can_be_limited(settings: Settings, ssh_server: SshServer, tmp_path: Path) -> None:
    limited = msgspec.structs.replace(settings, sftp_hosts="archive.example.org, 127.0.0.1:1")
    async with AsyncTestClient(create_app(limited)) as client:
        await Registry(client, tmp_path).location()
        response = await client.post("/storage/init_storage", params=storage("a", tmp_path), json=ssh_server.config())
        assert_error(response, 422, "InvalidQueryParameters", "config.host", "DLM_SFTP_HOSTS")
    allowed = msgspec.structs.replace(settings, sftp_hosts=f"127.0.0.1:{ssh_server.port}")
    async with AsyncTestClient(create_app(allowed)) as client:
        response = await client.post("/storage/init_storage", params=storage("a", tmp_path), json=ssh_server.config())
        assert response.status_code == 200, response.text


def test_a_mistake_in_a_file_in_skas_layout_names_the_file_and_field(tmp_path: Path) -> None:
    from dlm.errors import InvalidQueryParameters
    from dlm.storage.seed import LocationEntry, StorageEntry, load_entries

    locations = tmp_path / "location-config.json"
    locations.write_text('[{"name": "local", "type": "local-dev", "country": "AU", "city": "Perth", "facility": "x"}]')
    [location] = load_entries(str(locations), "locations", LocationEntry)
    assert (location.location_name, location.location_type.value, location.location_city) == (
        "local",
        "local-dev",
        "Perth",
    )
    storages = tmp_path / "storage-config.json"
    storages.write_text(
        '[{"name": "a", "location": "local", "storage_type": "filesystem", "interface": "ftp", "root_directory": "/"}]'
    )
    with pytest.raises(InvalidQueryParameters, match=r"storage-config.json: .*storage_interface"):
        load_entries(str(storages), "storages", StorageEntry)
    storages.write_text(
        '[{"name": "a", "location": "local", "storage_type": "filesystem", "interface": "posix", "root_directory": "/"}]'
    )
    [storage] = load_entries(str(storages), "storages", StorageEntry)
    assert storage.storage_phase.value == "SOLID", "SKA-DLM's default phase for a listed storage"
