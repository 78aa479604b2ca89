"""Directory products as ska-dlm-client's directory watcher makes them: the container registered and
copied to the archive, then each member registered and announced READY on the archive. Whatever the
order in which the copy and the announcements land, every member ends with exactly one READY replica on
each storage, and nothing is copied twice or overwritten."""

import asyncio
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from dlm.migration.worker import Job
from tests.conftest import Registry, SshServer
from tests.migration.conftest import copy, storage_id, wait_for

MEMBERS = {
    "vis.ms/table.dat": b"table" * 1000,
    "vis.ms/sub/col": b"column",
    "ska-data-product.yaml": b"execution_block: eb-1\n",
}


async def archive(registry: Registry, ssh: SshServer, root: Path) -> str:
    """SKA's dlm-archive: a posix storage on another host, reached over SFTP."""
    config = {"name": "dlm-archive", "type": "sftp", "parameters": ssh.config()}
    await registry.storage("dlm-archive", root=root, phase="SOLID", config=config)
    return await storage_id(registry, "dlm-archive")


async def announce_member(client: AsyncTestClient, path: str, size: int, container_uid: str, archive_id: str) -> Any:
    """The watcher's calls for one member: register on the source, then init_data_item READY on the archive."""
    registered = await client.post(
        "/ingest/register_data_item",
        params={
            "item_name": f"product/{path}",
            "uri": f"product/{path}",
            "storage_name": "disk",
            "parents": container_uid,
            "item_size": size,
        },
        json={"execution_block": "eb-1"},
    )
    assert registered.status_code == 200, registered.text
    [item] = (await client.get("/request/query_data_item", params={"uid": registered.json()})).json()
    return await client.post(
        "/ingest/init_data_item",
        json={
            "item_name": f"product/{path}",
            "oid": item["oid"],
            "storage_id": archive_id,
            "uid_phase": "SOLID",
            "uri": f"product/{path}",
            "target_phase": "SOLID",
            "item_type": "file",
            "item_state": "READY",
            "item_owner": "SKA",
            "uid_expiration": None,
            "item_size": size,
            "decompressed_size": None,
        },
    )


async def replicas_by_storage(client: AsyncTestClient, name: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for row in (await client.get("/request/query_data_item", params={"item_name": name})).json():
        if row["item_state"] != "DELETED":
            found.setdefault(row["storage_id"], []).append(row["item_state"])
    return found


@pytest.mark.parametrize("copy_finishes_first", [False, True])
async def test_the_watchers_sequence_leaves_every_member_on_both_storages(
    registry: Registry, ssh_server: SshServer, tmp_path: Path, copy_finishes_first: bool
) -> None:
    client = registry.client
    archive_id = await archive(registry, ssh_server, tmp_path / "archive")
    disk_id = await storage_id(registry, "disk")
    for path, content in MEMBERS.items():
        registry.payload(f"product/{path}", content)
    container = await client.post(
        "/ingest/register_data_item",
        params={"item_name": "product", "uri": "product", "item_type": "container", "storage_name": "disk"},
    )
    assert container.status_code == 200, container.text
    queued = await copy(client, uid=container.json(), destination_name="dlm-archive")
    if copy_finishes_first:
        assert (await wait_for(client, queued["migration_id"]))["status"] == "SUCCEEDED"
    answers = [
        await announce_member(client, path, len(content), container.json(), archive_id)
        for path, content in MEMBERS.items()
    ]
    for answer in answers:
        # While the copy runs the archive says so (409) and the copy gives the member its replica.
        assert answer.status_code in (200, 409), answer.text
    assert (await wait_for(client, queued["migration_id"]))["status"] == "SUCCEEDED"
    for path, content in MEMBERS.items():
        assert await replicas_by_storage(client, f"product/{path}") == {disk_id: ["READY"], archive_id: ["READY"]}
        assert (tmp_path / "archive" / "product" / path).read_bytes() == content


async def test_a_member_announced_while_the_copy_commits_gets_its_replica(
    registry: Registry, ssh_server: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The narrowest order: the copy has listed the container's members and not yet committed when a
    member is registered and announced. The announcement waits for the copy's outcome instead of
    answering that the copy will give the member its replica (the copy never saw it)."""
    client = registry.client
    archive_id = await archive(registry, ssh_server, tmp_path / "archive")
    disk_id = await storage_id(registry, "disk")
    registry.payload("product/late.dat", b"late")
    listed, announced = threading.Event(), threading.Event()

    async def then_hold(job: Job, session: Any, migration: Any, container: Any) -> None:
        await replicate_children(job, session, migration, container)
        listed.set()
        # Commit only once the announcement answered, or waits on this transaction's locks.
        waiting = text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        async with job.sessionmaker() as probe:
            while not announced.is_set() and not await probe.scalar(waiting):
                await asyncio.sleep(0.02)

    replicate_children = Job._replicate_children
    monkeypatch.setattr(Job, "_replicate_children", then_hold)
    container = await client.post(
        "/ingest/register_data_item",
        params={"item_name": "product", "uri": "product", "item_type": "container", "storage_name": "disk"},
    )
    queued = await copy(client, uid=container.json(), destination_name="dlm-archive")
    assert await asyncio.to_thread(listed.wait, 30), "the copy did not reach its last step"
    answer = await announce_member(client, "late.dat", 4, container.json(), archive_id)
    announced.set()
    assert answer.status_code == 200, answer.text
    assert (await wait_for(client, queued["migration_id"]))["status"] == "SUCCEEDED"
    assert await replicas_by_storage(client, "product/late.dat") == {disk_id: ["READY"], archive_id: ["READY"]}


async def test_a_member_is_never_copied_on_its_own_into_its_containers_tree(registry: Registry, tmp_path: Path) -> None:
    client = registry.client
    await registry.storage("second", root=tmp_path / "second")
    registry.payload("box/a", b"a")
    box = await registry.register("box", "box", item_type="container", register_members="true")
    queued = await copy(client, uid=box, destination_name="second")
    alone = await client.post("/migration/copy_data_item", params={"item_name": "box/a", "destination_name": "second"})
    assert alone.status_code == 409, alone.text
    assert "travel with" in alone.json()["message"] or "already holds" in alone.json()["message"]
    assert (await wait_for(client, queued["migration_id"]))["status"] == "SUCCEEDED"
    assert (tmp_path / "second" / "box" / "a").read_bytes() == b"a"


async def test_an_announced_replica_must_be_there_and_be_the_same_size(registry: Registry, tmp_path: Path) -> None:
    client = registry.client
    second = tmp_path / "second"
    await registry.storage("second", root=second)
    uid = await registry.register("file", "file")
    [item] = (await client.get("/request/query_data_item", params={"uid": uid})).json()
    body = {
        "oid": item["oid"],
        "storage_id": await storage_id(registry, "second"),
        "uri": "/copy",
        "item_state": "READY",
    }
    missing = await client.post("/ingest/init_data_item", json=body)
    assert missing.status_code == 422 and "no payload" in missing.text, missing.text
    (second / "copy").write_bytes(b"not the same length")
    different = await client.post("/ingest/init_data_item", json=body)
    assert different.status_code == 422 and "not a replica" in different.text, different.text
    (second / "copy").write_bytes((registry.root / "file").read_bytes())
    made = await client.post("/ingest/init_data_item", json=body)
    assert made.status_code == 200, made.text
    [replica] = (await client.get("/request/query_data_item", params={"uid": made.json()})).json()
    assert (replica["item_state"], replica["uri"], replica["uid_phase"]) == ("READY", "/copy", "GAS")
    same = await client.post("/ingest/init_data_item", json={**body, "uri": "copy"})
    assert same.json() == made.json(), "the same payload announced again is the same replica"
    no_storage = await client.post("/ingest/init_data_item", json={"item_name": "x", "item_state": "READY"})
    assert no_storage.status_code == 422 and "json_data.item_state" in no_storage.text


@pytest.mark.parametrize("shared", [False, True], ids=["elsewhere", "same-path-on-dlms-host"])
async def test_the_watchers_start_up_registers_its_volume_then_its_sftp_config(
    registry: Registry, ssh_server: SshServer, tmp_path: Path, shared: bool
) -> None:
    """ska-dlm-client's start-up: init_storage for its watch directory (a path on the watcher's host,
    not DLM's), then the rclone sftp config that reaches it; then it registers what it finds (no
    access check) and copies it to the archive. SKA's compose and chart share /dlm, so the same path
    may exist on DLM's host too, outside DLM_STORAGE_ROOTS: the storage still waits for its config."""
    client = registry.client
    await archive(registry, ssh_server, tmp_path / "archive")
    if shared:
        outside = Path(tempfile.mkdtemp(prefix="dlm-shared-", dir="/var/tmp"))
        shared_directory = outside
        watch = outside / "watch_dir"
        watch.mkdir()
    else:
        shared_directory = None
        watch = tmp_path / "watcher-host" / "watch_dir"
    try:
        await _watcher_start_up(client, ssh_server, watch, tmp_path)
    finally:
        if shared_directory is not None:
            shutil.rmtree(shared_directory, ignore_errors=True)


async def _watcher_start_up(client: Any, ssh_server: SshServer, watch: Path, tmp_path: Path) -> None:
    key = (await client.get("/storage/get_ssh_public_key")).status_code
    assert key in (200, 422)  # the watcher installs it when DLM has one
    assert (await client.get("/storage/query_storage", params={"storage_name": "dir-watcher"})).json() == []
    created = await client.post(
        "/storage/init_storage",
        params={
            "storage_name": "dir-watcher",
            "storage_type": "filesystem",
            "storage_interface": "posix",
            "root_directory": str(watch),
            "location_name": "site",
            "storage_phase": "GAS",
        },
    )
    assert created.status_code == 200, created.text
    [waiting] = (await client.get("/storage/query_storage", params={"storage_name": "dir-watcher"})).json()
    assert waiting["storage_available"] is False, "nothing can reach it before its config says how"
    assert (await client.get("/storage/get_storage_config", params={"storage_id": created.json()})).json() == []
    watch.mkdir(parents=True, exist_ok=True)  # on the watcher's host: here, the SSH server's
    config = {
        "name": "dir-watcher",
        "type": "sftp",
        "parameters": {**ssh_server.config(), "shell_type": "unix"},
    }
    configured = await client.post(
        "/storage/create_storage_config",
        params={"storage_id": created.json(), "storage_name": "dir-watcher", "config_type": "rclone"},
        json=config,
    )
    assert configured.status_code == 200, configured.text
    [ready] = (await client.get("/storage/query_storage", params={"storage_name": "dir-watcher"})).json()
    assert ready["storage_available"] is True
    (watch / "obs-1.dat").write_bytes(b"seen by the watcher")
    registered = await client.post(
        "/ingest/register_data_item",
        params={
            "item_name": "obs-1.dat",
            "uri": "obs-1.dat",
            "storage_name": "dir-watcher",
            "item_type": "file",
            "do_storage_access_check": "false",
        },
        json={"execution_block": "eb-2"},
    )
    assert registered.status_code == 200, registered.text
    queued = await copy(client, uid=registered.json(), destination_name="dlm-archive")
    assert (await wait_for(client, queued["migration_id"]))["status"] == "SUCCEEDED"
    assert (tmp_path / "archive" / "obs-1.dat").read_bytes() == b"seen by the watcher"


async def test_a_storage_waiting_for_its_config_is_never_reached(registry: Registry, tmp_path: Path) -> None:
    elsewhere = tmp_path / "not-here"
    created = await registry.client.post(
        "/storage/init_storage",
        params={
            "storage_name": "waiting",
            "storage_type": "filesystem",
            "storage_interface": "posix",
            "root_directory": "/nonexistent/watch",
            "location_name": "site",
        },
    )
    assert created.status_code == 200, created.text
    refused = await registry.client.post(
        "/ingest/register_data_item",
        params={"item_name": "x", "uri": "x", "storage_name": "waiting", "do_storage_access_check": "false"},
    )
    assert refused.status_code == 422 and "not available" in refused.text, refused.text
    # A local config cannot move it outside the allowed roots either.
    local = await registry.client.post(
        "/storage/create_storage_config", params={"storage_name": "waiting"}, json={"type": "local"}
    )
    assert local.status_code == 422 and "DLM_STORAGE_ROOTS" in local.text, local.text
    assert not elsewhere.exists()
