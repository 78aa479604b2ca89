"""Copies through the migration manager: every direction, containers, progress, verification,
classified failures that leave nothing behind, cancel and retry, and clear errors for bad input."""

import asyncio
import datetime
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from dlm.app import create_app
from dlm.checksum import new_hasher
from dlm.config import Settings
from dlm.data_item import ITEMS
from dlm.db.engine import transaction
from dlm.db.models import Storage
from dlm.enums import ChecksumMethod
from dlm.migration.service import CopyPlan, copy_item, queue_copies
from dlm.migration.worker import run_next
from dlm.storage.service import lock_replicas
from tests.conftest import Registry, SshServer, assert_error, free_port, new_bucket
from tests.migration.conftest import (
    copy,
    list_objects,
    migration,
    put_object,
    read_object,
    storage_id,
    wait_for,
    wait_for_bytes,
)


def crc32c(content: bytes) -> str:
    hasher = new_hasher(ChecksumMethod.CRC32C)
    hasher.update(content)
    return hasher.hexdigest()


class Place:
    """One storage of either kind, with a way to put and read payloads on it directly."""

    def __init__(self, registry: Registry, name: str, *, root: Path | None = None, bucket: str = "", config=None):
        self.registry, self.name, self.root, self.bucket, self.config = registry, name, root, bucket, config

    @classmethod
    async def create(
        cls, registry: Registry, kind: str, name: str, tmp_path: Path, config: dict, ssh: SshServer | None = None
    ) -> "Place":
        if kind == "posix":
            root = tmp_path / name
            await registry.storage(name, root=root)
            return cls(registry, name, root=root)
        if kind == "sftp":
            # SKA's archive: a posix storage on another host, reached through an sftp config. The
            # server is on loopback, so the test reads its files directly.
            assert ssh is not None
            root = tmp_path / name
            await registry.storage(name, root=root, phase="SOLID", config=ssh.config())
            return cls(registry, name, root=root)
        bucket = await new_bucket(config)
        await registry.s3_storage(name, bucket, config)
        return cls(registry, name, bucket=bucket, config=config)

    async def put(self, uri: str, content: bytes) -> None:
        if self.root is not None:
            path = self.root / uri
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        else:
            await put_object(self.config, self.bucket, uri, content)

    async def read(self, uri: str) -> bytes | None:
        if self.root is not None:
            path = self.root / uri
            return path.read_bytes() if path.is_file() else None
        return await read_object(self.config, self.bucket, uri)

    async def names(self) -> list[str]:
        if self.root is not None:
            return sorted(str(path.relative_to(self.root)) for path in self.root.rglob("*") if path.is_file())
        return sorted(await list_objects(self.config, self.bucket))

    async def register(self, name: str, uri: str, **params: Any) -> str:
        response = await self.registry.client.post(
            "/ingest/register_data_item", params={"item_name": name, "uri": uri, "storage_name": self.name, **params}
        )
        assert response.status_code == 200, response.text
        return response.json()


KINDS = ["posix", "s3", "sftp"]
DIRECTIONS = [(source, destination) for source in KINDS for destination in KINDS]


@pytest.mark.parametrize(("source_kind", "destination_kind"), DIRECTIONS)
async def test_a_copy_in_every_direction_becomes_a_verified_ready_replica(
    registry: Registry,
    tmp_path: Path,
    s3_config: dict,
    source_kind: str,
    destination_kind: str,
    request: pytest.FixtureRequest,
) -> None:
    ssh = request.getfixturevalue("ssh_server") if "sftp" in (source_kind, destination_kind) else None
    source = await Place.create(registry, source_kind, "source", tmp_path, s3_config, ssh)
    destination = await Place.create(registry, destination_kind, "destination", tmp_path, s3_config, ssh)
    content = os.urandom(3 * 1024 * 1024 + 17)
    await source.put("obs/vis.dat", content)
    source_uid = await source.register("vis", "obs/vis.dat")

    queued = await copy(registry.client, item_name="vis", destination_name="destination")
    pending = await registry.item(queued["uid"])
    assert pending["item_state"] == "INITIALISED" and pending["uri"] == "obs/vis.dat"

    done = await wait_for(registry.client, queued["migration_id"])
    assert done["status"] == "SUCCEEDED", done
    assert done["user"] == "SKA", "in open mode a copy keeps SKA-DLM's default user"
    assert (done["command"], done["url"]) == ("operations/copyfile", None), "what DLM did, in rclone's terms"
    assert (done["bytes_done"], done["bytes_total"], done["attempts"], done["complete"]) == (
        len(content),
        len(content),
        1,
        True,
    )
    assert done["job_stats"]["files"] == 1 and done["job_stats"]["checksum"] == crc32c(content)
    assert done["job_status"] == {"finished": True, "success": True, "error": ""}
    assert done["source_uid"] == source_uid and done["destination_uid"] == queued["uid"]
    assert await destination.read("obs/vis.dat") == content

    replica = await registry.item(queued["uid"])
    original = await registry.item(source_uid)
    assert replica["item_state"] == "READY"
    assert (replica["oid"], replica["item_name"], replica["item_version"]) == (
        original["oid"],
        "vis",
        original["item_version"],
    )
    assert replica["item_checksum"] == original["item_checksum"] == crc32c(content)
    assert replica["item_size"] == len(content) and replica["uid_phase"] == registry_phase(destination_kind)
    assert await destination.names() == ["obs/vis.dat"], "no partial or temporary object is left behind"


def registry_phase(kind: str) -> str:
    return "GAS" if kind == "posix" else "SOLID"  # what Registry gives each kind of storage


async def test_a_copy_keeps_permissions_and_goes_to_the_path_asked(registry: Registry, tmp_path: Path) -> None:
    await registry.storage("second", root=tmp_path / "second")
    path = registry.payload("raw/data.bin", b"x" * 1000)
    path.chmod(0o640)
    uid = await registry.register("data", "raw/data.bin")
    queued = await copy(registry.client, uid=uid, destination_name="second", path="archive/2026/data.bin")
    assert (await wait_for(registry.client, queued["migration_id"]))["status"] == "SUCCEEDED"
    copied = tmp_path / "second" / "archive/2026/data.bin"
    assert copied.read_bytes() == b"x" * 1000
    assert copied.stat().st_mode & 0o777 == 0o640
    assert (await registry.item(queued["uid"]))["uri"] == "archive/2026/data.bin"


async def test_the_item_gains_the_phase_of_its_new_replica(registry: Registry, tmp_path: Path) -> None:
    await registry.storage("vault", root=tmp_path / "vault", phase="SOLID")
    uid = await registry.register("precious")
    assert (await registry.item(uid))["oid_phase"] == "GAS"
    queued = await copy(registry.client, uid=uid, destination_name="vault")
    await wait_for(registry.client, queued["migration_id"])
    assert (await registry.item(uid))["oid_phase"] == "SOLID"
    assert (await registry.item(queued["uid"]))["uid_phase"] == "SOLID"


async def test_a_container_copies_recursively_with_its_registered_members(
    registry: Registry, tmp_path: Path, s3_config: dict
) -> None:
    destination = await Place.create(registry, "s3", "objects", tmp_path, s3_config)
    members = {"run/a.ms": b"a" * 100, "run/sub/b.ms": b"b" * 200, "run/sub/deeper/c.ms": b"c" * 300}
    for uri, content in members.items():
        registry.payload(uri, content)
    container_uid = await registry.register("run", item_type="container")
    container_oid = (await registry.item(container_uid))["oid"]
    member_uid = await registry.register("run/a.ms", parents=container_oid)

    queued = await copy(registry.client, uid=container_uid, destination_name="objects", path="copies/run")
    done = await wait_for(registry.client, queued["migration_id"])
    assert done["status"] == "SUCCEEDED", done
    assert done["job_stats"]["files"] == 3 and done["bytes_done"] == 600
    assert await destination.names() == ["copies/run/a.ms", "copies/run/sub/b.ms", "copies/run/sub/deeper/c.ms"]
    for uri, content in members.items():
        assert await destination.read(uri.replace("run/", "copies/run/", 1)) == content

    member_oid = (await registry.item(member_uid))["oid"]
    rows = (await registry.client.get("/request/query_data_item", params={"oid": member_oid})).json()
    copied = next(row for row in rows if row["uid"] != member_uid)
    assert (copied["item_state"], copied["uri"], copied["uid_phase"]) == ("READY", "copies/run/a.ms", "SOLID")
    assert copied["item_checksum"] == crc32c(b"a" * 100)


async def _queue_big_copy(
    slow_client: AsyncTestClient, storage_root: Path, second: Path, content: bytes
) -> tuple[Registry, dict]:
    """On the throttled client: item "big" holding ``content`` on the default storage, and a copy of it
    queued to a storage "second" at ``second``."""
    registry = Registry(slow_client, storage_root)
    await registry.storage()
    await registry.storage("second", root=second)
    registry.payload("big", content)
    uid = await registry.register("big")
    return registry, await copy(slow_client, uid=uid, destination_name="second")


async def test_progress_is_visible_while_a_copy_runs(
    slow_client: AsyncTestClient, storage_root: Path, tmp_path: Path
) -> None:
    _, queued = await _queue_big_copy(slow_client, storage_root, tmp_path / "second", os.urandom(6 * 1024 * 1024))
    running = await wait_for(slow_client, queued["migration_id"], {"RUNNING"}, timeout=10)
    seen = []
    while running["status"] == "RUNNING":
        seen.append(running["bytes_done"])
        running = await migration(slow_client, queued["migration_id"])
    assert running["status"] == "SUCCEEDED"
    assert any(0 < done < 6 * 1024 * 1024 for done in seen), seen
    assert seen == sorted(seen), "progress only moves forward"


async def test_a_checksum_mismatch_fails_and_leaves_nothing(registry: Registry, tmp_path: Path) -> None:
    await registry.storage("second", root=tmp_path / "second")
    path = registry.payload("rotten", b"good bytes\n")
    uid = await registry.register("rotten")
    path.write_bytes(b"evil bytes\n")  # same size, other content: bit rot since registration
    queued = await copy(registry.client, uid=uid, destination_name="second")
    done = await wait_for(registry.client, queued["migration_id"])
    assert done["status"] == "FAILED" and done["attempts"] == 1, "a mismatch is not worth retrying"
    assert "ChecksumMismatch" in done["last_error"] and done["job_status"]["success"] is False
    assert (await registry.item(queued["uid"]))["item_state"] == "DELETED"
    assert list((tmp_path / "second").iterdir()) == []


async def test_a_missing_source_payload_fails_with_the_reason(registry: Registry, tmp_path: Path) -> None:
    await registry.storage("second", root=tmp_path / "second")
    path = registry.payload("vanishing")
    uid = await registry.register("vanishing")
    path.unlink()
    queued = await copy(registry.client, uid=uid, destination_name="second")
    done = await wait_for(registry.client, queued["migration_id"])
    assert done["status"] == "FAILED" and "PayloadMissing" in done["last_error"], done
    assert done["attempts"] == 1, "a missing source is not worth retrying"
    # What SKA's clients read: finished (complete), and not a success.
    assert done["complete"] is True and done["job_status"]["success"] is False
    assert (await registry.item(queued["uid"]))["item_state"] == "DELETED"


async def test_an_unreachable_destination_is_refused_up_front(registry: Registry, s3_config: dict) -> None:
    await registry.s3_storage(
        "dead", "nowhere", {**s3_config, "endpoint": f"http://127.0.0.1:{free_port()}"}, check=False
    )
    uid = await registry.register("obs")
    response = await registry.client.post("/migration/copy_data_item", params={"uid": uid, "destination_name": "dead"})
    assert_error(response, 503, "StorageUnreachable", "127.0.0.1")
    assert (await registry.client.get("/migration/query_migrations")).json() == []


async def test_a_destination_vanishing_mid_copy_is_retried_with_backoff_then_failed(
    slow_client: AsyncTestClient, storage_root: Path, tmp_path: Path
) -> None:
    second = tmp_path / "second"
    registry, queued = await _queue_big_copy(slow_client, storage_root, second, os.urandom(8 * 1024 * 1024))
    await wait_for_bytes(slow_client, queued["migration_id"])
    shutil.rmtree(second)  # the volume goes away under the copy, a partial file in it

    done = await wait_for(slow_client, queued["migration_id"], timeout=30)
    assert done["status"] == "FAILED", done
    assert done["attempts"] == 2, "transient: retried once (max_attempts=2), then given up"
    assert "StorageUnreachable" in done["last_error"] and "gave up after 2 attempts" in done["last_error"]
    assert (await registry.item(queued["uid"]))["item_state"] == "DELETED"
    assert not second.exists(), "DLM never recreates a storage root that vanished"
    events = (await slow_client.get("/request/query_item_history", params={"uid": queued["uid"]})).json()
    assert "READY" not in {event["new_value"] for event in events if event["event"] == "item_state"}


async def test_cancel_stops_a_running_copy_and_retry_runs_it_again(
    slow_client: AsyncTestClient, storage_root: Path, tmp_path: Path
) -> None:
    second = tmp_path / "second"
    content = os.urandom(8 * 1024 * 1024)
    registry, queued = await _queue_big_copy(slow_client, storage_root, second, content)
    await wait_for(slow_client, queued["migration_id"], {"RUNNING"}, timeout=10)

    cancelled = await slow_client.post("/migration/cancel_migration", params={"migration_id": queued["migration_id"]})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "CANCELLED"
    assert (await registry.item(queued["uid"]))["item_state"] == "DELETED"
    deadline = time.monotonic() + 10
    while (row := await migration(slow_client, queued["migration_id"]))["lease_owner"] is not None:
        assert time.monotonic() < deadline, "the worker lets go of a cancelled job within a heartbeat"
        await asyncio.sleep(0.05)
    assert row["status"] == "CANCELLED"
    assert list(second.iterdir()) == [], "the worker removed what it had written"
    again = await slow_client.post("/migration/cancel_migration", params={"migration_id": queued["migration_id"]})
    assert_error(again, 422, "UnmetPreconditionForOperation", "CANCELLED")

    retried = await slow_client.post("/migration/retry_migration", params={"migration_id": queued["migration_id"]})
    assert retried.status_code == 200, retried.text
    assert retried.json()["migration_id"] == queued["migration_id"] and retried.json()["uid"] != queued["uid"]
    done = await wait_for(slow_client, queued["migration_id"])
    assert done["status"] == "SUCCEEDED" and done["destination_uid"] == retried.json()["uid"]
    assert (second / "big").read_bytes() == content
    not_again = await slow_client.post("/migration/retry_migration", params={"migration_id": queued["migration_id"]})
    assert_error(not_again, 422, "UnmetPreconditionForOperation", "SUCCEEDED")


async def test_query_migrations_filters_by_storage_and_date(registry: Registry, tmp_path: Path) -> None:
    await registry.storage("second", root=tmp_path / "second")
    await registry.storage("third", root=tmp_path / "third")
    first = await copy(registry.client, uid=await registry.register("a"), destination_name="second")
    other = await copy(registry.client, uid=await registry.register("b"), destination_name="third")
    for queued in (first, other):
        await wait_for(registry.client, queued["migration_id"])

    async def ids(**params: Any) -> list[int]:
        response = await registry.client.get("/migration/query_migrations", params=params)
        assert response.status_code == 200, response.text
        return [row["migration_id"] for row in response.json()]

    both = [other["migration_id"], first["migration_id"]]
    assert await ids() == both
    assert await ids(storage_id=await storage_id(registry, "second")) == [first["migration_id"]]
    assert await ids(storage_id=await storage_id(registry, "disk")) == both, "the source storage matches too"
    today = datetime.datetime.now(datetime.UTC).date()
    assert await ids(start_date=today.isoformat(), end_date=today.strftime("%Y%m%d")) == both
    assert await ids(start_date=(today + datetime.timedelta(days=1)).isoformat()) == []
    assert await ids(end_date=(today - datetime.timedelta(days=1)).isoformat()) == []
    assert_error(
        await registry.client.get("/migration/query_migrations", params={"start_date": "soon"}),
        422,
        "InvalidQueryParameters",
        "start_date",
    )
    assert_error(
        await registry.client.get("/migration/query_migrations", params={"storage_id": "x"}),
        422,
        "InvalidQueryParameters",
        "storage_id",
    )
    assert (await registry.client.get("/migration/get_migration", params={"migration_id": 999999})).json() == []
    # DLM's additions: by status and item, and paged.
    assert await ids(status="SUCCEEDED") == both and await ids(status="FAILED") == []
    assert await ids(item_name="a") == [first["migration_id"]] and await ids(item_name="nothing") == []
    assert await ids(limit=1) == [other["migration_id"]]
    assert await ids(limit=1, offset=1) == [first["migration_id"]] and await ids(offset=2) == []
    for bad in ({"status": "DONE"}, {"offset": "-1"}, {"limit": "0"}, {"limit": "1001"}):
        response = await registry.client.get("/migration/query_migrations", params=bad)
        assert_error(response, 422, "InvalidQueryParameters", next(iter(bad)))


async def test_bad_copy_requests_are_refused_and_leave_nothing(registry: Registry, tmp_path: Path) -> None:
    client = registry.client
    second = tmp_path / "second"
    await registry.storage("second", root=second)
    uid = await registry.register("obs")
    (second / "taken").write_text("someone else's file\n")

    async def refused(status: int, name: str, fragment: str, **params: Any) -> None:
        assert_error(await client.post("/migration/copy_data_item", params=params), status, name, fragment)

    await refused(422, "InvalidQueryParameters", "item_name", destination_name="second")
    await refused(422, "InvalidQueryParameters", "destination_name", uid=uid)
    await refused(422, "InvalidQueryParameters", "nope", item_name="nope", destination_name="second")
    await refused(422, "InvalidQueryParameters", "moon", uid=uid, destination_name="moon")
    await refused(422, "InvalidQueryParameters", "uid", uid="not-a-uuid", destination_name="second")
    await refused(422, "InvalidQueryParameters", "already lives", uid=uid, destination_name="disk")
    await refused(422, "InvalidQueryParameters", "path", uid=uid, destination_name="second", path="../escape")
    await refused(422, "InvalidQueryParameters", "path", uid=uid, destination_name="second", path="/../etc/passwd")
    await refused(409, "DatabaseOperationError", "taken", uid=uid, destination_name="second", path="taken")

    first = await copy(client, uid=uid, destination_name="second")
    await wait_for(client, first["migration_id"])
    await refused(409, "DatabaseOperationError", "already holds", uid=uid, destination_name="second", path="elsewhere")

    pending = await client.post("/ingest/init_data_item", params={"item_name": "unfinished"})
    await refused(
        422, "InvalidQueryParameters", "no replica with a payload", uid=pending.json(), destination_name="second"
    )

    migrations = (await client.get("/migration/query_migrations")).json()
    assert [row["migration_id"] for row in migrations] == [first["migration_id"]]
    assert sorted(path.name for path in second.iterdir()) == ["obs", "taken"]
    bad_id = await client.get("/migration/get_migration", params={"migration_id": "abc"})
    assert bad_id.status_code == 422 and "migration_id" in bad_id.text
    assert_error(await client.post("/migration/cancel_migration", params={"migration_id": 424242}), 404, "NotFound")


async def test_asking_again_for_a_copy_made_or_queued_answers_with_that_copy(
    slow_client: AsyncTestClient, storage_root: Path, tmp_path: Path
) -> None:
    # A caller retrying a request whose answer it lost, or asking for what the replication engine has
    # just done, gets the copy that exists, not a second one and not an error.
    registry = Registry(slow_client, storage_root)
    await registry.storage()
    await registry.storage("second", root=tmp_path / "second")
    (registry.root / "big").write_bytes(os.urandom(4 * 1024 * 1024))
    uid = await registry.register("big", "big")
    first = await copy(slow_client, uid=uid, destination_name="second")
    assert await copy(slow_client, item_name="big", destination_name="second") == first, "while it is queued"
    await wait_for(slow_client, first["migration_id"])
    assert await copy(slow_client, uid=uid, destination_name="second", path="big") == first, "once it is READY"
    moved = await slow_client.post("/migration/move_data_item", params={"uid": uid, "destination_name": "second"})
    assert_error(moved, 409, "Conflict", "already holds")
    migrations = (await slow_client.get("/migration/query_migrations")).json()
    assert [row["migration_id"] for row in migrations] == [first["migration_id"]]


async def test_stopping_dlm_mid_copy_hands_the_job_back_without_using_an_attempt(
    throttled: Any, storage_root: Path, tmp_path: Path
) -> None:
    from dlm.app import create_app

    second = tmp_path / "second"
    async with AsyncTestClient(create_app(throttled)) as client:
        registry = Registry(client, storage_root)
        await registry.storage()
        await registry.storage("second", root=second)
        registry.payload("big", os.urandom(8 * 1024 * 1024))
        queued = await copy(client, uid=await registry.register("big"), destination_name="second")
        await wait_for_bytes(client, queued["migration_id"])
    # The app has shut down (its lifespan stopped the workers) in the middle of the copy.
    async with AsyncTestClient(create_app(msgspec.structs.replace(throttled, migration_workers=0))) as client:
        row = await migration(client, queued["migration_id"])
        assert (row["status"], row["attempts"], row["lease_owner"]) == ("PENDING", 0, None), row
        assert list(second.iterdir()) == [], "the stopped copy removed its partial file"
    async with AsyncTestClient(create_app(throttled)) as client:
        done = await wait_for(client, queued["migration_id"], timeout=30)
        assert (done["status"], done["attempts"]) == ("SUCCEEDED", 1)


async def test_copies_of_one_item_failing_together_do_not_deadlock(
    registry: Registry, tmp_path: Path, caplog: Any
) -> None:
    """Each failure locks the item's replicas in one order; they used to deadlock each other."""
    content = os.urandom(64 * 1024)
    registry.payload("shared.dat", content)
    uid = await registry.register("shared", "shared.dat")
    registry.payload("shared.dat", b"rot" + content[3:])  # the checksum recorded at registration no longer holds
    queued = []
    for index in range(6):
        await registry.storage(f"target-{index}", root=tmp_path / f"target-{index}")
        queued.append(await copy(registry.client, uid=uid, destination_name=f"target-{index}"))
    rows = [await wait_for(registry.client, job["migration_id"], timeout=30) for job in queued]
    assert {(row["status"], row["attempts"]) for row in rows} == {("FAILED", 1)}, rows
    assert all("ChecksumMismatch" in row["last_error"] for row in rows)
    assert "deadlock" not in caplog.text.lower()
    for index in range(6):
        assert list((tmp_path / f"target-{index}").iterdir()) == [], "nothing left behind"


async def test_no_replica_appears_while_another_transaction_holds_the_items_replicas(
    registry: Registry, sessionmaker: Any, tmp_path: Path
) -> None:
    # The cause of the deadlock above, seen directly: a failing copy locked the replicas, a copy queued
    # meanwhile committed a new one, a third transaction locked that one first, and the failing copy's
    # next statement (refreshing the combined phase) then waited for it out of order.
    uid = await registry.register("held", "held")
    await registry.storage("elsewhere", root=tmp_path / "elsewhere")
    oid = (await registry.item(uid))["oid"]
    async with transaction(sessionmaker, actor="test") as holder:
        held = await lock_replicas(holder, uuid.UUID(oid))
        queued = asyncio.create_task(queue_copy(sessionmaker, uid))
        done, _ = await asyncio.wait({queued}, timeout=1)
        assert not done, "a copy added a replica while another transaction held the item's replicas"
        assert [row.uid for row in await lock_replicas(holder, uuid.UUID(oid))] == [row.uid for row in held]
    assert (await queued)["migration_id"]


async def queue_copy(sessionmaker: Any, uid: str) -> dict[str, Any]:
    async with transaction(sessionmaker, actor="test") as session:
        return await copy_item(session, uid=uid, destination_name="elsewhere")


async def test_a_copy_reads_from_the_cheapest_replica(registry: Registry, tmp_path: Path, s3_config: dict) -> None:
    # The item is on the local disk (GAS) and in an object store (SOLID); a copy by name reads the
    # local file, whichever replica's uid sorts first. A replica at the destination's own location
    # comes before both.
    await Place.create(registry, "s3", "objects", tmp_path, s3_config)
    await registry.storage("elsewhere", root=tmp_path / "elsewhere", location="far")
    uid = await registry.register("obs", "obs")
    in_s3 = await copy(registry.client, uid=uid, destination_name="objects")
    assert (await wait_for(registry.client, in_s3["migration_id"]))["status"] == "SUCCEEDED"

    queued = await copy(registry.client, item_name="obs", destination_name="elsewhere")
    assert (await migration(registry.client, queued["migration_id"]))["source_uid"] == uid
    assert (await wait_for(registry.client, queued["migration_id"]))["status"] == "SUCCEEDED"

    await registry.storage("far-archive", root=tmp_path / "far-archive", location="far")
    nearby = await copy(registry.client, item_name="obs", destination_name="far-archive")
    assert (await migration(registry.client, nearby["migration_id"]))["source_uid"] == queued["uid"]


async def test_a_copy_whose_earlier_attempt_wrote_the_payload_adopts_it(
    settings: Settings, sessionmaker: Any, tmp_path: Path
) -> None:
    # An attempt that wrote the payload and then lost the database (an outage, a failover) leaves the
    # bytes behind; the next attempt finds them whole and finishes, where anything else stays refused.
    idle = msgspec.structs.replace(settings, migration_workers=0)
    async with AsyncTestClient(create_app(idle)) as client:
        registry = Registry(client, tmp_path / "store")
        await registry.storage()
        await registry.storage("archive", root=tmp_path / "archive")
        whole, other = await registry.register("whole", "whole"), await registry.register("other", "other")
        adopted = await copy(client, uid=whole, destination_name="archive")
        refused = await copy(client, uid=other, destination_name="archive")
        (tmp_path / "archive" / "whole").write_bytes((tmp_path / "store" / "whole").read_bytes())
        (tmp_path / "archive" / "other").write_bytes(b"someone else's bytes")
        for _ in range(2):
            await run_next(sessionmaker, idle, "test-worker")
        assert (await migration(client, adopted["migration_id"]))["status"] == "SUCCEEDED"
        assert (await registry.item(adopted["uid"]))["item_state"] == "READY"
        failed = await migration(client, refused["migration_id"])
        assert failed["status"] == "FAILED" and "exists already" in failed["last_error"]
        assert (tmp_path / "archive" / "other").read_bytes() == b"someone else's bytes"


async def test_copies_of_small_files_between_two_storages_run_as_one_batch_each_with_its_own_outcome(
    settings: Settings, sessionmaker: Any, tmp_path: Path
) -> None:
    idle = msgspec.structs.replace(settings, migration_workers=0)
    async with AsyncTestClient(create_app(idle)) as client:
        registry = Registry(client, tmp_path / "store")
        await registry.storage()
        await registry.storage("archive", root=tmp_path / "archive")
        names = [f"small-{index}" for index in range(6)]
        uids = {name: await registry.register(name, name) for name in names}
        (tmp_path / "store" / "small-3").write_bytes(b"X" * len((tmp_path / "store" / "small-3").read_bytes()))
        queued = {name: await copy(client, uid=uids[name], destination_name="archive") for name in names}

        assert await run_next(sessionmaker, idle, "test-worker") is not None
        rows = {name: await migration(client, queued[name]["migration_id"]) for name in names}
        rotten = rows.pop("small-3")
        assert rotten["status"] == "FAILED" and "ChecksumMismatch" in rotten["last_error"]
        assert rotten["attempts"] == 1, "bit rot fails alone and is not retried"
        assert {row["status"] for row in rows.values()} == {"SUCCEEDED"}
        assert {row["job_stats"]["batch"] for row in rows.values()} == {5}, "recorded together"
        for name, row in rows.items():
            replica = await registry.item(row["destination_uid"])
            source = await registry.item(uids[name])
            assert replica["item_state"] == "READY" and replica["item_checksum"] == source["item_checksum"]
            assert (tmp_path / "archive" / name).read_bytes() == (tmp_path / "store" / name).read_bytes()
        assert (await registry.item(rotten["destination_uid"]))["item_state"] == "DELETED"
        assert sorted(path.name for path in (tmp_path / "archive").iterdir()) == sorted(rows)
        assert await run_next(sessionmaker, idle, "test-worker") is None, "nothing left over"


async def test_copies_queued_together_are_checked_as_one_copy_is_and_refused_one_by_one(
    registry: Registry, sessionmaker: Any, tmp_path: Path
) -> None:
    await registry.storage("archive", root=tmp_path / "archive")
    await registry.storage("shelf", root=tmp_path / "shelf")
    shelf = await registry.client.patch(
        "/storage/update_storage", params={"storage_name": "shelf", "storage_permissions": "R"}
    )
    assert shelf.status_code == 200, shelf.text
    names = ["fine", "twin", "taken", "unmanaged", "nested", "same-place", "read-only"]
    uids = [await registry.register(name, name) for name in names]
    await registry.register("resident", "taken", storage="archive", do_storage_access_check=False)
    await registry.register("holder", "box", storage="archive", do_storage_access_check=False)
    registry.payload("unmanaged", b"not DLM's", root=tmp_path / "archive")
    async with transaction(sessionmaker, actor="test") as session:
        sources = {row.item_name: row for row in await session.execute(select(ITEMS).where(ITEMS.c.uid.in_(uids)))}
        storages = {storage.storage_name: storage for storage in await session.scalars(select(Storage))}
        archive = storages["archive"]
        plans = [
            CopyPlan(sources["fine"], archive),
            CopyPlan(sources["twin"], archive, "fine"),  # the same path as the plan before it
            CopyPlan(sources["taken"], archive),
            CopyPlan(sources["unmanaged"], archive),
            CopyPlan(sources["nested"], archive, "box/nested"),
            CopyPlan(sources["same-place"], storages["disk"]),
            CopyPlan(sources["read-only"], storages["shelf"]),
        ]
        results = await queue_copies(session, plans)
    assert isinstance(results[0], dict) and set(results[0]) == {"uid", "migration_id"}
    refusals = dict(zip(names[1:], results[1:], strict=True))
    assert "is taken or lies inside another payload" in refusals["twin"]
    assert "is taken or lies inside another payload" in refusals["taken"]
    assert "already exists" in refusals["unmanaged"] and "will not overwrite" in refusals["unmanaged"]
    assert "lies inside another payload" in refusals["nested"]
    assert "already lives there" in refusals["same-place"]
    assert "read-only" in refusals["read-only"]
    done = await wait_for(registry.client, results[0]["migration_id"])
    assert done["status"] == "SUCCEEDED"
    assert (tmp_path / "archive" / "unmanaged").read_bytes() == b"not DLM's"
    queued = await registry.client.get("/migration/query_migrations")
    assert [row["migration_id"] for row in queued.json()] == [results[0]["migration_id"]], "nothing else queued"


async def test_a_container_goes_into_an_empty_directory_made_for_it_but_not_into_anothers_files(
    registry: Registry, tmp_path: Path
) -> None:
    # SKA's test_copy_container copies a container to a directory its set-up made (rclone merges).
    await registry.storage("archive", root=tmp_path / "archive")
    for uri, content in {"run/a.ms": b"a" * 10, "run/sub/b.ms": b"b" * 20}.items():
        registry.payload(uri, content)
    uid = await registry.register("run", item_type="container")
    (tmp_path / "archive" / "MyDisk2").mkdir()
    queued = await copy(registry.client, uid=uid, destination_name="archive", path="MyDisk2/")
    done = await wait_for(registry.client, queued["migration_id"])
    assert done["status"] == "SUCCEEDED" and done["job_stats"]["bytes"] == 30, done
    assert done["command"] == "sync/copy"
    assert (tmp_path / "archive" / "MyDisk2" / "sub" / "b.ms").read_bytes() == b"b" * 20
    assert (await registry.item(queued["uid"]))["item_state"] == "READY"

    registry.payload("run2/c.ms", b"c")
    other = await registry.register("run2", item_type="container")
    (tmp_path / "archive" / "occupied").mkdir()
    (tmp_path / "archive" / "occupied" / "theirs.txt").write_text("someone else's")
    occupied = await registry.client.post(
        "/migration/copy_data_item", params={"uid": other, "destination_name": "archive", "path": "occupied"}
    )
    assert_error(occupied, 409, "DatabaseOperationError", "theirs.txt", "empty directory")
    assert sorted(path.name for path in (tmp_path / "archive" / "occupied").iterdir()) == ["theirs.txt"]
