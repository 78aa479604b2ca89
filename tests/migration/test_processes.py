"""Copies across real `dlm serve` processes sharing one database: a copy survives `kill -9` of the
process running it, and two processes draining one queue never run a job twice."""

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Server


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


async def _migration_direct(database_url: str, migration_id: int) -> dict[str, Any]:
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    connection = await asyncpg.connect(
        user=url.username, password=url.password, host=url.host, port=url.port, database=url.database
    )
    try:
        return dict(await connection.fetchrow("SELECT * FROM migration WHERE migration_id = $1", migration_id))
    finally:
        await connection.close()


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
