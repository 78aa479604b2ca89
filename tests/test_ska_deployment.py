"""SKA-DLM's own deployment files and variable names start DLM: its LOCATION_CONFIG and STORAGE_CONFIG
in the layout its Helm chart renders (a local alias storage, and the dlm-archive as a posix storage
reached over SFTP), and a file registered on the local storage is copied to that archive."""

import asyncio
import json
import os
from pathlib import Path

import httpx

from tests.conftest import Server, SshServer
from tests.migration.conftest import FINISHED


def ska_location_file(path: Path) -> Path:
    # As charts/ska-dlm/templates/location-configmap.yaml renders the chart's default values.
    path.write_text('[{"name": "local","type": "local-dev","country": "AU","city": "Perth","facility": "local"}]')
    return path


def ska_storage_file(path: Path, *, data: Path, archive: Path, ssh: SshServer) -> Path:
    # As charts/ska-dlm/templates/storage-secret.yaml renders them: only the values are this test's.
    path.write_text(
        f"""[
      {{
        "name": "dlm-archive",
        "location": "local",
        "storage_type": "filesystem",
        "interface": "posix",
        "storage_phase": "SOLID",
        "root_directory": "{archive}",
        "config": {{
          "name": "dlm-archive",
          "type": "sftp","parameters": {{"host":"{ssh.host}","key_file":"{ssh.key_file}","port":{ssh.port},"user":"{ssh.user}"}}
        }}
      }},
      {{
        "name": "local",
        "location": "local",
        "storage_type": "filesystem",
        "interface": "posix",
        "storage_phase": "SOLID",
        "root_directory": "/",
        "config": {{
          "name": "local",
          "type": "alias","parameters": {{"remote":"{data}"}}
        }}
      }}
    ]"""
    )
    return path


async def test_skas_config_files_and_variable_names_start_dlm(
    database_url: str, tmp_path: Path, ssh_server: SshServer
) -> None:
    data, archive, home = tmp_path / "data-volume", tmp_path / "archive", tmp_path / "home"
    for directory in (data / "eb-1", archive, home / ".ssh"):
        directory.mkdir(parents=True)
    # The archive host's key, where an SSH client on the DLM host keeps the hosts it knows.
    (home / ".ssh" / "known_hosts").write_text(Path(ssh_server.known_hosts_file).read_text())
    (data / "eb-1" / "vis.dat").write_bytes(os.urandom(100_000))
    server = Server(
        database_url,
        tmp_path / "dlm",
        environ={
            "LOCATION_CONFIG": str(ska_location_file(tmp_path / "location-config.json")),
            "STORAGE_CONFIG": str(
                ska_storage_file(tmp_path / "storage-config.json", data=data, archive=archive, ssh=ssh_server)
            ),
            "HOME": str(home),
        },
    )
    try:
        await server.ready()
        async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
            storages = {row["storage_name"]: row for row in (await client.get("/storage/query_storage")).json()}
            assert {"local", "dlm-archive"} <= set(storages), server.log.read_text()
            assert storages["dlm-archive"]["storage_phase"] == "SOLID"
            registered = await client.post(
                "/ingest/register_data_item",
                params={"item_name": "eb-1/vis.dat", "uri": "/eb-1/vis.dat", "storage_name": "local"},
            )
            assert registered.status_code == 200, registered.text
            queued = await client.post(
                "/migration/copy_data_item", params={"uid": registered.json(), "destination_name": "dlm-archive"}
            )
            assert queued.status_code == 200, queued.text
            for _ in range(300):
                [job] = (
                    await client.get("/migration/get_migration", params={"migration_id": queued.json()["migration_id"]})
                ).json()
                if job["status"] in FINISHED:
                    break
                await asyncio.sleep(0.1)
            assert job["status"] == "SUCCEEDED", job
            assert (archive / "eb-1" / "vis.dat").read_bytes() == (data / "eb-1" / "vis.dat").read_bytes()
            [shown] = (await client.get("/storage/get_storage_config", params={"storage_name": "dlm-archive"})).json()
            assert json.dumps(shown).count(ssh_server.key_file) == 1  # a path, not a secret: shown
    finally:
        server.stop()
