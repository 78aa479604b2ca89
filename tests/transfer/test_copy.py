"""Verified copies in every direction between POSIX, S3 and SFTP, containers, failures, and bounded
memory."""

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dlm.checksum import new_hasher
from dlm.enums import ChecksumMethod, StorageInterface
from dlm.transfer import posix
from dlm.transfer import s3 as s3_module
from dlm.transfer.backends import make_backend
from dlm.transfer.base import ChecksumMismatch, PayloadExists, SmallFile, StorageUnreachable
from dlm.transfer.copy import BATCH_FILES, SMALL_FILE, copy_payload
from dlm.transfer.posix import PARTIAL_SUFFIX, PosixBackend
from dlm.transfer.s3 import S3Backend, S3Settings
from tests.conftest import new_bucket


async def chunks_of(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def contents(backend: Any, uri: str) -> dict[str, bytes]:
    found = {}
    async for entry in backend.walk(uri):
        found[entry.path] = b"".join(
            [chunk async for chunk in backend.read(f"{uri}/{entry.path}" if entry.path else uri)]
        )
    return found


async def open_backend(kind: str, tmp_path: Path, s3_config: dict[str, Any], name: str, request: Any = None) -> Any:
    if kind == "s3":
        return make_backend(StorageInterface.S3, await new_bucket(s3_config), s3_config)
    root = tmp_path / name
    root.mkdir()
    if kind == "sftp":
        # SKA's shape: a posix storage on another host, reached through an sftp config.
        return make_backend(StorageInterface.POSIX, str(root), request.getfixturevalue("ssh_server").config())
    return make_backend(StorageInterface.POSIX, str(root), None)


KINDS = ["posix", "s3", "sftp"]
DIRECTIONS = [(source, destination) for source in KINDS for destination in KINDS]


@pytest.mark.parametrize(("source_kind", "destination_kind"), DIRECTIONS)
async def test_a_file_and_a_container_copy_in_every_direction(
    source_kind: str, destination_kind: str, tmp_path: Path, s3_config: dict[str, Any], request: Any
) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)
    # Small members travel in batches, a member over SMALL_FILE streams on its own.
    members = {
        "a.txt": b"alpha",
        "sub/b.bin": os.urandom(70_000),
        "sub/deep/c": b"",
        "sub/large.bin": os.urandom(SMALL_FILE + 1),
    }
    async with (
        await open_backend(source_kind, tmp_path, s3_config, "source", request) as source,
        await open_backend(destination_kind, tmp_path, s3_config, "destination", request) as destination,
    ):
        await source.write("in/file.bin", chunks_of(payload))
        for path, content in members.items():
            await source.write(f"box/{path}", chunks_of(content))
        progress: list[tuple[int, int]] = []

        async def record(done: int, total: int) -> None:
            progress.append((done, total))

        result = await copy_payload(source, "in/file.bin", destination, "out/file.bin", on_progress=record)
        hasher = new_hasher(ChecksumMethod.CRC32C)
        hasher.update(payload)
        assert (result.files, result.bytes, result.checksum) == (1, len(payload), hasher.hexdigest())
        assert await contents(destination, "out/file.bin") == {"": payload}
        assert progress[0] == (0, len(payload)) and progress[-1] == (len(payload), len(payload))

        result = await copy_payload(source, "box", destination, "copied/box", method=ChecksumMethod.SHA256)
        assert (result.files, result.bytes, result.checksum) == (4, sum(map(len, members.values())), None)
        assert await contents(destination, "copied/box") == members


async def test_a_source_that_no_longer_matches_its_registered_checksum_is_not_copied(tmp_path: Path) -> None:
    (tmp_path / "source").mkdir()
    (tmp_path / "destination").mkdir()
    (tmp_path / "source" / "f").write_bytes(b"rotten bits")
    async with (
        make_backend(StorageInterface.POSIX, str(tmp_path / "source"), None) as source,
        make_backend(StorageInterface.POSIX, str(tmp_path / "destination"), None) as destination,
    ):
        with pytest.raises(ChecksumMismatch, match="was registered"):
            await copy_payload(source, "f", destination, "f", expected_checksum="00000000")
    assert list((tmp_path / "destination").iterdir()) == []


async def test_a_destination_that_disappears_mid_copy_fails_transiently_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    source_root, destination_root = tmp_path / "source", tmp_path / "mount"
    source_root.mkdir()
    destination_root.mkdir()
    (source_root / "f").write_bytes(os.urandom(4 * 1024 * 1024))

    async def unmount_halfway(done: int, total: int) -> None:
        if done >= total // 2 and destination_root.exists():
            subprocess.run(["rm", "-rf", str(destination_root)], check=True)

    async with (
        make_backend(StorageInterface.POSIX, str(source_root), None) as source,
        make_backend(StorageInterface.POSIX, str(destination_root), None) as destination,
    ):
        with pytest.raises(StorageUnreachable, match="not there") as raised:
            await copy_payload(
                source, "f", destination, "dir/f", on_progress=unmount_halfway, max_bytes_per_second=16 * 1024 * 1024
            )
    assert raised.value.transient
    # The vanished volume is not recreated underneath its mount point.
    assert not destination_root.exists()


def many_small_files(root: Path, count: int) -> dict[str, bytes]:
    members = {f"d{index % 3}/f{index:05d}": os.urandom(index % 5000) for index in range(count)}
    for path, content in members.items():
        (root / "box" / path).parent.mkdir(parents=True, exist_ok=True)
        (root / "box" / path).write_bytes(content)
        (root / "box" / path).chmod(0o640)
    return members


def without_linux_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a system without syncfs and renameat2: an fsync per file, and publishing by a hard link."""
    monkeypatch.setattr(posix, "_SYNCFS", None)
    monkeypatch.setattr(posix, "_RENAMEAT2", None)


@pytest.mark.parametrize("linux", [True, False], ids=["syncfs-renameat2", "fsync-link"])
async def test_a_container_of_many_small_files_copies_in_batches_with_their_permissions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, linux: bool
) -> None:
    """More files than one batch holds, made durable by one syncfs per batch or, where the system has
    none, by an fsync of each file."""
    if not linux:
        without_linux_calls(monkeypatch)
    (tmp_path / "destination").mkdir()
    members = many_small_files(tmp_path, BATCH_FILES + 7)
    async with PosixBackend(str(tmp_path)) as source, PosixBackend(str(tmp_path / "destination")) as destination:
        result = await copy_payload(source, "box", destination, "copy/box")
        assert (result.files, result.bytes) == (len(members), sum(map(len, members.values())))
        assert await contents(destination, "copy/box") == members
    copied = tmp_path / "destination" / "copy" / "box"
    assert {path.stat().st_mode & 0o777 for path in copied.rglob("f*")} == {0o640}
    assert not list(copied.rglob(f"*{PARTIAL_SUFFIX}"))


@pytest.mark.parametrize("linux", [True, False], ids=["renameat2", "link"])
async def test_a_batch_meeting_a_file_already_at_its_destination_leaves_none_of_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, linux: bool
) -> None:
    if not linux:
        without_linux_calls(monkeypatch)
    root = tmp_path / "root"
    (root / "box").mkdir(parents=True)
    (root / "box" / "f2").write_text("someone else's")
    batch = [SmallFile(f"box/f{index}", b"new %d" % index) for index in range(5)]
    async with PosixBackend(str(root)) as backend:
        with pytest.raises(PayloadExists, match="box/f2"):
            await backend.write_small(batch)
    assert {path.name: path.read_text() for path in (root / "box").iterdir()} == {"f2": "someone else's"}


class RottingPosix(PosixBackend):
    """A destination that damages one file of each batch after writing it, as bad hardware might."""

    async def write_small(self, files: list[SmallFile]) -> None:
        await super().write_small(files)
        damaged = self.local_path(files[-1].uri)
        damaged.write_bytes(damaged.read_bytes() + b"!")


async def test_a_batch_member_that_reads_back_wrong_fails_the_copy_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "destination").mkdir()
    many_small_files(tmp_path, 20)
    async with PosixBackend(str(tmp_path)) as source, RottingPosix(str(tmp_path / "destination")) as destination:
        with pytest.raises(ChecksumMismatch, match="reads back"):
            await copy_payload(source, "box", destination, "box")
    assert list((tmp_path / "destination").iterdir()) == []


class SlowPosix(PosixBackend):
    """A destination whose batch writes take a while, saying when one has started."""

    started, finished = threading.Event(), threading.Event()

    def _write_small(self, files: list[SmallFile]) -> None:
        self.started.set()
        time.sleep(0.3)
        try:
            super()._write_small(files)
        finally:
            self.finished.set()


async def test_a_copy_cancelled_while_a_batch_is_being_written_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "destination").mkdir()
    many_small_files(tmp_path, 50)
    async with PosixBackend(str(tmp_path)) as source, SlowPosix(str(tmp_path / "destination")) as destination:
        copying = asyncio.create_task(copy_payload(source, "box", destination, "box"))
        await asyncio.to_thread(SlowPosix.started.wait, 10)
        copying.cancel()
        with pytest.raises(asyncio.CancelledError):
            await copying
    assert await asyncio.to_thread(SlowPosix.finished.wait, 10)
    assert list((tmp_path / "destination").iterdir()) == [], "the batch the thread finished was removed"


async def test_a_container_copied_into_a_directory_swapped_for_a_link_writes_nothing_outside(tmp_path: Path) -> None:
    (tmp_path / "destination").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "destination" / "box").symlink_to(tmp_path / "outside")
    many_small_files(tmp_path, 20)
    async with PosixBackend(str(tmp_path)) as source, PosixBackend(str(tmp_path / "destination")) as destination:
        with pytest.raises(Exception, match="outside the storage root"):
            await copy_payload(source, "box", destination, "box")
    assert list((tmp_path / "outside").iterdir()) == []


class CountingS3(S3Backend):
    """Counts the objects read back (checksum_many reads each through checksum)."""

    read_back = 0

    async def checksum(self, uri: str, method: ChecksumMethod) -> str:
        self.read_back += 1
        return await super().checksum(uri, method)


async def test_copies_to_s3_are_confirmed_by_their_etags_not_read_back(
    tmp_path: Path, s3_config: dict[str, Any]
) -> None:
    """Small files in one PUT each, a large one in several parts (its ETag: the MD5 of the parts' MD5s)."""
    members = many_small_files(tmp_path, 30)
    members["large.bin"] = os.urandom(11 * 1024 * 1024 + 3)
    (tmp_path / "box" / "large.bin").write_bytes(members["large.bin"])
    bucket = await new_bucket(s3_config)
    settings = S3Settings.from_rclone({**s3_config, "part_size": str(5 * 1024 * 1024)})
    async with PosixBackend(str(tmp_path)) as source, CountingS3(bucket, settings) as destination:
        result = await copy_payload(source, "box", destination, "box")
        assert result.files == len(members) and destination.read_back == 0
        assert await contents(destination, "box") == members


async def test_an_etag_that_is_not_the_one_the_bytes_sent_make_has_them_read_back(
    tmp_path: Path, s3_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An encrypted object's ETag, or a store's own kind, confirms nothing: the objects are read back."""
    monkeypatch.setattr(s3_module, "_stored_etag", lambda response: "0" * 32)
    members = many_small_files(tmp_path, 5)
    members["large.bin"] = os.urandom(6 * 1024 * 1024)
    (tmp_path / "box" / "large.bin").write_bytes(members["large.bin"])
    bucket = await new_bucket(s3_config)
    async with (
        PosixBackend(str(tmp_path)) as source,
        CountingS3(bucket, S3Settings.from_rclone(s3_config)) as destination,
    ):
        await copy_payload(source, "box", destination, "box")
        assert destination.read_back == len(members)
        assert await contents(destination, "box") == members


MEMORY_PROBE = textwrap.dedent(
    """
    import asyncio, json, resource, sys
    from dlm.enums import StorageInterface
    from dlm.transfer.backends import make_backend
    from dlm.transfer.copy import copy_payload

    async def main(kind, source_root, destination_root, config):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        async with make_backend(StorageInterface.POSIX, source_root, None) as source, \\
                   make_backend(StorageInterface(kind), destination_root, config) as destination:
            result = await copy_payload(source, "big", destination, "big")
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"bytes": result.bytes, "grew_kib": after - before}))

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])))
    """
)


@pytest.mark.parametrize(("kind", "size"), [("posix", 2 * 1024**3), ("s3", 160 * 1024**2), ("sftp", 160 * 1024**2)])
async def test_memory_stays_bounded_whatever_the_payload_size(
    kind: str, size: int, tmp_path: Path, s3_config: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    """A multi-GiB sparse file (POSIX), a payload many parts long (S3) and many SFTP requests long copy
    in a process whose peak memory grows by far less than the payload."""
    import json

    source_root = tmp_path / "source"
    source_root.mkdir()
    with open(source_root / "big", "wb") as sparse:
        sparse.truncate(size)
    if kind in ("posix", "sftp"):
        destination_root = tmp_path / "destination"
        destination_root.mkdir()
        target = str(destination_root)
        config = request.getfixturevalue("ssh_server").config() if kind == "sftp" else {}
    else:
        target, config = await new_bucket(s3_config), {**s3_config, "part_size": 5 * 1024 * 1024}
    probe = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, kind, str(source_root), target, json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout)
    assert report["bytes"] == size
    assert report["grew_kib"] * 1024 < 96 * 1024 * 1024, report
