"""API and workers apart: three `dlm serve --no-workers` processes answer, two `dlm worker run`
processes copy and run the engines, all on one database, and no piece of work is done twice."""

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from dlm.lifecycle.audit import FAILED_EVENT
from tests.conftest import Registry, Server, dlm_environment

REPLICATED = 10  # the default target (SOLID) on a GAS storage: the replication engine copies each
COPIED = 10  # target GAS, copied to the mirror on request
EXPIRED = 8
ROTTEN = 4  # target GAS, payload damaged after registration: the audit finds each


async def test_api_processes_and_workers_share_the_work_without_doing_any_twice(
    database_url: str, tmp_path: Path
) -> None:
    apis = [Server(database_url, tmp_path / f"api-{index}", arguments=("--no-workers",)) for index in range(3)]
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for api in apis:
            await api.ready()
        clients = [httpx.AsyncClient(base_url=api.base, timeout=30) for api in apis]
        registry = Registry(clients[0], tmp_path / "disk")  # type: ignore[arg-type]  # httpx speaks the same
        await registry.storage("disk", root=tmp_path / "disk")
        await registry.storage("mirror", root=tmp_path / "mirror")
        await registry.storage("archive", root=tmp_path / "archive", phase="SOLID", location="elsewhere")

        uids: dict[str, list[str]] = {"replicated": [], "copied": [], "expired": [], "rotten": []}
        plan = [("replicated", REPLICATED), ("copied", COPIED), ("expired", EXPIRED), ("rotten", ROTTEN)]
        for kind, count in plan:
            for index in range(count):
                name = f"{kind}-{index}"
                (tmp_path / "disk" / name).write_bytes(name.encode() * (100 + index))
                params = {"item_name": name, "uri": name, "storage_name": "disk"}
                if kind != "replicated":
                    params["target_phase"] = "GAS"
                if kind == "expired":
                    params.update(uid_expiration="2020-01-01", oid_expiration="2020-01-01")
                response = await clients[index % 3].post("/ingest/register_data_item", params=params)
                assert response.status_code == 200, response.text
                uids[kind].append(response.json())
        for index in range(ROTTEN):
            name = f"rotten-{index}"
            (tmp_path / "disk" / name).write_bytes(b"ROT" + (tmp_path / "disk" / name).read_bytes()[3:])

        for index in range(2):
            environment = dlm_environment(
                database_url,
                tmp_path / f"worker-{index}",
                expiry_interval_seconds=0.3,
                replication_interval_seconds=0.3,
                audit_interval_seconds=0.3,
                migration_poll_seconds=0.1,
            )
            with (tmp_path / f"worker-{index}.log").open("w") as log:
                command = ["dlm", "worker", "run", "--copies", "2", "--engines", "expiry,replication,audit"]
                workers.append(subprocess.Popen([sys.executable, "-m", *command], env=environment, stderr=log))
        for index, uid in enumerate(uids["copied"]):  # queued through every API while the workers run
            response = await clients[index % 3].post(
                "/migration/copy_data_item", params={"uid": uid, "destination_name": "mirror"}
            )
            assert response.status_code == 200, response.text

        connection = await asyncpg.connect(make_url(database_url).set(drivername="postgresql").render_as_string(False))
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                done = (
                    await connection.fetchval("SELECT count(*) FROM migration WHERE status = 'SUCCEEDED'")
                    == REPLICATED + COPIED
                    and await connection.fetchval(
                        "SELECT count(*) FROM data_item WHERE item_name LIKE 'expired-%' AND item_state = 'DELETED'"
                    )
                    == EXPIRED
                    and await connection.fetchval(
                        "SELECT count(*) FROM data_item WHERE item_name LIKE 'rotten-%' AND item_state = 'CORRUPTED'"
                    )
                    == ROTTEN
                )
                if done:
                    break
                await asyncio.sleep(0.3)
            await asyncio.sleep(2)  # more passes of every engine in both workers: they must find nothing to do
            migrations = await connection.fetch(
                "SELECT status, attempts, d.item_name, s.storage_name FROM migration m "
                "JOIN data_item d ON d.uid = m.source_uid JOIN storage s ON s.storage_id = m.destination_storage_id "
                "ORDER BY d.item_name"
            )
            expected = sorted(
                [(f"replicated-{index}", "archive") for index in range(REPLICATED)]
                + [(f"copied-{index}", "mirror") for index in range(COPIED)]
            )
            assert sorted((row["item_name"], row["storage_name"]) for row in migrations) == expected, (
                "one copy per item: the replication engine queued each missing copy once"
            )
            assert {(row["status"], row["attempts"]) for row in migrations} == {("SUCCEEDED", 1)}, "each ran once"
            replicas = await connection.fetch(
                "SELECT d.item_name, s.storage_name, count(*) FROM data_item d JOIN storage s USING (storage_id) "
                "WHERE s.storage_name <> 'disk' AND d.item_state = 'READY' GROUP BY 1, 2"
            )
            assert sorted((row["item_name"], row["storage_name"]) for row in replicas) == expected
            assert {row["count"] for row in replicas} == {1}, "one replica per copy"

            deletions = await connection.fetch(
                "SELECT uid::text, count(*) FROM data_item_event WHERE event = 'item_state' AND new_value = 'DELETED' "
                "GROUP BY uid"
            )
            assert {row["uid"]: row["count"] for row in deletions} == dict.fromkeys(uids["expired"], 1), (
                "every expired item deleted, once"
            )
            findings = await connection.fetch(
                "SELECT uid::text, count(*), min(actor) AS actor FROM data_item_event WHERE event = $1 GROUP BY uid",
                FAILED_EVENT,
            )
            assert {row["uid"]: row["count"] for row in findings} == dict.fromkeys(uids["rotten"], 1), (
                "every damaged payload found by the audit, once, and nothing else"
            )
            assert {row["actor"] for row in findings} == {"audit"}
            unchecked = await connection.fetchval(
                "SELECT count(*) FROM data_item WHERE item_state = 'READY' AND last_check IS NULL "
                "AND item_name NOT LIKE 'copied-%' AND item_name NOT LIKE 'replicated-%'"
            )
            assert unchecked == 0, "the audit checked every registered replica"
        finally:
            await connection.close()

        # The API processes did none of it: no copy, no engine pass.
        for client in clients:
            assert (await client.get("/ui/overview")).json()["engines"] == {}
            assert "dlm_copies_total{" not in (await client.get("/metrics")).text
            await client.aclose()
        for worker in workers:
            assert worker.poll() is None, "the workers keep running"
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for api in apis:
            api.stop()
        for index, worker in enumerate(workers):
            assert worker.wait(timeout=30) == 0, (tmp_path / f"worker-{index}.log").read_text()
