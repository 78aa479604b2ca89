"""Downloads: the best replica's bytes with the headers a resumable client needs, byte ranges, a
container as a tar, failover between replicas, S3 redirects, who may read, and the history."""

import io
import os
import tarfile
from pathlib import Path
from typing import Any

import httpx
import msgspec
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.app import create_app
from dlm.checksum import new_hasher
from dlm.config import Settings
from dlm.enums import ChecksumMethod, Role
from tests.auth.conftest import bearer, make_token
from tests.conftest import Registry, assert_error

CONTENT = os.urandom(100_000)


def crc32c(content: bytes) -> str:
    hasher = new_hasher(ChecksumMethod.CRC32C)
    hasher.update(content)
    return hasher.hexdigest()


async def history(registry: Registry, uid: str) -> list[dict[str, Any]]:
    response = await registry.client.get("/request/query_item_history", params={"uid": uid})
    assert response.status_code == 200, response.text
    return [event for event in response.json() if event["event"] == "retrieved"]


async def test_a_file_comes_back_with_what_a_resuming_client_needs(registry: Registry) -> None:
    registry.payload("obs/vis.dat", CONTENT)
    uid = await registry.register("vis", "obs/vis.dat")
    response = await registry.client.get("/request/retrieve", params={"item_name": "vis"})
    assert response.status_code == 200, response.text
    assert response.content == CONTENT
    headers = response.headers
    assert headers["content-length"] == str(len(CONTENT)) and headers["accept-ranges"] == "bytes"
    assert headers["x-dlm-checksum"] == f"crc32c={crc32c(CONTENT)}" and headers["etag"].startswith('"')
    assert headers["last-modified"].endswith("GMT") and 'filename="vis"' in headers["content-disposition"]
    [event] = await history(registry, uid)
    assert event["actor"] == "anonymous" and f"{len(CONTENT)} bytes" in event["new_value"]
    assert (await registry.item(uid))["last_access"] is not None

    head = await registry.client.head("/request/retrieve", params={"uid": uid})
    assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == headers["etag"]
    assert head.headers["content-length"] == str(len(CONTENT))
    assert len(await history(registry, uid)) == 1, "a HEAD reads nothing"


async def test_byte_ranges(registry: Registry) -> None:
    registry.payload("f", CONTENT)
    uid = await registry.register("f", "f")
    client = registry.client

    async def ranged(value: str, **extra: str) -> httpx.Response:
        return await client.get("/request/retrieve", params={"uid": uid}, headers={"range": value, **extra})

    middle = await ranged("bytes=10-19")
    assert (middle.status_code, middle.content) == (206, CONTENT[10:20])
    assert middle.headers["content-range"] == f"bytes 10-19/{len(CONTENT)}"
    tail = await ranged("bytes=-5")
    assert (tail.status_code, tail.content) == (206, CONTENT[-5:])
    rest = await ranged(f"bytes={len(CONTENT) - 3}-")
    assert rest.content == CONTENT[-3:]
    beyond = await ranged(f"bytes={len(CONTENT)}-")
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(CONTENT)}"
    assert_error(await ranged("lines=1-2"), 422, "InvalidQueryParameters", "Range")
    stale = await ranged("bytes=10-19", **{"if-range": '"not-this-version"'})
    assert (stale.status_code, stale.content) == (200, CONTENT), "changed since: all of it again"


async def test_a_container_streams_as_a_tar_of_its_files(registry: Registry) -> None:
    files = {"a.txt": b"alpha", "sub/b.bin": os.urandom(1000), "sub/deeper/c": b""}
    for path, content in files.items():
        registry.payload(f"box/{path}", content)
    await registry.register("box", "box", item_type="container")
    response = await registry.client.get("/request/retrieve", params={"item_name": "box"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        found = {member.name: tar.extractfile(member).read() for member in tar.getmembers()}  # type: ignore[union-attr]
    assert found == {f"box/{path}": content for path, content in files.items()}


async def test_the_best_replica_serves_and_a_missing_one_hands_over(
    registry: Registry, tmp_path: Path, s3_config: dict[str, Any], s3_bucket: str
) -> None:
    registry.payload("obs", CONTENT)
    uid = await registry.register("obs", "obs")
    await registry.s3_storage("archive", s3_bucket, s3_config)
    copied = await registry.client.post("/migration/copy_data_item", params={"uid": uid, "destination_name": "archive"})
    assert copied.status_code == 200
    from tests.migration.conftest import wait_for

    assert (await wait_for(registry.client, copied.json()["migration_id"]))["status"] == "SUCCEEDED"
    served = await registry.client.get("/request/retrieve", params={"item_name": "obs"})
    assert served.headers["x-dlm-uid"] == uid, "the local file system first"
    (registry.root / "obs").unlink()
    handed_over = await registry.client.get("/request/retrieve", params={"item_name": "obs"})
    assert handed_over.status_code == 200 and handed_over.content == CONTENT
    assert handed_over.headers["x-dlm-uid"] == copied.json()["uid"], "the missing one is passed over up front"
    assert (await registry.item(uid))["last_check"] is None, "and flagged for the audit"
    redirected = await registry.client.get(
        "/request/retrieve", params={"uid": copied.json()["uid"], "redirect": "true"}, follow_redirects=False
    )
    # The best replica is still the local one (its row is READY): redirect only applies to S3 ones.
    assert redirected.status_code in (200, 307)


async def test_a_ready_replica_whose_file_is_gone_is_a_404_not_a_truncated_200(registry: Registry) -> None:
    registry.payload("gone", CONTENT)
    uid = await registry.register("gone", "gone")
    client = registry.client
    (registry.root / "gone").unlink()
    head = await client.head("/request/retrieve", params={"uid": uid})
    assert head.status_code == 404
    response = await client.get("/request/retrieve", params={"uid": uid})
    assert_error(response, 404, "NotFound", "no READY replica has its payload")
    assert (await registry.item(uid))["last_check"] is None, "flagged: the audit checks it next"
    assert await history(registry, uid) == [], "nothing was retrieved"
    registry.payload("gone", CONTENT[:10])
    shorter = await client.get("/request/retrieve", params={"uid": uid})
    assert_error(shorter, 404, "NotFound"), "a payload of another size is not the item's"


async def test_a_download_is_named_by_rfc_6266_whatever_its_name(registry: Registry) -> None:
    registry.payload("odd.dat", CONTENT)
    await registry.register('run "7"; é\\x.dat', "odd.dat")
    response = await registry.client.get("/request/retrieve", params={"item_name": 'run "7"; é\\x.dat'})
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == (
        "attachment; filename=\"run _7_; __x.dat\"; filename*=UTF-8''run%20%227%22%3B%20%C3%A9%5Cx.dat"
    )


async def test_an_s3_replica_can_be_fetched_from_a_presigned_url(
    registry: Registry, s3_config: dict[str, Any], s3_bucket: str
) -> None:
    from tests.migration.conftest import put_object

    await registry.s3_storage("archive", s3_bucket, s3_config)
    await put_object(s3_config, s3_bucket, "obs", CONTENT)
    response = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "in-s3", "uri": "obs", "storage_name": "archive"}
    )
    assert response.status_code == 200, response.text
    redirected = await registry.client.get(
        "/request/retrieve", params={"item_name": "in-s3", "redirect": "true"}, follow_redirects=False
    )
    assert redirected.status_code == 307
    location = redirected.headers["location"]
    assert s3_config["secret_access_key"] not in location and "Signature" in location
    async with httpx.AsyncClient() as plain:
        assert (await plain.get(location)).content == CONTENT


async def test_bad_requests_are_clear_and_record_nothing(registry: Registry) -> None:
    client = registry.client
    assert_error(await client.get("/request/retrieve", params={"item_name": "nope"}), 404, "NotFound", "nope")
    draft = (await client.post("/ingest/init_data_item", params={"item_name": "draft"})).json()
    assert_error(
        await client.get("/request/retrieve", params={"uid": draft}), 422, "UnmetPreconditionForOperation", "READY"
    )
    assert_error(await client.get("/request/retrieve", params={"uid": "x"}), 422, "InvalidQueryParameters", "uid")
    assert_error(await client.get("/request/retrieve"), 422, "InvalidQueryParameters", "item_name")


async def test_who_may_read_is_the_role_the_owner_and_the_acl(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], storage_root: Path
) -> None:
    closed = msgspec.structs.replace(settings, auth="required")
    admin = await make_token(sessionmaker, "ops", Role.ADMIN)
    alice = await make_token(sessionmaker, "alice", Role.READER)
    bob = await make_token(sessionmaker, "bob", Role.READER)
    async with AsyncTestClient(create_app(closed)) as client:
        client.headers.update(bearer(admin))
        registry = Registry(client, storage_root)
        await registry.storage()
        open_uid = await registry.register("open")
        private = await registry.register("private")
        oid = (await registry.item(private))["oid"]
        # A bare name is an identity provider's user: not the holder of the API token named so.
        acl = await client.patch("/request/set_acl", params={"oid": oid, "acl": '{"read": ["alice"]}'})
        assert acl.status_code == 200, acl.text
        refused = await client.get("/request/retrieve", params={"item_name": "private"}, headers=bearer(alice))
        assert_error(refused, 403, "Forbidden", "token:alice")
        acl = await client.patch("/request/set_acl", params={"oid": oid, "acl": '{"read": ["token:alice"]}'})
        assert acl.status_code == 200, acl.text
        for token, name, status in ((alice, "private", 200), (bob, "private", 403), (bob, "open", 200)):
            response = await client.get("/request/retrieve", params={"item_name": name}, headers=bearer(token))
            assert response.status_code == status, (name, response.text)
        events = (await client.get("/request/query_item_history", params={"uid": private})).json()
        assert [event["actor"] for event in events if event["event"] == "retrieved"] == ["token:alice"]
        assert open_uid
