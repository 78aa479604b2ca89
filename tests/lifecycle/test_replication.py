"""Phase enforcement: items below their target phase get exactly the copies they miss, on storages
chosen by the documented policy; corrupted replicas are replaced; nothing is queued twice."""

from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.lifecycle import replication
from tests.conftest import Registry, admin_connection, in_two_processes
from tests.migration.conftest import wait_for


async def _storage(registry: Registry, name: str, root: Path, phase: str, **params: Any) -> None:
    await registry.storage(name, root=root, phase=phase, **params)


async def _settle(registry: Registry, report: replication.ReplicationReport) -> None:
    for planned in report.queued:
        assert planned.migration_id is not None
        done = await wait_for(registry.client, planned.migration_id, timeout=30)
        assert done["status"] == "SUCCEEDED", done


async def test_a_new_item_reaches_solid_by_itself(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path, s3_config: dict, s3_bucket: str
) -> None:
    await _storage(registry, "liquid", tmp_path / "liquid", "LIQUID")
    await registry.s3_storage("archive", s3_bucket, s3_config, phase="SOLID")
    uid = await registry.register("obs")  # default target SOLID, on the GAS storage
    assert (await registry.item(uid))["oid_phase"] == "GAS"

    report = await replication.run_once(sessionmaker)
    assert [planned.destination for planned in report.queued] == ["archive"], "one SOLID copy is enough"
    await _settle(registry, report)
    assert (await registry.item(uid))["oid_phase"] == "SOLID"
    again = await replication.run_once(sessionmaker)
    assert again.queued == [] and again.unmet == []


async def test_exactly_the_missing_copies_are_made(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await _storage(registry, "gas-2", tmp_path / "gas-2", "GAS")
    await _storage(registry, "gas-3", tmp_path / "gas-3", "GAS")
    await _storage(registry, "liquid", tmp_path / "liquid", "LIQUID")
    uid = await registry.register("obs")
    report = await replication.run_once(sessionmaker)
    # GAS (1) + LIQUID (2) + GAS (1) = 4 = SOLID: the LIQUID first (higher phase), then one GAS.
    assert [planned.destination for planned in report.queued] == ["liquid", "gas-2"]
    await _settle(registry, report)
    assert (await registry.item(uid))["oid_phase"] == "SOLID"
    assert not (tmp_path / "gas-3" / "obs").exists()


async def test_another_site_is_preferred_and_full_storages_are_skipped(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await _storage(registry, "same-site", tmp_path / "same", "SOLID")
    await _storage(registry, "far-site", tmp_path / "far", "SOLID", location="elsewhere")
    await _storage(registry, "tiny", tmp_path / "tiny", "SOLID", location="elsewhere", storage_capacity=3)
    registry.payload("obs", b"x" * 100)
    await registry.register("obs")
    report = await replication.run_once(sessionmaker, dry_run=True)
    assert [planned.destination for planned in report.queued] == ["far-site"]
    assert (await registry.client.get("/migration/query_migrations")).json() == [], "a dry run queues nothing"


async def test_an_unreachable_target_is_reported(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await _storage(registry, "tiny", tmp_path / "tiny", "SOLID", storage_capacity=10)
    registry.payload("big", b"x" * 100)
    await registry.register("big")
    report = await replication.run_once(sessionmaker)
    [unmet] = report.unmet
    assert unmet.item_name == "big" and "reaches GAS, needs SOLID" in unmet.reason
    assert report.queued == []


async def test_a_corrupted_replica_is_replaced_from_a_good_one(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await _storage(registry, "vault", tmp_path / "vault", "SOLID")
    uid = await registry.register("obs", target_phase="GAS")
    first = await replication.run_once(sessionmaker)
    assert first.queued == [], "GAS is already reached"
    copy = await registry.client.post("/migration/copy_data_item", params={"uid": uid, "destination_name": "vault"})
    await wait_for(registry.client, copy.json()["migration_id"])
    await registry.client.patch("/request/set_phase", params={"uid": uid, "phase": "SOLID"})
    (tmp_path / "vault" / "obs").write_bytes(b"rot")  # what the audit would find
    await registry.client.patch("/request/set_state", params={"uid": copy.json()["uid"], "state": "CORRUPTED"})

    report = await replication.run_once(sessionmaker)
    assert [str(uid) for uid in report.replaced] == [copy.json()["uid"]]
    assert [planned.destination for planned in report.queued] == ["vault"]
    await _settle(registry, report)
    assert (tmp_path / "vault" / "obs").read_bytes() == (registry.root / "obs").read_bytes()
    assert (await registry.item(uid))["oid_phase"] == "SOLID"


async def test_a_corrupted_replica_the_target_can_spare_is_still_repaired_in_place(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await _storage(registry, "vault", tmp_path / "vault", "SOLID", location="elsewhere")
    registry.payload("obs", b"original bytes\n")
    uid = await registry.register("obs")  # on the GAS storage; the SOLID copy alone meets the target
    await _settle(registry, await replication.run_once(sessionmaker))
    (registry.root / "obs").write_bytes(b"rotten bytes!\n")
    await registry.client.patch("/request/set_state", params={"uid": uid, "state": "CORRUPTED"})

    planned = await replication.run_once(sessionmaker, dry_run=True)
    assert [str(uid) for uid in planned.replaced] == [uid] and planned.queued[0].destination == "disk"
    assert (await registry.item(uid))["item_state"] == "CORRUPTED", "a dry run touches nothing"

    report = await replication.run_once(sessionmaker)
    assert [planned.destination for planned in report.queued] == ["disk"], "where it was, not elsewhere"
    await _settle(registry, report)
    assert (registry.root / "obs").read_bytes() == b"original bytes\n"
    rows = (await registry.client.get("/request/query_data_item", params={"item_name": "obs"})).json()
    states = sorted((row["item_state"], row["uri"]) for row in rows)
    assert states == [("DELETED", "obs"), ("READY", "obs"), ("READY", "obs")]


async def test_a_raised_target_is_met_and_its_phase_change_request_completed(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path, database_url: str
) -> None:
    await _storage(registry, "liquid", tmp_path / "liquid", "LIQUID", location="elsewhere")
    uid = await registry.register("obs", target_phase="GAS")
    assert (await replication.run_once(sessionmaker)).queued == []
    await registry.client.patch("/request/set_phase", params={"uid": uid, "phase": "LIQUID"})
    report = await replication.run_once(sessionmaker)
    assert [planned.destination for planned in report.queued] == ["liquid"]
    assert report.phase_changes_completed == 0, "the copy is still in flight"
    await _settle(registry, report)
    assert (await replication.run_once(sessionmaker)).phase_changes_completed == 1

    await registry.client.patch("/request/set_phase", params={"uid": uid, "phase": "GAS"})  # lowered
    lowered = await replication.run_once(sessionmaker)
    assert lowered.queued == [] and lowered.phase_changes_completed == 1, "a lower target is met at once"
    async with admin_connection(database_url) as connection:
        requests = await connection.fetch("SELECT final_phase, completed FROM phase_change ORDER BY phase_change_id")
    assert [(row["final_phase"], row["completed"] is not None) for row in requests] == [
        ("LIQUID", True),
        ("GAS", True),
    ]


async def test_two_processes_queue_each_copy_once(registry: Registry, database_url: str, tmp_path: Path) -> None:
    await _storage(registry, "vault", tmp_path / "vault", "SOLID")
    for index in range(12):
        await registry.register(f"obs-{index}")
    reports = await in_two_processes(
        database_url, lambda sessionmaker: replication.run_once(sessionmaker, batch_size=5)
    )
    queued = [planned.item_name for report in reports for planned in report.queued]
    assert sorted(queued) == sorted(f"obs-{index}" for index in range(12))
    migrations = (await registry.client.get("/migration/query_migrations")).json()
    assert len(migrations) == 12


async def test_a_containers_members_travel_with_it_and_are_never_copied_alone(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    """A run once copied members into the path their container's copy was writing, and the collision
    came back every minute."""
    await _storage(registry, "archive", tmp_path / "archive", "SOLID")
    registry.payload("product/a", b"a")
    registry.payload("product/sub/b", b"bb")
    await registry.register("product", "product", item_type="container", register_members="true")
    report = await replication.run_once(sessionmaker)
    assert [(planned.item_name, planned.destination) for planned in report.queued] == [("product", "archive")]
    await _settle(registry, report)
    for member in ("product/a", "product/sub/b"):
        rows = (await registry.client.get("/request/query_data_item", params={"item_name": member})).json()
        assert sorted((row["uid_phase"], row["item_state"]) for row in rows) == [("GAS", "READY"), ("SOLID", "READY")]
    again = await replication.run_once(sessionmaker)
    assert again.queued == [] and again.unmet == []
