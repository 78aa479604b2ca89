"""A symlink planted in a storage cannot redirect a copy's write outside it, and a copy that meets one
fails for good, once, rather than being claimed again and again; nor does a copy ever replace a file
that appeared at its destination meanwhile."""

from pathlib import Path
from typing import Any

import msgspec
from litestar.testing import AsyncTestClient

from dlm.app import create_app
from dlm.transfer.posix import PARTIAL_SUFFIX, PosixBackend
from tests.conftest import Registry
from tests.migration.conftest import copy, wait_for


async def _chunks(content: bytes) -> Any:
    yield content


async def test_a_link_planted_as_the_partial_file_is_replaced_not_followed(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "victim.txt"
    root.mkdir()
    outside.write_text("must stay")
    for size in (10, 3 * 1024 * 1024):  # a small write (one thread hop) and a streamed one
        (root / f".obs.dat{PARTIAL_SUFFIX}").symlink_to(outside)
        written = await PosixBackend(str(root)).write("obs.dat", _chunks(b"x" * size))
        assert written == size
        assert outside.read_text() == "must stay"
        assert (root / "obs.dat").read_bytes() == b"x" * size and not (root / "obs.dat").is_symlink()
        (root / "obs.dat").unlink()


async def test_a_copy_into_a_directory_swapped_for_a_link_fails_once_and_writes_nothing_outside(
    settings: Any, storage_root: Path, tmp_path: Path
) -> None:
    destination, outside = tmp_path / "destination", tmp_path / "outside"
    outside.mkdir()
    queue_only = msgspec.structs.replace(settings, migration_workers=0)
    async with AsyncTestClient(create_app(queue_only)) as client:
        registry = Registry(client, storage_root)
        await registry.storage()
        await registry.storage("destination", root=destination)
        uid = await registry.register("obs", "sub/obs.dat")
        queued = await copy(client, uid=uid, destination_name="destination")
    # Between queueing and copying, someone with access to the storage plants a link.
    (destination / "sub").symlink_to(outside)
    async with AsyncTestClient(create_app(settings)) as client:
        done = await wait_for(client, queued["migration_id"], timeout=30)
        assert (done["status"], done["attempts"]) == ("FAILED", 1), done
        assert "outside the storage root" in done["last_error"]
        replica = (await client.get("/request/query_data_item", params={"uid": queued["uid"]})).json()[0]
        assert replica["item_state"] == "DELETED"
    assert list(outside.iterdir()) == [], "nothing was written through the link"


async def test_a_file_that_appears_at_the_destination_is_never_overwritten(
    settings: Any, storage_root: Path, tmp_path: Path
) -> None:
    destination = tmp_path / "destination"
    queue_only = msgspec.structs.replace(settings, migration_workers=0)
    async with AsyncTestClient(create_app(queue_only)) as client:
        registry = Registry(client, storage_root)
        await registry.storage()
        await registry.storage("destination", root=destination)
        uid = await registry.register("obs", "obs.dat")
        queued = await copy(client, uid=uid, destination_name="destination")
    (destination / "obs.dat").write_text("someone else's")  # between queueing and copying
    async with AsyncTestClient(create_app(settings)) as client:
        done = await wait_for(client, queued["migration_id"], timeout=30)
    assert (done["status"], done["attempts"]) == ("FAILED", 1), "refused for good at once, not retried"
    assert "exists already" in done["last_error"] and "never overwrites" in done["last_error"]
    assert (destination / "obs.dat").read_text() == "someone else's"
    assert [path.name for path in destination.iterdir()] == ["obs.dat"], "no partial file left"


async def test_a_write_never_replaces_an_existing_file(tmp_path: Path) -> None:
    from dlm.transfer.base import StorageRefused

    root = tmp_path / "root"
    root.mkdir()
    (root / "taken.dat").write_text("first")
    backend = PosixBackend(str(root))
    for size in (10, 3 * 1024 * 1024):
        try:
            await backend.write("taken.dat", _chunks(b"y" * size))
        except StorageRefused as exc:
            assert "never overwrites" in exc.message
        else:
            raise AssertionError("overwrote")
        assert (root / "taken.dat").read_text() == "first"
        assert sorted(path.name for path in root.iterdir()) == ["taken.dat"]


async def test_a_containers_copy_says_which_symlinked_directories_it_did_not_follow(
    registry: Registry, tmp_path: Path
) -> None:
    elsewhere = registry.root / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "kept-out.dat").write_text("not part of the container\n")
    registry.payload("run/a.dat", b"a")
    (registry.root / "run" / "linked").symlink_to(elsewhere)
    uid = await registry.register("run", "run", item_type="container")
    await registry.storage("second", root=tmp_path / "second")
    finished = await wait_for(
        registry.client, (await copy(registry.client, uid=uid, destination_name="second"))["migration_id"]
    )
    assert finished["status"] == "SUCCEEDED", finished
    assert finished["job_stats"]["unfollowed_symlinks"] == ["linked"]
    assert sorted(path.name for path in (tmp_path / "second" / "run").iterdir()) == ["a.dat"]
