"""`dlm db backup` and `dlm db restore`: a deployment's database taken to a new machine (a new, empty
database and data directory) and served there, its sealed storage configs opened with the old key."""

import os
import subprocess
import sys
from pathlib import Path

import msgspec
from litestar.testing import AsyncTestClient

from dlm.app import create_app
from dlm.storage.configs import new_key
from tests.conftest import Registry, make_settings, scratch_database


def dlm(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DLM_")}
    return subprocess.run(
        [sys.executable, "-m", "dlm", *args], env={**environment, **env}, capture_output=True, text=True, timeout=300
    )


async def test_a_backup_restored_on_a_new_machine_serves_the_same_catalogue(
    database_url: str, postgres_url: str, tmp_path: Path
) -> None:
    key = new_key()
    old = make_settings(database_url, tmp_path / "old", secret_key=key)
    async with AsyncTestClient(create_app(old)) as client:
        registry = Registry(client, tmp_path / "old" / "store")
        await registry.storage()
        uid = await registry.register("obs-1", metadata={"execution_block": "eb-1"})
        secret = {"type": "s3", "provider": "Other", "endpoint": "http://127.0.0.1:9", "access_key_id": "dlm"}
        await registry.s3_storage("bucket", "bucket", {**secret, "secret_access_key": "hunter2"}, check=False)
        [before] = (await client.get("/request/query_data_item", params={"uid": uid})).json()

    dump = tmp_path / "dlm.dump"
    made = dlm("db", "backup", str(dump), DLM_DATABASE_URL=database_url, DLM_SECRET_KEY=key)
    assert made.returncode == 0, made.stderr
    assert f"wrote {dump}" in made.stdout and "keep a copy of it apart" in made.stdout
    assert dump.stat().st_size > 0 and not list(tmp_path.glob(".*.partial"))
    again = dlm("db", "backup", str(dump), DLM_DATABASE_URL=database_url)
    assert again.returncode == 1 and again.stderr.strip() == f"dlm: error: {dump} exists already: name a new file"

    async with scratch_database(postgres_url, "restored") as new_url:
        restored = dlm("db", "restore", str(dump), DLM_DATABASE_URL=new_url, DLM_SECRET_KEY=key)
        assert restored.returncode == 0, restored.stderr
        assert "restored" in restored.stdout and restored.stderr == ""
        new = make_settings(new_url, tmp_path / "new", secret_key=key)
        async with AsyncTestClient(create_app(new)) as client:
            [after] = (await client.get("/request/query_data_item", params={"uid": uid})).json()
            assert after == before
            [config] = (await client.get("/storage/get_storage_config", params={"storage_name": "bucket"})).json()
            assert config["access_key_id"] == "dlm", "opened with the old deployment's key"
            history = (await client.get("/request/query_item_history", params={"uid": uid})).json()
            assert history and history[0]["event"] == "created"
        twice = dlm("db", "restore", str(dump), DLM_DATABASE_URL=new_url)
        assert twice.returncode == 1
        assert (
            twice.stderr.strip()
            == "dlm: error: the database already holds DLM's tables: restore into a new, empty database"
        )

    async with scratch_database(postgres_url, "keyless") as keyless_url:
        keyless = dlm("db", "restore", str(dump), DLM_DATABASE_URL=keyless_url, DLM_DATA_DIR=str(tmp_path / "other"))
        assert keyless.returncode == 0, keyless.stderr
        [warning] = keyless.stderr.strip().splitlines()
        assert warning.startswith("dlm: warning:") and "DLM_SECRET_KEY" in warning


async def test_a_backup_that_cannot_be_made_says_why_in_one_line_and_leaves_no_file(tmp_path: Path) -> None:
    dump = tmp_path / "never.dump"
    unreachable = dlm("db", "backup", str(dump), DLM_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    assert unreachable.returncode == 1, unreachable.stdout
    [line] = unreachable.stderr.strip().splitlines()
    assert line.startswith("dlm: error: pg_dump failed:") and "127.0.0.1" in line
    assert list(tmp_path.iterdir()) == []
    nowhere = dlm("db", "backup", str(tmp_path / "missing" / "x.dump"), DLM_DATABASE_URL="postgresql://nobody@h/none")
    assert nowhere.returncode == 1 and "is not a directory" in nowhere.stderr
    garbage = tmp_path / "garbage.dump"
    garbage.write_bytes(msgspec.json.encode({"not": "a dump"}))
    bad = dlm("db", "restore", str(garbage), DLM_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    [line] = bad.stderr.strip().splitlines()
    assert line.startswith("dlm: error:")
