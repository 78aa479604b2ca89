"""Capacity: a storage over its high watermark sheds the replicas its items can spare, least
recently used first, down to the low watermark; what items need stays, with a warning; a dry run
touches nothing."""

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.lifecycle import capacity
from tests.conftest import Registry, in_two_processes


async def _full_storage(registry: Registry, tmp_path: Path, *, spare: bool) -> dict[str, str]:
    """'small' (capacity 1000) holding three 400-byte items, last used in the order a, b, c."""
    await registry.storage("small", root=tmp_path / "small", storage_capacity=1000)
    await registry.storage("vault", root=tmp_path / "vault", phase="SOLID")
    uids = {}
    for name, used in (("c", "2026-03-01"), ("a", "2026-01-01"), ("b", "2026-02-01")):
        registry.payload(name, b"x" * 400, root=tmp_path / "small")
        response = await registry.client.post(
            "/ingest/register_data_item",
            params={"item_name": name, "uri": name, "storage_name": "small", "target_phase": "GAS"},
        )
        uids[name] = response.json()
        await registry.client.patch("/request/update_data_item", params={"uid": uids[name]}, json={"last_access": used})
        if spare:
            await registry.replica(uids[name], "vault", tmp_path / "vault", name, b"x" * 400)
    return uids


async def test_least_recently_used_spare_replicas_go_down_to_the_low_watermark(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    uids = await _full_storage(registry, tmp_path, spare=True)
    report = await capacity.run_once(sessionmaker, check_file_systems=False)
    # 1200 of 1000 is over 90%: evicting 'a' (least recently used) leaves 800, at the 80% low mark.
    assert [eviction.item_name for eviction in report.evicted] == ["a"] and report.warnings == []
    assert (await registry.item(uids["a"]))["item_state"] == "DELETED"
    assert not (tmp_path / "small" / "a").exists() and (tmp_path / "small" / "b").exists()
    again = await capacity.run_once(sessionmaker, check_file_systems=False)
    assert again.evicted == [], "at the low watermark now"


async def test_replicas_items_need_stay_and_the_storage_is_reported_full(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    uids = await _full_storage(registry, tmp_path, spare=False)
    report = await capacity.run_once(sessionmaker, check_file_systems=False)
    assert report.evicted == []
    [warning] = report.warnings
    assert warning.storage_name == "small" and warning.fill == 1.2
    assert {(await registry.item(uid))["item_state"] for uid in uids.values()} == {"READY"}


async def _storage_events(registry: Registry, **params: str) -> list[dict]:
    """What the capacity engine said about storages (their creation and config changes aside)."""
    response = await registry.client.get("/storage/query_storage_events", params=params)
    assert response.status_code == 200, response.text
    return [event for event in response.json() if event["event"].startswith("capacity_")]


async def test_a_storage_stuck_full_is_a_storage_event_once_and_its_relief_another(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    uids = await _full_storage(registry, tmp_path, spare=False)
    await capacity.run_once(sessionmaker, check_file_systems=False, dry_run=True)
    assert await _storage_events(registry) == [], "a dry run records nothing"
    for _ in range(2):
        await capacity.run_once(sessionmaker, check_file_systems=False)
    [exceeded] = await _storage_events(registry, storage_name="small")
    assert (exceeded["event"], exceeded["storage_name"], exceeded["actor"]) == (
        "capacity_exceeded",
        "small",
        "capacity",
    )
    assert exceeded["detail"].startswith("120% full: no replica left there that its item can spare")

    await registry.client.post("/storage/delete_data_item_payload", params={"uid": uids["a"], "force": "true"})
    report = await capacity.run_once(sessionmaker, check_file_systems=False)
    assert report.warnings == []
    events = await _storage_events(registry, storage_name="small")
    assert [event["event"] for event in events] == ["capacity_exceeded", "capacity_relieved"]
    assert events[1]["detail"] == "80% full"
    later = await _storage_events(registry, after_event_id=str(events[0]["event_id"]))
    assert [event["event"] for event in later] == ["capacity_relieved"]
    await capacity.run_once(sessionmaker, check_file_systems=False)
    assert len(await _storage_events(registry)) == 2, "relief is news once"
    missing = await registry.client.get("/storage/query_storage_events", params={"storage_name": "nowhere"})
    assert missing.status_code == 404


async def test_a_dry_run_names_the_evictions_and_touches_nothing(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    uids = await _full_storage(registry, tmp_path, spare=True)
    report = await capacity.run_once(sessionmaker, check_file_systems=False, dry_run=True, low_watermark=0.5)
    assert [eviction.item_name for eviction in report.evicted] == ["a", "b"]
    assert {(await registry.item(uid))["item_state"] for uid in uids.values()} == {"READY"}
    assert sorted(path.name for path in (tmp_path / "small").iterdir()) == ["a", "b", "c"]


async def test_two_processes_relieve_a_storage_once_not_twice(
    registry: Registry, database_url: str, tmp_path: Path
) -> None:
    await _full_storage(registry, tmp_path, spare=True)
    reports = await in_two_processes(
        database_url, lambda sessionmaker: capacity.run_once(sessionmaker, check_file_systems=False)
    )
    evicted = [eviction.item_name for report in reports for eviction in report.evicted]
    assert evicted == ["a"], "one eviction reaches the low watermark; the other process must not add its own"
    assert sorted(path.name for path in (tmp_path / "small").iterdir()) == ["b", "c"]
