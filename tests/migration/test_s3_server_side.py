"""Copies inside one S3 service: S3 copies the object itself (CopyObject) and computes its checksum, so
none of the bytes pass through DLM; the copy is still verified against the registered checksum."""

import asyncio
import contextlib
import os
import queue
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import crc32c as crc32c_module
import msgspec
import pytest
from aiohttp import web
from litestar.testing import AsyncTestClient

from dlm.app import create_app
from dlm.checksum import crc32c_combine
from dlm.config import Settings
from dlm.enums import StorageInterface
from dlm.migration.worker import run_next
from dlm.transfer import s3
from dlm.transfer.backends import make_backend
from tests.conftest import Registry, new_bucket
from tests.migration.conftest import copy, list_objects, put_object, read_object, wait_for
from tests.migration.test_migration import crc32c


async def counters(registry: Registry) -> tuple[float, float]:
    """This process's bytes copied, and of those the bytes that passed through it."""
    text = (await registry.client.get("/metrics")).text

    def value(name: str) -> float:
        found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    return value("dlm_copied_bytes_total"), value("dlm_copied_bytes_through_total")


async def copied_to_archive(registry: Registry, uid: str) -> tuple[dict[str, Any], float, float]:
    """Copy the item to archive, to SUCCEEDED; returns the job, and the bytes this process copied and
    of those the bytes that passed through it meanwhile."""
    copied, through = await counters(registry)
    queued = await copy(registry.client, uid=uid, destination_name="archive")
    assert (await wait_for(registry.client, queued["migration_id"]))["status"] == "SUCCEEDED"
    after_copied, after_through = await counters(registry)
    return queued, after_copied - copied, after_through - through


async def two_buckets(registry: Registry, config: dict[str, Any]) -> tuple[str, str]:
    """Two buckets of one S3 service as the storages objects and archive."""
    source, destination = await new_bucket(config), await new_bucket(config)
    await registry.s3_storage("objects", source, config)
    await registry.s3_storage("archive", destination, config)
    return source, destination


async def on_s3(registry: Registry, config: dict[str, Any], name: str, content: bytes) -> tuple[str, str]:
    """Two buckets of one S3 service as storages, an item of ``content`` registered on the first;
    returns its uid and the second bucket."""
    source, destination = await two_buckets(registry, config)
    await put_object(config, source, name, content)
    return await registry.register(name, name, storage="objects"), destination


async def test_a_copy_inside_one_s3_service_passes_no_bytes_through_dlm(
    registry: Registry, s3_config: dict[str, Any]
) -> None:
    content = os.urandom(3 * 1024 * 1024 + 17)
    uid, destination = await on_s3(registry, s3_config, "obs.ms", content)
    queued, copied, through = await copied_to_archive(registry, uid)
    assert await read_object(s3_config, destination, "obs.ms") == content
    assert (await registry.item(queued["uid"]))["item_checksum"] == crc32c(content)
    assert copied == len(content)
    assert through == 0, "the bytes went through DLM"


async def test_a_source_that_rotted_is_caught_by_the_checksum_s3_computes(
    registry: Registry, s3_config: dict[str, Any]
) -> None:
    content = os.urandom(64 * 1024)
    source, destination = await two_buckets(registry, s3_config)
    await put_object(s3_config, source, "rotten", content)
    uid = await registry.register("rotten", "rotten", storage="objects")
    await put_object(s3_config, source, "rotten", b"rot" + content[3:])
    queued = await copy(registry.client, uid=uid, destination_name="archive")
    failed = await wait_for(registry.client, queued["migration_id"])
    assert failed["status"] == "FAILED" and "ChecksumMismatch" in failed["last_error"], failed
    assert await list_objects(s3_config, destination) == [], "nothing left behind"


async def test_other_credentials_copy_through_dlm_as_before(registry: Registry, s3_config: dict[str, Any]) -> None:
    content = os.urandom(64 * 1024)
    source = await new_bucket(s3_config)
    await registry.s3_storage("objects", source, s3_config)
    other = {**s3_config, "access_key_id": "someone-else", "secret_access_key": "their-secret"}
    destination = await new_bucket(other)
    await registry.s3_storage("archive", destination, other)
    await put_object(s3_config, source, "obs", content)
    uid = await registry.register("obs", "obs", storage="objects")
    _, copied, through = await copied_to_archive(registry, uid)
    assert await read_object(other, destination, "obs") == content
    assert copied == through == len(content)


async def test_an_object_beyond_one_copy_request_is_copied_in_parts(
    registry: Registry, s3_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a 6 GiB object would be (CopyObject takes 5 GiB), at a test's size: three parts of 5 MiB at most.
    monkeypatch.setattr(s3, "MAX_COPY_OBJECT", 8 * 1024 * 1024)
    monkeypatch.setattr(s3, "COPY_PART_SIZE", 5 * 1024 * 1024)
    uploads: list[int] = []
    copy_part = s3.S3Backend._copy_in_parts

    async def counted(self: s3.S3Backend, copy_source: Any, key: str, size: int, algorithm: str) -> str | None:
        uploads.append(size)
        return await copy_part(self, copy_source, key, size, algorithm)

    monkeypatch.setattr(s3.S3Backend, "_copy_in_parts", counted)
    content = os.urandom(12 * 1024 * 1024 + 17)
    uid, destination = await on_s3(registry, s3_config, "big.tar", content)
    queued, copied, through = await copied_to_archive(registry, uid)
    assert await read_object(s3_config, destination, "big.tar") == content
    assert uploads == [len(content)], "copied in parts"
    assert (await registry.item(queued["uid"]))["item_checksum"] == crc32c(content)
    assert copied == len(content)
    # moto gives no checksum for a part copied, so DLM reads the copy back once (S3 itself gives one
    # per part, which DLM combines): never more than the object passes through DLM, and no upload.
    assert through in (0, len(content))
    async with make_backend(StorageInterface.S3, destination, s3_config) as backend:
        assert (await backend._client.list_multipart_uploads(Bucket=destination)).get("Uploads", []) == []


def test_the_checksums_of_parts_combine_into_the_objects() -> None:
    parts = [os.urandom(size) for size in (5 * 1024 * 1024, 5 * 1024 * 1024, 17, 0, 1)]
    combined = crc32c_module.crc32c(parts[0])
    for part in parts[1:]:
        combined = crc32c_combine(combined, crc32c_module.crc32c(part), len(part))
    assert combined == crc32c_module.crc32c(b"".join(parts))


async def test_a_batch_of_small_objects_is_copied_by_s3_each_verified(
    settings: Settings, sessionmaker: Any, tmp_path: Path, s3_config: dict[str, Any]
) -> None:
    # Many small copies between two buckets of one service go as one batch, each object copied by S3
    # itself; one whose source rotted fails alone.
    idle = msgspec.structs.replace(settings, migration_workers=0)
    async with AsyncTestClient(create_app(idle)) as client:
        registry = Registry(client, tmp_path / "store")
        contents = {f"obs-{index:02d}": os.urandom(4096) for index in range(12)}
        source, destination = await two_buckets(registry, s3_config)
        uids = {}
        for name, content in contents.items():
            await put_object(s3_config, source, name, content)
            uids[name] = await registry.register(name, name, storage="objects")
        await put_object(s3_config, source, "obs-03", b"rot" + contents["obs-03"][3:])
        queued = {name: await copy(client, uid=uids[name], destination_name="archive") for name in contents}
        copied, through = await counters(registry)
        assert await run_next(sessionmaker, idle, "test-worker") == queued["obs-00"]["migration_id"]
        for name, job in queued.items():
            row = await wait_for(client, job["migration_id"])
            expected = "FAILED" if name == "obs-03" else "SUCCEEDED"
            assert row["status"] == expected, row
            if name != "obs-03":
                assert await read_object(s3_config, destination, name) == contents[name]
        assert await read_object(s3_config, destination, "obs-03") is None, "nothing left behind"
        after_copied, after_through = await counters(registry)
        assert after_copied - copied == 11 * 4096
        assert after_through == through, "the bytes went through DLM"


async def test_a_store_that_does_not_copy_objects_itself_gets_the_bytes_streamed(
    registry: Registry, s3_config: dict[str, Any]
) -> None:
    # An S3-compatible store without CopyObject (or without its checksums) answers NotImplemented: the
    # copy streams through DLM as between two services. The store is moto behind a proxy that says so.
    with refusing_copies(s3_config["endpoint"]) as endpoint:
        behind = {**s3_config, "endpoint": endpoint}
        content = os.urandom(64 * 1024)
        uid, destination = await on_s3(registry, behind, "obs", content)
        _, copied, through = await copied_to_archive(registry, uid)
        assert await read_object(s3_config, destination, "obs") == content
        assert copied == through == len(content)


# Headers about one connection, or that the proxy's own client sets: not passed on.
_HOP_BY_HOP = {"host", "expect", "content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}


def _length(headers: Any) -> dict[str, str]:
    return {"Content-Length": headers["Content-Length"]} if "Content-Length" in headers else {}


@contextlib.contextmanager
def refusing_copies(endpoint: str) -> Iterator[str]:
    """A proxy to ``endpoint`` that answers every copy request NotImplemented, in a thread of its own
    (the test client's calls block the test's event loop); yields its address."""
    ready: queue.Queue[tuple[int, asyncio.Event]] = queue.Queue()
    loop = asyncio.new_event_loop()

    async def forward(request: web.Request) -> web.StreamResponse:
        if "x-amz-copy-source" in request.headers:
            body = "<Error><Code>NotImplemented</Code><Message>no copies here</Message></Error>"
            return web.Response(status=501, text=body, content_type="application/xml")
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(
                request.method,
                f"{endpoint}{request.rel_url}",
                headers={name: value for name, value in request.headers.items() if name.lower() not in _HOP_BY_HOP},
                data=await request.read(),
            ) as answer,
        ):
            headers = {name: value for name, value in answer.headers.items() if name.lower() not in _HOP_BY_HOP}
            if request.method == "HEAD":  # no body, but the object's length all the same
                return web.Response(status=answer.status, headers={**headers, **_length(answer.headers)})
            return web.Response(status=answer.status, body=await answer.read(), headers=headers)

    async def serve() -> None:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", forward)  # routes answer Expect: 100-continue, as S3 does
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        stop = asyncio.Event()
        ready.put((site._server.sockets[0].getsockname()[1], stop))  # type: ignore[union-attr]
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    port, stop = ready.get(timeout=10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        loop.close()
