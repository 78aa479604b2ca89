"""Storages can be changed and retired: retiring one moves everything it holds elsewhere first, and
only then is it retired. A storage DLM cannot reach is refused when created, unless told not to check."""

from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.lifecycle import replication
from tests.conftest import Registry, assert_error, free_port
from tests.migration.conftest import wait_for


async def _update(registry: Registry, name: str, **changes: Any) -> Any:
    return await registry.client.patch("/storage/update_storage", params={"storage_name": name, **changes})


async def test_a_storage_changes_and_its_replicas_follow(registry: Registry, tmp_path: Path) -> None:
    uid = await registry.register("obs", target_phase="GAS")
    changed = await _update(registry, "disk", storage_phase="SOLID", storage_capacity=10**12)
    assert changed.status_code == 200, changed.text
    assert (changed.json()["storage_phase"], changed.json()["storage_capacity"]) == ("SOLID", 10**12)
    item = await registry.item(uid)
    assert (item["uid_phase"], item["oid_phase"]) == ("SOLID", "SOLID"), "the replica's phase follows its storage"

    await registry.storage("spare", root=tmp_path / "spare")
    assert (await _update(registry, "spare", storage_available="false")).json()["storage_available"] is False
    refused = await registry.client.post("/migration/copy_data_item", params={"uid": uid, "destination_name": "spare"})
    assert_error(refused, 422, "UnmetPreconditionForOperation", "not available")

    assert (await _update(registry, "disk", storage_permissions="R")).json()["storage_permissions"] == "R"
    kept = await registry.client.post("/storage/delete_data_item_payload", params={"uid": uid})
    assert_error(kept, 422, "UnmetPreconditionForOperation", "read-only")
    assert_error(await _update(registry, "disk", storage_permissions="W+"), 422, "InvalidQueryParameters", "R, RW")
    assert_error(await _update(registry, "nowhere", storage_available="true"), 404, "NotFound")

    events = (await registry.client.get("/storage/query_storage_events", params={"storage_name": "disk"})).json()
    updates = [event for event in events if event["event"] == "storage_updated"]
    assert "storage_phase: GAS -> SOLID" in updates[0]["detail"] and updates[0]["actor"] == "anonymous"


async def test_retiring_a_storage_moves_its_items_off_before_it_is_retired(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    uids = [await registry.register(f"obs-{index}", target_phase="GAS") for index in range(3)]
    await registry.storage("new", root=tmp_path / "new")
    retiring = await _update(registry, "disk", retire="true")
    assert retiring.json()["storage_retire_date"] is not None and retiring.json()["storage_retired"] is False
    registry.payload("late.dat")
    late = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "late", "uri": "late.dat", "storage_name": "disk"}
    )
    assert_error(late, 422, "UnmetPreconditionForOperation", "being retired")

    first = await replication.run_once(sessionmaker)
    assert len(first.queued) == 3 and {planned.destination for planned in first.queued} == {"new"}
    assert first.retired == [], "it still holds the items"
    for planned in first.queued:
        assert (await wait_for(registry.client, planned.migration_id))["status"] == "SUCCEEDED"

    second = await replication.run_once(sessionmaker)
    assert sorted(second.vacated) == sorted(uuid for uuid in map(__import__("uuid").UUID, uids))
    assert second.retired == ["disk"]
    for uid in uids:
        assert (await registry.item(uid))["item_state"] == "DELETED"
    assert not any((registry.root / f"obs-{index}").exists() for index in range(3))
    where = (await registry.client.get("/request/query_item_storage", params={"item_name": "obs-0"})).json()
    assert [row["storage_name"] for row in where] == ["new"]
    [disk] = (await registry.client.get("/storage/query_storage", params={"storage_name": "disk"})).json()
    assert (disk["storage_retired"], disk["storage_available"]) == (True, False)
    assert_error(await _update(registry, "disk", retire="false"), 422, "UnmetPreconditionForOperation", "retired")
    events = [event["event"] for event in (await registry.client.get("/storage/query_storage_events")).json()]
    assert "storage_retired" in events


async def test_an_item_with_nowhere_to_go_keeps_its_retiring_storage_busy(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    uid = await registry.register("alone", target_phase="GAS")
    await _update(registry, "disk", retire="true")
    report = await replication.run_once(sessionmaker)
    assert [unmet.item_name for unmet in report.unmet] == ["alone"] and report.retired == []
    assert (await registry.item(uid))["item_state"] == "READY", "never left without a copy"
    called_off = await _update(registry, "disk", retire="false")
    assert called_off.json()["storage_retire_date"] is None


async def test_a_storage_dlm_cannot_reach_is_refused_unless_told(registry: Registry, s3_config: dict[str, Any]) -> None:
    missing = await registry.client.post(
        "/storage/init_storage",
        params={
            "storage_name": "archive",
            "storage_type": "objectstore",
            "storage_interface": "s3",
            "root_directory": "no-such-bucket",
            "location_name": "site",
        },
        json=s3_config,
    )
    assert_error(missing, 422, "UnmetPreconditionForOperation", "'no-such-bucket' does not exist", "check=false")
    dead = {**s3_config, "endpoint": f"http://127.0.0.1:{free_port()}"}
    await registry.s3_storage("later", "bucket", dead, check=False)
    names = {row["storage_name"] for row in (await registry.client.get("/storage/query_storage")).json()}
    assert names == {"disk", "later"}
