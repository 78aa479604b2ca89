"""Every backend against real storage: a temporary directory, moto's S3 server over HTTP, and
OpenSSH's sshd on loopback."""

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dlm.checksum import new_hasher
from dlm.enums import ChecksumMethod, StorageInterface
from dlm.errors import InvalidQueryParameters
from dlm.storage.configs import validate
from dlm.transfer import s3 as s3_module
from dlm.transfer.backends import make_backend
from dlm.transfer.base import PayloadChanged, PayloadExists, PayloadMissing, SmallFile, StorageRefused
from dlm.transfer.s3 import MIN_PART_SIZE, S3Backend, S3Settings
from tests.conftest import new_bucket


async def chunks_of(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def read_all(backend: Any, uri: str) -> bytes:
    return b"".join([chunk async for chunk in backend.read(uri)])


@pytest.fixture(params=["posix", "s3", "sftp"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path, s3_config: dict[str, Any]) -> AsyncIterator[Any]:
    if request.param == "sftp":
        server = request.getfixturevalue("ssh_server")
        root = tmp_path / "remote"
        root.mkdir()
        async with make_backend(StorageInterface.SFTP, str(root), server.config()) as sftp:
            yield sftp
    elif request.param == "posix":
        root = tmp_path / "root"
        root.mkdir()
        async with make_backend(StorageInterface.POSIX, str(root), {"type": "local"}) as posix:
            yield posix
    else:
        bucket = await new_bucket(s3_config)
        async with make_backend(StorageInterface.S3, f"{bucket}/prefix", s3_config) as s3:
            yield s3


async def test_write_then_read_stat_checksum_and_delete(backend: Any) -> None:
    written = await backend.write("a/b/file.bin", chunks_of(b"hello ", b"world"))
    assert written == 11
    assert await read_all(backend, "a/b/file.bin") == b"hello world"
    assert (await backend.stat("a/b/file.bin")).size == 11
    assert (await backend.stat("a/b")).is_container
    assert await backend.stat("a/missing") is None
    for method in ChecksumMethod:
        if method is ChecksumMethod.NONE:
            continue
        hasher = new_hasher(method)
        hasher.update(b"hello world")
        assert await backend.checksum("a/b/file.bin", method) == hasher.hexdigest()
    assert await backend.delete("a/b/file.bin")
    assert await backend.stat("a/b/file.bin") is None
    assert not await backend.delete("a/b/file.bin")


async def test_walk_lists_a_container_recursively_and_delete_removes_it(backend: Any) -> None:
    for uri, content in [("box/x", b"1"), ("box/sub/y", b"22"), ("box/sub/deeper/z", b"333"), ("other", b"4")]:
        await backend.write(uri, chunks_of(content))
    entries = sorted([(entry.path, entry.size) async for entry in backend.walk("box")])
    assert entries == [("sub/deeper/z", 3), ("sub/y", 2), ("x", 1)]
    assert [(entry.path, entry.size) async for entry in backend.walk("other")] == [("", 1)]
    assert sorted([entry.path async for entry in backend.walk()]) == ["box/sub/deeper/z", "box/sub/y", "box/x", "other"]
    assert await backend.delete("box")
    assert await backend.stat("box") is None
    assert await backend.stat("other") is not None


async def test_reading_a_missing_payload_is_a_clear_permanent_error(backend: Any) -> None:
    with pytest.raises(PayloadMissing) as raised:
        await read_all(backend, "nothing/here")
    assert not raised.value.transient
    with pytest.raises(PayloadMissing):
        [entry async for entry in backend.walk("nothing")]


async def test_a_failed_write_leaves_nothing_behind(backend: Any) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * 1024
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError):
        await backend.write("dir/file", broken())
    assert await backend.stat("dir/file") is None
    assert [entry async for entry in backend.walk()] == []


@pytest.mark.parametrize("uri", ["../outside", "a/../../outside", "/../etc/passwd", "", "/", "//"])
async def test_uris_cannot_escape_the_root(backend: Any, uri: str) -> None:
    with pytest.raises(InvalidQueryParameters):
        await backend.write(uri, chunks_of(b"x"))
    with pytest.raises(InvalidQueryParameters):
        await backend.stat(uri)


async def test_posix_symlinks_pointing_outside_the_root_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "box").mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_text("not yours")
    (root / "link").symlink_to(secret)
    (root / "box" / "link").symlink_to(secret)
    async with make_backend(StorageInterface.POSIX, str(root), None) as posix:
        with pytest.raises(InvalidQueryParameters, match="outside the storage root"):
            await read_all(posix, "link")
        with pytest.raises(StorageRefused, match="outside the storage root"):
            [entry async for entry in posix.walk("box")]


async def test_posix_write_is_atomic_and_keeps_permissions(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    async with make_backend(StorageInterface.POSIX, str(root), None) as posix:
        await posix.write("f", chunks_of(b"data"), mode=0o100640)
        assert (root / "f").stat().st_mode & 0o777 == 0o640
        assert [path.name for path in root.iterdir()] == ["f"]


@pytest.mark.parametrize("announced", [3, 2, 1], ids=["larger", "exact", "smaller"])
async def test_posix_reserves_the_announced_size_and_keeps_only_what_was_written(
    tmp_path: Path, announced: int
) -> None:
    """A streamed write reserves ``size_hint`` bytes up front; a source that turns out shorter (or
    longer) than announced leaves exactly its own bytes."""
    content = os.urandom(2 * 1024 * 1024 + 5)
    async with make_backend(StorageInterface.POSIX, str(tmp_path), None) as posix:
        await posix.write("f", chunks_of(content[:1_000_000], content[1_000_000:]), size_hint=announced * 1024 * 1024)
    assert (tmp_path / "f").read_bytes() == content
    assert os.stat(tmp_path / "f").st_blocks * 512 < len(content) + 1024 * 1024, "no reserved tail left"


async def test_s3_large_payloads_go_up_in_parts(s3_bucket: str, s3_config: dict[str, Any]) -> None:
    settings = S3Settings.from_rclone({**s3_config, "part_size": str(MIN_PART_SIZE)})
    part = os.urandom(1024 * 1024)
    async with S3Backend(s3_bucket, settings) as s3:
        written = await s3.write("big", chunks_of(*[part] * 12), size_hint=12 * len(part))
        assert written == 12 * len(part)
        head = await s3._client.head_object(Bucket=s3_bucket, Key="big")
        assert head["ETag"].strip('"').endswith("-3")  # a multipart upload of three 5 MiB parts
        assert await read_all(s3, "big") == part * 12


async def test_s3_parts_go_up_several_at_once_and_one_failing_leaves_nothing(
    s3_bucket: str, s3_config: dict[str, Any]
) -> None:
    settings = S3Settings.from_rclone({**s3_config, "part_size": str(MIN_PART_SIZE), "upload_concurrency": "3"})
    pieces = [os.urandom(1024 * 1024) for _ in range(26)]  # six parts: five whole, one short
    async with S3Backend(s3_bucket, settings) as s3:
        upload_part = s3._upload_part
        in_flight, most = 0, 0

        async def counted(*args: Any) -> Any:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            try:
                await asyncio.sleep(0.3)  # a round trip that dwarfs the upload: more in flight pays
                return await upload_part(*args)
            finally:
                in_flight -= 1

        s3._upload_part = counted  # type: ignore[method-assign]
        assert await s3.write("many", chunks_of(*pieces), size_hint=26 * 1024 * 1024) == 26 * 1024 * 1024
        # The window opens while more parts in flight raise the rate (tests/transfer/test_window.py
        # checks how far, on simulated links), never past upload_concurrency.
        assert 2 <= most <= 3, most
        assert await read_all(s3, "many") == b"".join(pieces)
        assert s3.stored_as_sent("many"), "the multipart ETag of parts sent out of order still matches"

        async def third_fails(key: str, upload_id: str, number: int, body: bytearray) -> Any:
            if number == 3:
                raise StorageRefused("the third part was refused")
            return await upload_part(key, upload_id, number, body)

        s3._upload_part = third_fails  # type: ignore[method-assign]
        with pytest.raises(StorageRefused):
            await s3.write("broken", chunks_of(*pieces), size_hint=26 * 1024 * 1024)
        assert await s3.stat("broken") is None
        uploads = await s3._client.list_multipart_uploads(Bucket=s3_bucket, Prefix="broken")
        assert not uploads.get("Uploads"), "the upload was aborted, its parts not left billed"
    refused = S3Settings.from_rclone({**s3_config, "upload_concurrency": "0"})
    assert refused.upload_concurrency == 0  # the storage's config is checked where it is stored:
    with pytest.raises(InvalidQueryParameters, match="upload_concurrency"):
        validate({**s3_config, "upload_concurrency": "0"}, interface=StorageInterface.S3)


async def test_s3_unreachable_endpoint_is_transient(s3_bucket: str) -> None:
    settings = S3Settings(endpoint="http://127.0.0.1:9", access_key_id="a", secret_access_key="b")
    async with S3Backend(s3_bucket, settings) as s3:
        with pytest.raises(Exception) as raised:
            await s3.stat("x")
    assert getattr(raised.value, "transient", False), raised.value


async def test_s3_wrong_bucket_is_refused_permanently(s3_config: dict[str, Any]) -> None:
    async with S3Backend("no-such-bucket", S3Settings.from_rclone(s3_config)) as s3:
        with pytest.raises(StorageRefused, match="NoSuchBucket"):
            await s3.write("x", chunks_of(b"x"))


async def test_a_write_never_replaces_what_is_at_the_uri(backend: Any) -> None:
    await backend.write("taken", chunks_of(b"someone else's"))
    with pytest.raises(PayloadExists) as raised:
        await backend.write("taken", chunks_of(b"ours"))
    assert not raised.value.transient
    assert await read_all(backend, "taken") == b"someone else's"


@pytest.mark.parametrize("s3_listing", [True, False], ids=["listed", "one-by-one"])
async def test_a_batch_never_replaces_what_is_at_a_uri_and_leaves_none_of_its_files(
    backend: Any, s3_listing: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On S3 a batch looks for what is there by listing, unless the listing would be long (then as every
    other backend without a batch write of its own: file by file)."""
    if not s3_listing:
        monkeypatch.setattr(s3_module, "_LISTING_PER_FILE", 0)
    await backend.write("box/f2", chunks_of(b"someone else's"))
    with pytest.raises(PayloadExists, match="box/f2"):
        await backend.write_small([SmallFile(f"box/f{index}", b"ours") for index in range(5)])
    assert [entry.path async for entry in backend.walk("box")] == ["f2"]
    assert await read_all(backend, "box/f2") == b"someone else's"
    await backend.write_small([SmallFile(f"box/g{index}", b"g%d" % index) for index in range(5)])
    assert {entry.path async for entry in backend.walk("box")} == {"f2", "g0", "g1", "g2", "g3", "g4"}
    assert await read_all(backend, "box/g3") == b"g3"


async def test_a_small_file_that_grew_past_its_limit_is_not_read_whole(backend: Any) -> None:
    await backend.write("f", chunks_of(b"0123456789"))
    assert await backend.read_small(["f"], 10) == [b"0123456789"]
    with pytest.raises(PayloadChanged, match="grew") as raised:
        await backend.read_small(["f"], 9)
    assert raised.value.transient, "tried again once the file is still"


async def test_s3_a_racing_writer_loses_rather_than_overwrites(s3_bucket: str, s3_config: dict[str, Any]) -> None:
    """Both writers found the key free; the conditional write makes the second fail."""
    async with S3Backend(s3_bucket, S3Settings.from_rclone(s3_config)) as s3:

        async def racing() -> AsyncIterator[bytes]:
            yield b"ours"
            await s3._client.put_object(Bucket=s3_bucket, Key="raced", Body=b"theirs")

        with pytest.raises(PayloadExists):
            await s3.write("raced", racing())
        assert await read_all(s3, "raced") == b"theirs"


def test_a_dlm_without_s3_or_sftp_storages_loads_neither_library(tmp_path: Path) -> None:
    """aioboto3 and asyncssh cost ~40 MiB of resident memory between them: imported when a storage
    first needs them, not by the server's code."""
    import subprocess
    import sys

    probe = (
        "import sys, dlm.app\n"
        "from dlm.enums import StorageInterface\n"
        "from dlm.transfer.backends import make_backend, place_of\n"
        f"make_backend(StorageInterface.POSIX, {str(tmp_path)!r}, None)\n"
        "place_of(StorageInterface.S3, 'bucket/prefix', {'type': 's3', 'endpoint': 'http://s3.example:9000'})\n"
        "place_of(StorageInterface.SFTP, '/data', {'type': 'sftp', 'host': 'archive.example'})\n"
        "print(sorted({'aioboto3', 'botocore', 'asyncssh'} & {name.split('.')[0] for name in sys.modules}))\n"
        "make_backend(StorageInterface.S3, 'bucket', {'type': 's3', 'endpoint': 'http://s3.example:9000'})\n"
        "print(sorted({'aioboto3', 'botocore', 'asyncssh'} & {name.split('.')[0] for name in sys.modules}))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[:2] == ["[]", "['aioboto3', 'botocore']"], result.stdout


async def test_stat_many_answers_as_stat_does_for_files_containers_and_nothing(backend: Any) -> None:
    for uri, content in [("run/a", b"1"), ("run/b", b"22"), ("run/box/c", b"333"), ("elsewhere", b"4444")]:
        await backend.write(uri, chunks_of(content))
    uris = ["run/a", "run/missing", "run/box", "run/b", "elsewhere", "run/box/c"]
    found = await backend.stat_many(uris)
    assert [(info.size, info.is_container) if info else None for info in found] == [
        (1, False),
        None,
        (None, True),
        (2, False),
        (4, False),
        (3, False),
    ]
    # Enough names in one directory for a backend to list it rather than ask about each.
    for index in range(10):
        await backend.write(f"run/many-{index}", chunks_of(b"x" * index))
    uris += [f"run/many-{index}" for index in range(10)] + [f"run/none-{index}" for index in range(10)]
    uris += ["run/many-1/below", "gone/many-1"]
    found = await backend.stat_many(uris)
    assert [info.size if info else None for info in found[6:]] == [*range(10), *[None] * 12]
    assert [info.size if info else None for info in found] == [
        info.size if info else None for info in [await backend.stat(uri) for uri in uris]
    ]
