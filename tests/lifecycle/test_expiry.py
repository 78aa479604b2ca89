"""Expiry: expired replicas lose their payloads and keep their rows; replicas the item still needs
stay, with the reason in the history; expired items lose everything; containers take their members;
a dry run touches nothing; two processes never delete twice."""

import asyncio
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from dlm.app import create_app
from dlm.config import Settings
from dlm.data_item import ITEMS
from dlm.db.engine import create_sessionmaker
from dlm.lifecycle import expiry
from dlm.storage.context import session_info
from dlm.transfer.posix import PosixBackend
from tests.conftest import Registry, in_two_processes

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
PAST = "2029-06-01"


async def _expire_uid(registry: Registry, uid: str, when: str = PAST) -> None:
    response = await registry.client.patch("/request/set_uid_expiration", params={"uid": uid, "expiration": when})
    assert response.status_code == 200, response.text


async def _events(registry: Registry, uid: str, event: str) -> list[dict[str, Any]]:
    history = (await registry.client.get("/request/query_item_history", params={"uid": uid})).json()
    return [row for row in history if row["event"] == event]


async def test_an_expired_replica_that_is_not_needed_is_deleted(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await registry.storage("vault", root=tmp_path / "vault", phase="SOLID")
    scratch_uid = await registry.register("obs", "obs.dat")
    vault_uid = await registry.replica(scratch_uid, "vault", tmp_path / "vault", "obs.dat")
    await _expire_uid(registry, scratch_uid)
    await _expire_uid(registry, vault_uid, "2031-01-01")  # the vault copy lives on

    report = await expiry.run_once(sessionmaker, now=NOW)
    assert [str(uid) for uid in report.deleted] == [scratch_uid] and not report.kept
    gone = await registry.item(scratch_uid)
    assert (gone["item_state"], gone["deleted"]) == ("DELETED", True) and gone["uid_deletion"]
    assert not (registry.root / "obs.dat").exists()
    assert (await registry.item(vault_uid))["item_state"] == "READY"
    assert (await registry.item(vault_uid))["oid_phase"] == "SOLID"
    [event] = [row for row in await _events(registry, scratch_uid, "item_state") if row["new_value"] == "DELETED"]
    assert event["actor"] == "expiry"
    assert (await expiry.run_once(sessionmaker, now=NOW)).deleted == [], "a second pass finds nothing"


async def test_a_replica_the_item_still_needs_is_kept_with_the_reason_recorded_once(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    uid = await registry.register("needed", target_phase="GAS")
    await _expire_uid(registry, uid)
    report = await expiry.run_once(sessionmaker, now=NOW)
    assert report.deleted == [] and [str(kept.uid) for kept in report.kept] == [uid]
    assert "target_phase" in report.kept[0].reason
    again = await expiry.run_once(sessionmaker, now=NOW)
    assert again.deleted == again.kept == [], "nothing changed for it: the next pass does not decide again"
    assert (await registry.item(uid))["item_state"] == "READY"
    assert (registry.root / "needed").exists()
    [kept] = await _events(registry, uid, expiry.KEPT_EVENT)
    assert "target_phase GAS" in kept["new_value"] and kept["actor"] == "expiry"

    await registry.storage("second", root=tmp_path / "second")
    await registry.replica(uid, "second", tmp_path / "second", "needed")  # now it can be spared
    spared = await expiry.run_once(sessionmaker, now=NOW)
    assert [str(deleted) for deleted in spared.deleted] == [uid]
    assert not (registry.root / "needed").exists()


async def test_an_expired_item_loses_every_replica(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await registry.storage("vault", root=tmp_path / "vault", phase="SOLID")
    uid = await registry.register("done-with")
    other = await registry.replica(uid, "vault", tmp_path / "vault", "done-with")
    oid = (await registry.item(uid))["oid"]
    await registry.client.patch("/request/set_oid_expiration", params={"oid": oid, "expiration": PAST})

    report = await expiry.run_once(sessionmaker, now=NOW)
    assert {str(uid) for uid in report.deleted} == {uid, other}
    for replica in (uid, other):
        assert (await registry.item(replica))["item_state"] == "DELETED"
    assert not (registry.root / "done-with").exists() and not (tmp_path / "vault" / "done-with").exists()
    assert (await registry.item(uid))["oid_phase"] == "PLASMA"
    # SKA-DLM's oid_deletion: when the item's last replica went, on every row of it.
    deletions = {(await registry.item(replica))["oid_deletion"] for replica in (uid, other)}
    assert len(deletions) == 1 and None not in deletions


async def test_a_payload_that_cannot_be_deleted_keeps_its_row_and_holds_back_no_other(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    """Payloads are deleted in a batch per storage; one that fails is deferred on its own."""
    victim = tmp_path / "victim"
    victim.write_text("not DLM's")
    uids = {name: await registry.register(name) for name in ("first", "planted", "last")}
    for uid in uids.values():
        oid = (await registry.item(uid))["oid"]
        await registry.client.patch("/request/set_oid_expiration", params={"oid": oid, "expiration": PAST})
    (registry.root / "planted").unlink()
    (registry.root / "planted").symlink_to(victim)  # swapped for a link out of the storage

    report = await expiry.run_once(sessionmaker, now=NOW)
    assert {str(uid) for uid in report.deleted} == {uids["first"], uids["last"]}
    [deferred] = report.deferred
    assert str(deferred.uid) == uids["planted"] and "outside the storage root" in deferred.reason
    assert victim.read_text() == "not DLM's"
    # It says its payload is on its way out (the item has expired), and the next pass tries again.
    assert (await registry.item(uids["planted"]))["item_state"] == "DELETING"
    assert not (registry.root / "first").exists() and not (registry.root / "last").exists()

    (registry.root / "planted").unlink()
    registry.payload("planted")
    again = await expiry.run_once(sessionmaker, now=NOW)
    assert [str(uid) for uid in again.deleted] == [uids["planted"]] and not again.deferred
    assert (await registry.item(uids["planted"]))["item_state"] == "DELETED"


async def test_a_container_takes_its_members_with_it(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    for member in ("run/a.ms", "run/sub/b.ms"):
        registry.payload(member)
    container = await registry.register("run", item_type="container", register_members=True)
    oid = (await registry.item(container))["oid"]
    await registry.client.patch("/request/set_oid_expiration", params={"oid": oid, "expiration": PAST})

    report = await expiry.run_once(sessionmaker, now=NOW)
    assert len(report.deleted) == 3, report
    members = (await registry.client.get("/request/query_data_item", params={"params": "item_name=like.run/*"})).json()
    assert {row["item_state"] for row in members} == {"DELETED"}
    assert not (registry.root / "run").exists()


async def test_a_containers_tree_goes_alone_after_its_members_files(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pass deletes files several calls at a time; a container's tree removed beside a call unlinking
    # one of its members stops at the vanished file and leaves the rest behind, untracked.
    members = [f"run/part{index % 3}/m{index}.ms" for index in range(12)]
    for member in members:
        registry.payload(member)
    container = await registry.register("run", item_type="container", register_members=True)
    oid = (await registry.item(container))["oid"]
    await registry.client.patch("/request/set_oid_expiration", params={"oid": oid, "expiration": PAST})
    calls: list[tuple[list[str], int]] = []  # each call's uris, with how many other calls were running
    running = 0
    delete_many = PosixBackend.delete_many

    async def watched(self: PosixBackend, uris: list[str]) -> dict[str, str]:
        nonlocal running
        calls.append((uris, running))
        running += 1
        try:
            return await delete_many(self, uris)
        finally:
            running -= 1

    monkeypatch.setattr(PosixBackend, "delete_many", watched)

    report = await expiry.run_once(sessionmaker, now=NOW)
    assert len(report.deleted) == 13 and not report.deferred, report
    assert len(calls) > 2, "the members' files go several calls at a time"
    [(with_tree, beside)] = [(uris, others) for uris, others in calls if "run" in uris]
    assert with_tree == ["run"] and beside == 0 and calls[-1][0] == ["run"]
    assert not (registry.root / "run").exists()


async def test_a_dry_run_says_what_would_go_and_touches_nothing(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await registry.storage("second", root=tmp_path / "second")
    first = await registry.register("pair", target_phase="GAS")
    second = await registry.replica(first, "second", tmp_path / "second", "pair")
    await _expire_uid(registry, first)
    await _expire_uid(registry, second)

    report = await expiry.run_once(sessionmaker, now=NOW, dry_run=True)
    # Two GAS copies of a GAS item: one may go, the last must stay.
    assert report.dry_run and len(report.deleted) == 1 and len(report.kept) == 1
    assert {(await registry.item(uid))["item_state"] for uid in (first, second)} == {"READY"}
    assert (registry.root / "pair").exists() and (tmp_path / "second" / "pair").exists()
    assert await _events(registry, first, expiry.KEPT_EVENT) == await _events(registry, second, expiry.KEPT_EVENT) == []

    real = await expiry.run_once(sessionmaker, now=NOW)
    assert real.deleted == report.deleted and [k.uid for k in real.kept] == [k.uid for k in report.kept]


async def test_an_s3_payload_is_deleted_from_its_bucket(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], s3_config: dict, s3_bucket: str
) -> None:
    from tests.migration.conftest import put_object, read_object

    await registry.s3_storage("objects", s3_bucket, s3_config)
    await put_object(s3_config, s3_bucket, "obs/x.dat", b"bytes")
    response = await registry.client.post(
        "/ingest/register_data_item",
        params={"item_name": "s3-obs", "uri": "obs/x.dat", "storage_name": "objects", "oid_expiration": PAST},
    )
    assert response.status_code == 200, response.text
    report = await expiry.run_once(sessionmaker, now=NOW)
    assert [str(uid) for uid in report.deleted] == [response.json()]
    assert await read_object(s3_config, s3_bucket, "obs/x.dat") is None


async def test_two_processes_never_delete_the_same_replica_twice(registry: Registry, database_url: str) -> None:
    uids = []
    for index in range(40):
        uids.append(await registry.register(f"many-{index}", oid_expiration=PAST))
    reports = await in_two_processes(
        database_url, lambda sessionmaker: expiry.run_once(sessionmaker, now=NOW, batch_size=7)
    )
    deleted = [str(uid) for report in reports for uid in report.deleted]
    assert sorted(deleted) == sorted(uids), "every replica deleted, and by one pass only"
    for uid in uids:
        events = [row for row in await _events(registry, uid, "item_state") if row["new_value"] == "DELETED"]
        assert len(events) == 1


async def test_the_worker_command_previews_expiry(registry: Registry, database_url: str) -> None:
    uid = await registry.register("cli-expiry", oid_expiration=PAST)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DLM_")}
    result = subprocess.run(
        [sys.executable, "-m", "dlm", "worker", "expiry", "--once", "--dry-run", "--now", "2030-01-01", "--json"],
        env={**environment, "DLM_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dry_run"] is True and report["deleted"] == [uid]
    assert (await registry.item(uid))["item_state"] == "READY"
    bad = subprocess.run(
        [sys.executable, "-m", "dlm", "worker", "expiry", "--once", "--now", "someday"],
        env={**environment, "DLM_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert "--now" in bad.stderr


# An expiry pass in a process of its own that is killed (SIGKILL) half-way through deleting a batch of
# payloads: after the first half went, before anything else happens.
_DIES_MID_BATCH = """
import asyncio, datetime, os, signal, sys
from dlm.db.engine import create_engine, create_sessionmaker
from dlm.lifecycle import expiry
from dlm.transfer.posix import PosixBackend

delete_many = PosixBackend.delete_many

async def half_then_killed(self, uris):
    await delete_many(self, uris[: len(uris) // 2])
    os.kill(os.getpid(), signal.SIGKILL)

PosixBackend.delete_many = half_then_killed

async def main():
    engine = create_engine(sys.argv[1], pool_size=2)
    await expiry.run_once(create_sessionmaker(engine), now=datetime.datetime.fromisoformat(sys.argv[2]))

asyncio.run(main())
"""


async def _expired_items(registry: Registry, count: int) -> dict[str, str]:
    """``count`` items, obs-00, obs-01, ..., each with its oid_expiration passed; their uids by name."""
    uids = {}
    for index in range(count):
        name = f"obs-{index:02d}"
        uids[name] = await registry.register(name)
        oid = (await registry.item(uids[name]))["oid"]
        await registry.client.patch("/request/set_oid_expiration", params={"oid": oid, "expiration": PAST})
    return uids


async def test_a_pass_killed_mid_deletion_loses_track_of_no_payload(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    uids = await _expired_items(registry, 20)
    names = list(uids)

    killed = subprocess.run(
        [sys.executable, "-c", _DIES_MID_BATCH, database_url, NOW.isoformat()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -9, killed.stderr
    present = {name for name in names if (registry.root / name).exists()}
    assert 0 < len(present) < len(names), "killed half-way through the batch"
    states = {name: (await registry.item(uids[name]))["item_state"] for name in names}
    # No replica claims a payload that is gone: every row of the batch says its payload is going.
    assert set(states.values()) == {"DELETING"}, states

    report = await expiry.run_once(sessionmaker, now=NOW)
    assert {str(uid) for uid in report.deleted} == set(uids.values()) and not report.deferred
    assert {(await registry.item(uid))["item_state"] for uid in uids.values()} == {"DELETED"}
    assert not any((registry.root / name).exists() for name in names)
    history = (await registry.client.get("/request/query_item_history", params={"uid": uids["obs-00"]})).json()
    assert [row["new_value"] for row in history if row["event"] == "item_state"][-2:] == ["DELETING", "DELETED"]


async def test_a_batch_is_marked_while_the_last_ones_payloads_go_and_a_cancelled_pass_loses_none(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    uids = await _expired_items(registry, 10)
    names = list(uids)
    # Batches of four, in the order of the first sweep (replicas past their uid_expiration).
    async with sessionmaker() as session:
        in_order = list(await session.scalars(select(ITEMS.c.item_name).order_by(ITEMS.c.uid_expiration, ITEMS.c.uid)))
    first, second, third = in_order[:4], in_order[4:8], in_order[8:]
    held = asyncio.Event()
    delete_many = PosixBackend.delete_many

    async def second_batch_held(self: PosixBackend, uris: list[str]) -> dict[str, str]:
        if set(uris) & set(second):
            held.set()
            await asyncio.Event().wait()  # until the pass is cancelled
        return await delete_many(self, uris)

    async def states() -> dict[str, str]:
        async with sessionmaker() as session:
            rows = await session.execute(select(ITEMS.c.item_name, ITEMS.c.item_state))
            return {row.item_name: row.item_state.value for row in rows}

    monkeypatch.setattr(PosixBackend, "delete_many", second_batch_held)
    running = asyncio.ensure_future(expiry.run_once(sessionmaker, now=NOW, batch_size=4))
    await asyncio.wait_for(held.wait(), 30)
    # While the second batch's payloads go, the first is recorded and the third marked.
    for _ in range(300):
        now_states = await states()
        if all(now_states[name] == "DELETING" for name in third):
            break
        await asyncio.sleep(0.05)
    assert {name: now_states[name] for name in names} == {
        **{name: "DELETED" for name in first},
        **{name: "DELETING" for name in second + third},
    }
    running.cancel()  # a shutdown mid-pass
    with pytest.raises(asyncio.CancelledError):
        await running
    assert all((registry.root / name).exists() for name in second + third)
    assert not any((registry.root / name).exists() for name in first)

    monkeypatch.setattr(PosixBackend, "delete_many", delete_many)
    report = await expiry.run_once(sessionmaker, now=NOW, batch_size=4)
    assert {str(uid) for uid in report.deleted} == {uids[name] for name in second + third}
    assert set((await states()).values()) == {"DELETED"}
    assert not any((registry.root / name).exists() for name in names)


async def test_under_skas_deletion_rule_the_last_replica_goes_when_expired_or_deleted(
    registry: Registry, engine: AsyncEngine, settings: Settings
) -> None:
    """DLM_SKA_DELETION=unconditional: SKA-DLM's test_expired_by_storage_daemon and
    test_delete_item_payload, whose items' only replica goes although the item wants it."""
    needed = await registry.register("needed", target_phase="GAS")
    await _expire_uid(registry, needed)
    safe = await expiry.run_once(create_sessionmaker(engine, info=session_info(settings)), now=NOW)
    assert safe.deleted == [] and len(safe.kept) == 1, "DLM's default keeps it"

    ska = msgspec.structs.replace(settings, ska_deletion="unconditional")
    report = await expiry.run_once(create_sessionmaker(engine, info=session_info(ska)), now=NOW)
    assert [str(uid) for uid in report.deleted] == [needed] and not report.kept, "decided again, and gone"
    assert (await registry.item(needed))["item_state"] == "DELETED" and not (registry.root / "needed").exists()

    only = await registry.register("only")
    refused = await registry.client.post("/storage/delete_data_item_payload", params={"uid": only})
    assert refused.status_code == 422 and "target_phase" in refused.text
    async with AsyncTestClient(create_app(ska)) as client:
        deleted = await client.post("/storage/delete_data_item_payload", params={"uid": only})
        assert deleted.status_code == 200, deleted.text
    assert (await registry.item(only))["item_state"] == "DELETED" and not (registry.root / "only").exists()
