"""Audit: corruption injected by hand is found, and phase enforcement repairs it from a good replica;
missing and resized payloads too; healthy replicas are not re-read before their time; dark data is
reported and left alone."""

import datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.lifecycle import audit, replication
from tests.conftest import Registry, in_two_processes
from tests.migration.conftest import wait_for

NOW = datetime.datetime.now(datetime.UTC)


async def _history(registry: Registry, uid: str, event: str) -> list[dict]:
    rows = (await registry.client.get("/request/query_item_history", params={"uid": uid})).json()
    return [row for row in rows if row["event"] == event]


async def test_a_flipped_byte_is_found_and_repaired_from_a_good_copy(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await registry.storage("vault", root=tmp_path / "vault", phase="SOLID")
    original = bytes(range(256)) * 40
    registry.payload("obs", original)
    uid = await registry.register("obs")
    queued = await replication.run_once(sessionmaker)
    [planned] = queued.queued
    await wait_for(registry.client, planned.migration_id)
    assert (await registry.item(uid))["oid_phase"] == "SOLID"

    damaged = bytearray(original)
    damaged[1234] ^= 0xFF  # one flipped byte, same size
    (tmp_path / "vault" / "obs").write_bytes(bytes(damaged))
    report = await audit.run_once(sessionmaker, now=NOW)
    assert report.checked == 2 and report.bytes_read == 2 * len(original)
    [finding] = report.corrupted
    assert "crc32c" in finding.reason and "registered" in finding.reason
    copy_uid = str(finding.uid)
    assert (await registry.item(copy_uid))["item_state"] == "CORRUPTED"
    assert (await registry.item(uid))["oid_phase"] == "GAS", "the corrupted copy no longer counts"
    [event] = await _history(registry, copy_uid, audit.FAILED_EVENT)
    assert event["actor"] == "audit" and "crc32c" in event["new_value"]

    repair = await replication.run_once(sessionmaker)
    assert [str(uid) for uid in repair.replaced] == [copy_uid]
    await wait_for(registry.client, repair.queued[0].migration_id)
    assert (tmp_path / "vault" / "obs").read_bytes() == original
    assert (await registry.item(uid))["oid_phase"] == "SOLID"


async def test_missing_and_resized_payloads_are_corrupted(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    missing = await registry.register("missing")
    resized = await registry.register("resized")
    (registry.root / "missing").unlink()
    (registry.root / "resized").write_bytes(b"much longer than before\n")
    report = await audit.run_once(sessionmaker, now=NOW)
    reasons = {str(finding.uid): finding.reason for finding in report.corrupted}
    assert "missing" in reasons[missing] and "size" in reasons[resized]


async def test_healthy_replicas_are_not_reread_before_their_time(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    uid = await registry.register("healthy")
    first = await audit.run_once(sessionmaker, now=NOW)
    assert (first.checked, first.corrupted) == (1, [])
    assert (await registry.item(uid))["last_check"] is not None
    assert (await audit.run_once(sessionmaker, now=NOW + datetime.timedelta(days=1))).checked == 0
    assert (await audit.run_once(sessionmaker, now=NOW + datetime.timedelta(days=8))).checked == 1
    assert await _history(registry, uid, "last_check") == [], "stamping a check leaves no history noise"


async def test_two_processes_share_the_audit(registry: Registry, database_url: str) -> None:
    for index in range(10):
        await registry.register(f"obs-{index}")
    reports = await in_two_processes(database_url, lambda sessionmaker: audit.run_once(sessionmaker, now=NOW))
    assert sum(report.checked for report in reports) == 10


async def test_dark_data_is_reported_and_left_alone(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    registry.payload("run/a.ms")
    await registry.register("run", item_type="container")
    await registry.register("known")
    stray = registry.payload("nobody/knows.dat", b"?" * 7)
    report = await audit.run_once(sessionmaker, now=NOW, dark_data=True)
    assert [(dark.storage_name, dark.uri, dark.size) for dark in report.dark] == [("disk", "nobody/knows.dat", 7)]
    assert stray.exists()


async def test_orphaned_partial_files_are_reported_and_removed_after_a_day(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    import os

    old = registry.payload("lost/.big.dat.dlm-partial", b"half a copy")
    young = registry.payload(".fresh.dat.dlm-partial", b"a copy that may resume")
    two_days_ago = NOW.timestamp() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    report = await audit.run_once(sessionmaker, now=NOW, dark_data=True)
    found = {(partial.uri, partial.removed) for partial in report.partials}
    assert found == {("lost/big.dat", True), ("fresh.dat", False)}
    assert not old.exists() and young.exists()
    assert report.dark == [], "partial files are not dark data"
    assert "orphaned partial files (1 removed)" in report.summary()


async def test_s3_replicas_are_audited_and_an_unreachable_storage_is_not_judged(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession], s3_config: dict, s3_bucket: str
) -> None:
    from tests.conftest import free_port
    from tests.migration.conftest import put_object

    await registry.s3_storage("objects", s3_bucket, s3_config)
    uids = {}
    for name in ("a", "b", "c"):
        await put_object(s3_config, s3_bucket, f"obs/{name}.dat", f"bytes of {name}".encode())
        response = await registry.client.post(
            "/ingest/register_data_item",
            params={"item_name": f"s3-{name}", "uri": f"obs/{name}.dat", "storage_name": "objects"},
        )
        uids[name] = response.json()
    await put_object(s3_config, s3_bucket, "obs/b.dat", b"rotted of b")  # same size, other bytes
    await registry.s3_storage(
        "dead", "nowhere", {**s3_config, "endpoint": f"http://127.0.0.1:{free_port()}"}, check=False
    )
    response = await registry.client.post(
        "/ingest/register_data_item",
        params={"item_name": "far", "uri": "far.dat", "storage_name": "dead", "do_storage_access_check": "false"},
    )
    far = response.json()

    report = await audit.run_once(sessionmaker, now=NOW)
    assert report.checked == 4
    assert [str(finding.uid) for finding in report.corrupted] == [uids["b"]]
    assert [str(finding.uid) for finding in report.unreachable] == [far]
    assert (await registry.item(far))["item_state"] == "READY", "a storage that does not answer is not judged"
    assert (await registry.item(uids["a"]))["item_state"] == "READY"
