"""API and workers apart: `dlm serve --no-workers` processes answer, `dlm worker run` processes copy
and run the engines, all on one database, and no piece of work is done twice."""

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from tests.conftest import Registry, Server, dlm_environment

COPIES = 16
EXPIRED = 8


async def test_api_processes_and_workers_share_the_work_without_doing_any_twice(
    database_url: str, tmp_path: Path
) -> None:
    apis = [Server(database_url, tmp_path / f"api-{index}", arguments=("--no-workers",)) for index in range(2)]
    workers = []
    for index in range(2):
        log = tmp_path / f"worker-{index}.log"
        environment = dlm_environment(
            database_url, tmp_path / f"worker-{index}", expiry_interval_seconds=0.3, migration_poll_seconds=0.1
        )
        with log.open("w") as stream:
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "dlm", "worker", "run", "--copies", "2", "--engines", "expiry"],
                    env=environment,
                    stderr=stream,
                )
            )
    try:
        for api in apis:
            await api.ready()
        first, second = (httpx.AsyncClient(base_url=api.base, timeout=30) for api in apis)
        async with first, second:
            registry = Registry(first, tmp_path / "disk")  # type: ignore[arg-type]  # httpx speaks the same
            for name in ("disk", "archive"):
                await registry.storage(name, root=tmp_path / name)
            copied, expired = [], []
            for index in range(COPIES + EXPIRED):
                (tmp_path / "disk" / f"f{index}").write_bytes(b"x" * (1000 + index))
                past = {"uid_expiration": "2020-01-01", "oid_expiration": "2020-01-01"} if index >= COPIES else {}
                client = (first, second)[index % 2]
                response = await client.post(
                    "/ingest/register_data_item",
                    params={"item_name": f"f{index}", "uri": f"f{index}", "storage_name": "disk", **past},
                )
                assert response.status_code == 200, response.text
                (expired if past else copied).append(response.json())
            migrations = []
            for index, uid in enumerate(copied):
                client = (first, second)[index % 2]
                response = await client.post(
                    "/migration/copy_data_item", params={"uid": uid, "destination_name": "archive"}
                )
                assert response.status_code == 200, response.text
                migrations.append(response.json()["migration_id"])

            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                states = [
                    (await first.get("/migration/get_migration", params={"migration_id": m})).json()[0]["status"]
                    for m in migrations
                ]
                gone = [
                    (await second.get("/request/query_data_item", params={"uid": uid})).json()[0]["item_state"]
                    for uid in expired
                ]
                if set(states) == {"SUCCEEDED"} and set(gone) == {"DELETED"}:
                    break
                await asyncio.sleep(0.3)
            assert set(states) == {"SUCCEEDED"} and set(gone) == {"DELETED"}, (states, gone)
            await asyncio.sleep(1)  # a few more expiry passes in both workers: they must find nothing to do

            # The API processes did none of it: no copy, no engine pass.
            for client in (first, second):
                assert (await client.get("/ui/overview")).json()["engines"] == {}
                assert "dlm_copies_total{" not in (await client.get("/metrics")).text

        connection = await asyncpg.connect(make_url(database_url).set(drivername="postgresql").render_as_string(False))
        try:
            attempts = await connection.fetch("SELECT attempts FROM migration ORDER BY migration_id")
            assert [row["attempts"] for row in attempts] == [1] * COPIES, "each copy ran once"
            on_archive = await connection.fetch(
                "SELECT d.oid, count(*) FROM data_item d JOIN storage s USING (storage_id) "
                "WHERE s.storage_name = 'archive' GROUP BY d.oid"
            )
            assert len(on_archive) == COPIES and {row["count"] for row in on_archive} == {1}
            deletions = await connection.fetch(
                "SELECT uid, count(*) FROM data_item_event WHERE event = 'item_state' AND new_value = 'DELETED' "
                "GROUP BY uid"
            )
            assert {str(row["uid"]) for row in deletions} == set(expired), "every expired item deleted"
            assert {row["count"] for row in deletions} == {1}, "and each once"
        finally:
            await connection.close()
        for worker in workers:
            assert worker.poll() is None, "the workers keep running"
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for api in apis:
            api.stop()
        for worker in workers:
            assert worker.wait(timeout=30) == 0, (tmp_path / "worker-0.log").read_text()
