"""Storage configs hold credentials: encrypted at rest when DLM_SECRET_KEY is set, readable by admins
only, and shown with nothing but the fields known not to be secret."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dlm.app import create_app
from dlm.config import Settings
from dlm.serve import Refused, prepare
from dlm.storage.configs import new_key, redact
from tests.conftest import Registry, assert_error
from tests.migration.conftest import put_object


async def _stored_configs(engine: AsyncEngine) -> str:
    async with engine.connect() as connection:
        return " ".join(str(row.config) for row in await connection.execute(text("SELECT config FROM storage_config")))


async def _register_on(client: AsyncTestClient, storage: str, uri: str) -> Any:
    return await client.post(
        "/ingest/register_data_item", params={"item_name": uri, "uri": uri, "storage_name": storage}
    )


async def test_configs_are_sealed_at_rest_and_opened_only_inside_dlm(
    settings: Settings, tmp_path: Path, engine: AsyncEngine, s3_config: dict[str, Any], s3_bucket: str
) -> None:
    old_key = new_key()
    sealed = msgspec.structs.replace(settings, secret_key=old_key)
    await put_object(s3_config, s3_bucket, "a.dat", b"object")
    async with AsyncTestClient(create_app(sealed)) as client:
        registry = Registry(client, tmp_path / "store")
        await registry.storage()
        await registry.s3_storage("objects", s3_bucket, s3_config)
        # DLM reads the object to register it: it opened the sealed config.
        registered = await _register_on(client, "objects", "a.dat")
        assert registered.status_code == 200, registered.text
        [shown] = (await client.get("/storage/get_storage_config", params={"storage_name": "objects"})).json()
        assert shown["secret_access_key"] == "***" and shown["endpoint"] == s3_config["endpoint"]
    at_rest = await _stored_configs(engine)
    assert "dlm_sealed" in at_rest
    assert s3_config["secret_access_key"] not in at_rest and s3_config["access_key_id"] not in at_rest

    async with AsyncTestClient(create_app(settings)) as client:  # DLM_SECRET_KEY forgotten
        refused = await _register_on(client, "objects", "b.dat")
        assert_error(refused, 422, "UnmetPreconditionForOperation", "DLM_SECRET_KEY")

    # Rotation: the new key first, reseal, then the old key can go.
    rotated_key = new_key()
    result = _reseal(settings, f"{rotated_key},{old_key}")
    assert result.returncode == 0, result.stderr
    assert "sealed 1 storage config(s)" in result.stdout
    await put_object(s3_config, s3_bucket, "c.dat", b"object")
    async with AsyncTestClient(create_app(msgspec.structs.replace(settings, secret_key=rotated_key))) as client:
        assert (await _register_on(client, "objects", "c.dat")).status_code == 200
    async with AsyncTestClient(create_app(msgspec.structs.replace(settings, secret_key=old_key))) as client:
        stale = await _register_on(client, "objects", "d.dat")
        assert_error(stale, 422, "UnmetPreconditionForOperation", "not in DLM_SECRET_KEY")


def _reseal(settings: Settings, keys: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DLM_")}
    environment.update(DLM_DATABASE_URL=str(settings.database_url), DLM_SECRET_KEY=keys)
    return subprocess.run(
        [sys.executable, "-m", "dlm", "db", "reseal-configs"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_malformed_secret_key_stops_dlm_at_startup(settings: Settings) -> None:
    with pytest.raises(ValueError, match="DLM_SECRET_KEY"):
        create_app(msgspec.structs.replace(settings, secret_key="too-short"))


@pytest.mark.parametrize(
    ("config", "hidden"),
    [
        ({"type": "sftp", "host": "archive", "user": "dlm", "key_pem": "-----BEGIN KEY-----"}, ["key_pem"]),
        (
            {"type": "s3", "SecretAccessKey": "s", "access_key_id": "AK", "secret_access_key": "x"},
            ["SecretAccessKey", "secret_access_key"],
        ),
        ({"type": "sftp", "host": "h", "privateKey": "p", "pass": "obscured"}, ["privateKey", "pass"]),
        ({"type": "s3", "endpoint": "http://user:hunter2@s3.example.org:9000/"}, []),
        ({"type": "s3", "endpoint": "https://s3.example.org/?X-Amz-Signature=hunter2&access_key=k"}, []),
        ({"type": "webdav", "url": "https://u:p@dav.example.org", "bearer_token": "t"}, ["bearer_token"]),
        ({"type": "s3", "headers": ["Authorization: secret"], "region": "af-south-1"}, ["headers"]),
        ({"name": "n", "type": "s3", "parameters": {"secret_access_key": "s", "region": "r"}}, []),
        ({"type": "azureblob", "account": "acct", "key": "k"}, ["account", "key"]),
    ],
)
def test_only_fields_known_to_be_public_are_shown(config: dict[str, Any], hidden: list[str]) -> None:
    shown = redact(config)
    for field in hidden:
        assert shown[field] == "***", field
    assert "hunter2" not in str(shown) and ":p@" not in str(shown)
    assert shown["type"] == config["type"]
    if "parameters" in config:
        assert shown["parameters"] == {"secret_access_key": "***", "region": "r"}


async def test_only_admins_read_configs(registry: Registry, s3_config: dict[str, Any]) -> None:
    # In open mode the anonymous caller is an admin; the role matrix (tests/auth) checks the others.
    await registry.s3_storage("objects", "any-bucket", s3_config, check=False)
    response = await registry.client.get("/storage/get_storage_config", params={"storage_name": "objects"})
    assert response.status_code == 200
    schema = (await registry.client.get("/schema/openapi.json")).json()
    assert schema["paths"]["/storage/get_storage_config"]["get"]["x-dlm-role"] == "admin"


async def test_without_a_key_the_first_start_makes_one_and_seals_what_was_plain(
    settings: Settings,
    tmp_path: Path,
    engine: AsyncEngine,
    s3_config: dict[str, Any],
    s3_bucket: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with AsyncTestClient(create_app(settings)) as client:  # a DLM of old: no key, configs in the clear
        await Registry(client, tmp_path / "store").s3_storage("objects", s3_bucket, s3_config)
    assert s3_config["secret_access_key"] in await _stored_configs(engine)

    with caplog.at_level("WARNING", logger="dlm.serve"):
        prepared = await prepare(settings)
    key_file = Path(settings.data_dir) / "secret.key"
    assert (key_file.stat().st_mode & 0o777) == 0o600 and prepared.settings.secret_key == key_file.read_text().strip()
    [said] = [record.getMessage() for record in caplog.records if "DLM_SECRET_KEY is not set" in record.getMessage()]
    assert str(key_file) in said and "back it up" in said
    at_rest = await _stored_configs(engine)
    assert "dlm_sealed" in at_rest and s3_config["secret_access_key"] not in at_rest, "sealed at that start"
    # Every later command on this host opens them with it, unasked.
    environment = {"DLM_DATA_DIR": settings.data_dir, "DLM_DATABASE_URL": str(settings.database_url)}
    assert Settings.from_env(environment).secret_key == prepared.settings.secret_key
    assert (await prepare(settings)).settings.secret_key == prepared.settings.secret_key, "made once"

    # A second DLM on another host, without the deployment's key, makes its own: it could open nothing.
    elsewhere = msgspec.structs.replace(settings, data_dir=str(tmp_path / "elsewhere"))
    with pytest.raises(Refused, match="sealed with a key this DLM does not have"):
        await prepare(elsewhere)
