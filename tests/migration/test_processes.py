"""Copies across real `dlm serve` processes sharing one database: a copy survives `kill -9` of the
process running it, and two processes draining one queue never run a job twice."""

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Server, admin_connection


async def _call(base: str, method: str, path: str, **params: Any) -> Any:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        response = await client.request(method, path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def _setup_storages(base: str, tmp_path: Path) -> tuple[Path, Path]:
    source, destination = tmp_path / "source", tmp_path / "destination"
    source.mkdir()
    destination.mkdir()
    await _call(base, "POST", "/storage/init_location", location_name="site", location_type="local-dev")
    for name, root in (("source", source), ("destination", destination)):
        await _call(
            base,
            "POST",
            "/storage/init_storage",
            storage_name=name,
            storage_type="filesystem",
            storage_interface="posix",
            root_directory=str(root),
            location_name="site",
        )
    return source, destination


async def _migration(base: str, migration_id: int) -> dict[str, Any]:
    [row] = await _call(base, "GET", "/migration/get_migration", migration_id=migration_id)
    return row


async def test_a_copy_survives_kill_9_and_completes_after_a_restart(database_url: str, tmp_path: Path) -> None:
    settings = {"migration_lease_seconds": 2, "transfer_max_bytes_per_second": 2 * 1024 * 1024}
    first = await Server(database_url, tmp_path / "first", **settings).ready()
    try:
        source, destination = await _setup_storages(first.base, tmp_path)
        content = os.urandom(10 * 1024 * 1024)
        (source / "big.dat").write_bytes(content)
        uid = await _call(
            first.base, "POST", "/ingest/register_data_item", item_name="big", uri="big.dat", storage_name="source"
        )
        queued = await _call(first.base, "POST", "/migration/copy_data_item", uid=uid, destination_name="destination")
        deadline = time.monotonic() + 20
        while (row := await _migration(first.base, queued["migration_id"]))["bytes_done"] == 0:
            assert time.monotonic() < deadline, row
            await asyncio.sleep(0.1)
        assert row["status"] == "RUNNING" and row["bytes_done"] < len(content)
    finally:
        first.kill()  # kill -9, mid-copy

    row = await _migration_direct(database_url, queued["migration_id"])
    assert row["status"] == "RUNNING", "the dead worker's lease is still on the job"
    assert not (destination / "big.dat").exists(), "nothing half-written is visible at the destination"

    second = await Server(database_url, tmp_path / "second", **settings).ready()
    try:
        deadline = time.monotonic() + 60
        while (row := await _migration(second.base, queued["migration_id"]))["status"] != "SUCCEEDED":
            assert row["status"] in ("RUNNING", "PENDING") and time.monotonic() < deadline, row
            await asyncio.sleep(0.2)
        assert row["attempts"] == 2, "the restarted process took the job over once its lease ran out"
        assert f":{second.process.pid}:" in row["job_stats"]["worker"]
        [replica] = await _call(second.base, "GET", "/request/query_data_item", uid=queued["uid"])
        assert replica["item_state"] == "READY"
    finally:
        second.stop()
    assert (destination / "big.dat").read_bytes() == content
    assert sorted(path.name for path in destination.iterdir()) == ["big.dat"], "no partial file is left behind"


async def test_a_copy_cancelled_after_its_worker_died_is_cleaned_up_when_the_lease_runs_out(
    database_url: str, tmp_path: Path
) -> None:
    settings = {"migration_lease_seconds": 6, "transfer_max_bytes_per_second": 1024 * 1024}
    first = await Server(database_url, tmp_path / "first", **settings).ready()
    # The second process is up before the first dies: it cancels while the dead worker's lease holds.
    second = await Server(database_url, tmp_path / "second", migration_workers=0, **settings).ready()
    try:
        source, destination = await _setup_storages(first.base, tmp_path)
        (source / "big.dat").write_bytes(os.urandom(8 * 1024 * 1024))
        uid = await _call(
            first.base, "POST", "/ingest/register_data_item", item_name="big", uri="big.dat", storage_name="source"
        )
        queued = await _call(first.base, "POST", "/migration/copy_data_item", uid=uid, destination_name="destination")
        deadline = time.monotonic() + 20
        # Past the first MiB, which a write gathers in memory: the partial file is on disk by then.
        while (await _migration(first.base, queued["migration_id"]))["bytes_done"] < 2 * 1024 * 1024:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        first.kill()  # the worker dies holding the lease, its partial file on the destination
        cancelled = await _call(second.base, "POST", "/migration/cancel_migration", migration_id=queued["migration_id"])
        assert cancelled["status"] == "CANCELLED" and cancelled["lease_owner"] is not None, "the dead worker's lease"
        assert [path.name for path in destination.iterdir()] == [".big.dat.dlm-partial"]
    finally:
        first.kill()
        second.stop()

    # A process with workers comes (or was there): once the lease has run out, it cleans up.
    third = await Server(database_url, tmp_path / "third", **settings).ready()
    try:
        deadline = time.monotonic() + 30
        while (row := await _migration(third.base, queued["migration_id"]))["lease_owner"] is not None:
            assert time.monotonic() < deadline, row
            await asyncio.sleep(0.2)
        assert list(destination.iterdir()) == [], "what the dead worker wrote is gone"
        retried = await _call(third.base, "POST", "/migration/retry_migration", migration_id=queued["migration_id"])
        assert retried["migration_id"] == queued["migration_id"]
    finally:
        third.stop()


async def _migration_direct(database_url: str, migration_id: int) -> dict[str, Any]:
    async with admin_connection(database_url) as connection:
        return dict(await connection.fetchrow("SELECT * FROM migration WHERE migration_id = $1", migration_id))


async def test_two_processes_share_one_queue_and_never_run_a_job_twice(database_url: str, tmp_path: Path) -> None:
    settings = {"migration_workers": 2, "transfer_max_bytes_per_second": 4 * 1024 * 1024}
    servers = [await Server(database_url, tmp_path / name, **settings).ready() for name in ("one", "two")]
    try:
        source, destination = await _setup_storages(servers[0].base, tmp_path)
        queued = []
        for index in range(12):
            (source / f"file-{index}").write_bytes(os.urandom(1024 * 1024))
            uid = await _call(
                servers[(index + 1) % 2].base,
                "POST",
                "/ingest/register_data_item",
                item_name=f"file-{index}",
                uri=f"file-{index}",
                storage_name="source",
            )
            queued.append(
                await _call(
                    servers[index % 2].base,
                    "POST",
                    "/migration/copy_data_item",
                    uid=uid,
                    destination_name="destination",
                )
            )
        deadline = time.monotonic() + 90
        rows = []
        for job in queued:
            while (row := await _migration(servers[0].base, job["migration_id"]))["status"] != "SUCCEEDED":
                assert row["status"] in ("RUNNING", "PENDING") and time.monotonic() < deadline, row
                await asyncio.sleep(0.2)
            rows.append(row)
        assert [row["attempts"] for row in rows] == [1] * 12, "no job was claimed twice"
        pids = {row["job_stats"]["worker"].split(":")[1] for row in rows}
        assert pids == {str(server.process.pid) for server in servers}, "both processes took jobs"
        for job in queued:
            events = await _call(servers[1].base, "GET", "/request/query_item_history", uid=job["uid"])
            states = [event["new_value"] for event in events if event["event"] == "item_state"]
            assert states == ["READY"], events
    finally:
        for server in servers:
            server.stop()
    assert len(list(destination.iterdir())) == 12
