"""Moves: a verified copy, then the source replica goes in the same job; never below the item's
resilience, never from a read-only storage; a container moves with its members."""

import os
from pathlib import Path

from litestar.testing import AsyncTestClient

from tests.conftest import Registry, assert_error
from tests.migration.conftest import wait_for


async def move(registry: Registry, **params: str) -> dict:
    response = await registry.client.post("/migration/move_data_item", params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_move_leaves_the_item_on_the_destination_only(registry: Registry, tmp_path: Path) -> None:
    await registry.storage("archive", root=tmp_path / "archive", phase="SOLID")
    uid = await registry.register("obs", "obs")
    queued = await move(registry, uid=uid, destination_name="archive")
    done = await wait_for(registry.client, queued["migration_id"])
    assert (done["status"], done["move"], done["last_error"]) == ("SUCCEEDED", True, None)
    assert (await registry.item(uid))["item_state"] == "DELETED"
    assert not (registry.root / "obs").exists(), "the source payload is gone"
    moved = await registry.item(queued["uid"])
    assert moved["item_state"] == "READY" and moved["oid_phase"] == "SOLID"
    assert (tmp_path / "archive" / "obs").read_bytes() == b"payload\n"


async def test_a_container_moves_with_its_members(registry: Registry, tmp_path: Path) -> None:
    await registry.storage("archive", root=tmp_path / "archive", phase="SOLID")
    registry.payload("box/a", b"a")
    registry.payload("box/sub/b", b"b")
    await registry.register("box", "box", item_type="container", register_members="true")
    queued = await move(registry, item_name="box", destination_name="archive")
    assert (await wait_for(registry.client, queued["migration_id"]))["status"] == "SUCCEEDED"
    for member in ("box/a", "box/sub/b"):
        rows = (await registry.client.get("/request/query_data_item", params={"item_name": member})).json()
        assert sorted(row["item_state"] for row in rows) == ["DELETED", "READY"]
    assert not (registry.root / "box").exists()


async def test_a_source_that_may_not_go_is_refused_before_copying_or_stays_and_the_job_says_why(
    slow_client: AsyncTestClient, storage_root: Path, tmp_path: Path
) -> None:
    registry = Registry(slow_client, storage_root)
    await registry.storage()
    await registry.storage("archive", root=tmp_path / "archive", phase="SOLID")
    registry.payload("kept", os.urandom(6 * 1024 * 1024))
    uid = await registry.register("kept", "kept")

    async def permissions(value: str) -> None:
        changed = await slow_client.patch(
            "/storage/update_storage", params={"storage_name": "disk", "storage_permissions": value}
        )
        assert changed.status_code == 200, changed.text

    await permissions("R")
    refused = await slow_client.post("/migration/move_data_item", params={"uid": uid, "destination_name": "archive"})
    assert_error(refused, 422, "UnmetPreconditionForOperation", "read-only", "copy the item instead")
    assert (await slow_client.get("/migration/query_migrations")).json() == [], "nothing was queued"

    # Read-only only once the copy is under way: the copy stands, the source stays, the job says why.
    await permissions("RW")
    queued = await move(registry, uid=uid, destination_name="archive")
    await permissions("R")
    done = await wait_for(slow_client, queued["migration_id"])
    assert done["status"] == "SUCCEEDED" and "read-only" in done["last_error"]
    assert done["job_status"]["error"].startswith("copied; the source replica stays")
    assert (await registry.item(uid))["item_state"] == "READY" and (storage_root / "kept").exists()
    assert (await registry.item(queued["uid"]))["item_state"] == "READY"


async def test_bad_moves_are_refused_and_leave_nothing(registry: Registry) -> None:
    uid = await registry.register("here", "here")
    refused = await registry.client.post("/migration/move_data_item", params={"uid": uid, "destination_name": "disk"})
    assert_error(refused, 422, "InvalidQueryParameters", "already lives")
    nowhere = await registry.client.post("/migration/move_data_item", params={"uid": uid, "destination_name": "moon"})
    assert_error(nowhere, 404, "NotFound", "moon")
    assert (await registry.client.get("/migration/query_migrations")).json() == []


async def test_moving_cannot_take_an_item_below_its_target_phase_unless_an_admin_forces_it(
    registry: Registry, tmp_path: Path
) -> None:
    """An item kept SOLID on the archive, moved to scratch (GAS): refused before anything is copied."""
    await registry.storage("archive", root=tmp_path / "archive", phase="SOLID")
    await registry.storage("scratch", root=tmp_path / "scratch", phase="GAS")
    registry.payload("obs", b"precious", root=tmp_path / "archive")
    response = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "obs", "uri": "obs", "storage_name": "archive"}
    )
    archived = response.json()
    refused = await registry.client.post(
        "/migration/move_data_item", params={"uid": archived, "destination_name": "scratch"}
    )
    assert_error(refused, 422, "UnmetPreconditionForOperation", "below its target_phase SOLID", "force=true")
    assert (await registry.client.get("/migration/query_migrations")).json() == []
    assert list((tmp_path / "scratch").iterdir()) == [], "nothing copied"
    forced = await move(registry, uid=archived, destination_name="scratch", force="true")  # open mode: admin
    done = await wait_for(registry.client, forced["migration_id"])
    assert (done["status"], done["last_error"]) == ("SUCCEEDED", None)
    assert (await registry.item(archived))["item_state"] == "DELETED"
    assert (tmp_path / "scratch" / "obs").read_bytes() == b"precious"
