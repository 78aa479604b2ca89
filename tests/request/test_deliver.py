"""Delivery requests: a selection of items shipped to an S3 bucket or a directory, packaged as asked,
tracked to a manifest; refused (and nothing recorded) for what the caller may not read or reach."""

import asyncio
import json
import tarfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aioboto3
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.app import create_app
from dlm.config import Settings
from dlm.db.models import Delivery
from dlm.enums import Role
from dlm.storage.configs import Keyring
from tests.auth.conftest import bearer, make_token
from tests.conftest import Registry, assert_error, free_port


async def finished(client: AsyncTestClient, delivery_id: int, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get("/request/get_delivery", params={"delivery_id": delivery_id})
        assert response.status_code == 200, response.text
        if response.json()["status"] in ("SUCCEEDED", "FAILED"):
            return response.json()
        assert time.monotonic() < deadline, response.json()
        await asyncio.sleep(0.1)


async def objects(config: dict[str, Any], bucket: str) -> dict[str, bytes]:
    async with aioboto3.Session().client(
        "s3",
        endpoint_url=config["endpoint"],
        aws_access_key_id=config["access_key_id"],
        aws_secret_access_key=config["secret_access_key"],
        region_name="us-east-1",
    ) as s3:
        listed = await s3.list_objects_v2(Bucket=bucket)
        found = {}
        for entry in listed.get("Contents", []):
            body = await s3.get_object(Bucket=bucket, Key=entry["Key"])
            found[entry["Key"]] = await body["Body"].read()
        return found


async def setup_items(registry: Registry) -> None:
    registry.payload("obs-1.dat", b"one")
    registry.payload("box/a", b"alpha")
    registry.payload("box/sub/b", b"beta")
    await registry.register("obs-1", "obs-1.dat")
    await registry.register("box", "box", item_type="container")


SECRET_KEY = "Zt0i3SQwJf8e2o0o3u0qH0cF1m0b7Zq2P7n1t5dYc1A="
# The tests' S3 server (moto) listens on loopback, which a delivery's endpoint may reach only when listed.
MOTO = "127.0.0.1"


async def test_items_are_shipped_to_a_bucket_with_a_manifest(
    settings: Settings,
    storage_root: Path,
    s3_config: dict[str, Any],
    s3_bucket: str,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    sealing = msgspec.structs.replace(
        settings, secret_key=SECRET_KEY, deliveries_interval_seconds=0.2, outbound_allow=MOTO
    )
    async with AsyncTestClient(create_app(sealing)) as client:
        registry = Registry(client, storage_root)
        await registry.storage()
        await _ship_to_bucket(registry, s3_config, s3_bucket)
    async with sessionmaker() as session:
        [stored] = list(await session.scalars(select(Delivery.destination)))
    assert "dlm_sealed" in stored, "kept sealed"
    assert s3_config["secret_access_key"] not in json.dumps(Keyring.from_text(SECRET_KEY).open(stored)), (
        "and once delivered, without the credentials"
    )


async def _ship_to_bucket(registry: Registry, s3_config: dict[str, Any], s3_bucket: str) -> None:
    await setup_items(registry)
    silent = {"endpoint": f"http://127.0.0.1:{free_port()}", "access_key_id": "a", "secret_access_key": "b"}
    unreachable = await registry.client.post(
        "/request/deliver", json={"items": ["obs-1"], "destination": {"s3": {"bucket": "b", **silent}}}
    )
    assert_error(unreachable, 422, "UnmetPreconditionForOperation", "cannot be reached")
    target = {key: s3_config[key] for key in ("endpoint", "access_key_id", "secret_access_key", "region")}
    response = await registry.client.post(
        "/request/deliver",
        json={"items": ["obs-1", "box"], "destination": {"s3": {"bucket": s3_bucket, "prefix": "for-alice", **target}}},
    )
    assert response.status_code == 200, response.text
    queued = response.json()
    assert (queued["items"], queued["bytes_total"]) == (2, 3)
    done = await finished(registry.client, queued["delivery_id"])
    assert done["status"] == "SUCCEEDED", done
    shipped = await objects(s3_config, s3_bucket)
    manifest_key = f"for-alice/manifest-{queued['delivery_id']}.json"
    assert {key: value for key, value in shipped.items() if key != manifest_key} == {
        "for-alice/obs-1": b"one",
        "for-alice/box/a": b"alpha",
        "for-alice/box/sub/b": b"beta",
    }
    listing = json.loads(shipped[manifest_key])
    assert [entry["item_name"] for entry in listing["items"]] == ["obs-1", "box"]
    assert done["manifest"][0]["checksum"]["method"] == "crc32c"
    shown = done["destination"]["s3"]
    assert shown["bucket"] == s3_bucket and shown["secret_access_key"] == "***"
    assert s3_config["secret_access_key"] not in json.dumps(done)


async def test_packaging_as_tar_files_in_a_directory(registry: Registry, tmp_path: Path) -> None:
    await setup_items(registry)
    for packaging in ("tar-per-container", "tar"):
        out = tmp_path / packaging
        out.mkdir()
        response = await registry.client.post(
            "/request/deliver",
            json={"params": "item_name=in.(obs-1,box)", "destination": {"posix": str(out)}, "packaging": packaging},
        )
        assert response.status_code == 200, response.text
        delivery_id = response.json()["delivery_id"]
        assert (await finished(registry.client, delivery_id))["status"] == "SUCCEEDED"
        tar_path = out / ("box.tar" if packaging == "tar-per-container" else f"delivery-{delivery_id}.tar")
        with tarfile.open(tar_path) as tar:
            names = sorted(member.name for member in tar.getmembers())
        if packaging == "tar-per-container":
            assert names == ["box/a", "box/sub/b"] and (out / "obs-1").read_bytes() == b"one"
        else:
            assert names == ["box/a", "box/sub/b", "obs-1"]
        assert (out / f"manifest-{delivery_id}.json").exists()


async def test_bad_deliveries_are_refused_and_record_nothing(
    registry: Registry, tmp_path: Path, s3_config: dict[str, Any]
) -> None:
    await setup_items(registry)
    client = registry.client

    async def refused(body: dict[str, Any], status: int, name: str, *fragments: str) -> None:
        assert_error(await client.post("/request/deliver", json=body), status, name, *fragments)

    inside = {"posix": str(tmp_path)}
    await refused({"items": ["nope"], "destination": inside}, 404, "NotFound", "nope")
    await refused({"items": ["obs-1"], "params": "x", "destination": inside}, 422, "InvalidQueryParameters", "not both")
    await refused(
        {"items": ["obs-1"], "destination": {"posix": "/etc"}}, 422, "InvalidQueryParameters", "DLM_STORAGE_ROOTS"
    )
    await refused({"items": ["obs-1"], "destination": {}}, 422, "InvalidQueryParameters", "body.destination")
    await refused(
        {"items": ["obs-1"], "destination": inside, "packaging": "zip"}, 422, "InvalidQueryParameters", "packaging"
    )
    target = {key: s3_config[key] for key in ("endpoint", "access_key_id", "secret_access_key")}
    await refused(
        {"items": ["obs-1"], "destination": {"s3": {"bucket": "b", **target}}},
        422,
        "UnmetPreconditionForOperation",
        "DLM_SECRET_KEY",
    )
    await refused(
        {"items": ["obs-1"], "destination": {"posix": str(tmp_path / "absent")}},
        422,
        "UnmetPreconditionForOperation",
        "not a directory",
    )
    assert (await client.get("/request/get_delivery", params={"delivery_id": 1})).status_code == 404


async def test_a_reader_ships_only_what_it_may_read_and_only_to_its_own_bucket(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    storage_root: Path,
    s3_config: dict[str, Any],
    s3_bucket: str,
) -> None:
    closed = msgspec.structs.replace(settings, auth="required", secret_key=SECRET_KEY, outbound_allow=MOTO)
    admin = await make_token(sessionmaker, "ops", Role.ADMIN)
    alice = await make_token(sessionmaker, "alice", Role.READER)
    target = {key: s3_config[key] for key in ("endpoint", "access_key_id", "secret_access_key")}
    async with AsyncTestClient(create_app(closed)) as client:
        client.headers.update(bearer(admin))
        registry = Registry(client, storage_root)
        await registry.storage()
        await registry.register("public")
        private = await registry.register("private")
        oid = (await registry.item(private))["oid"]
        await client.patch("/request/set_acl", params={"oid": oid, "acl": '{"read": ["ops"]}'})
        as_alice = bearer(alice)
        to_bucket = {"s3": {"bucket": s3_bucket, **target}}
        forbidden = await client.post(
            "/request/deliver", json={"items": ["public", "private"], "destination": to_bucket}, headers=as_alice
        )
        assert_error(forbidden, 403, "Forbidden", "private")
        to_disk = await client.post(
            "/request/deliver",
            json={"items": ["public"], "destination": {"posix": str(storage_root)}},
            headers=as_alice,
        )
        assert_error(to_disk, 403, "Forbidden", "operator")
        allowed = await client.post(
            "/request/deliver", json={"items": ["public"], "destination": to_bucket}, headers=as_alice
        )
        assert allowed.status_code == 200, allowed.text
        assert allowed.json()["delivery_id"] == 1, "the refused ones left no row"
        theirs = await client.get("/request/get_delivery", params={"delivery_id": 1}, headers=as_alice)
        assert theirs.status_code == 200
        assert_error(
            await client.get("/request/get_delivery", params={"delivery_id": 1}, headers=bearer(alice + "x")),
            401,
            "Unauthorized",
        )


@pytest.mark.parametrize(
    ("endpoint", "fragment"),
    [
        ("http://127.0.0.1:{port}", "unreachable"),  # the S3 server beside DLM: loopback
        ("http://localhost:{port}", "unreachable"),
        ("http://169.254.169.254", "unreachable"),  # the cloud metadata service: link-local
        ("http://10.1.2.3:5432", "unreachable"),  # a private network's PostgreSQL
        ("http://[::1]:{port}", "unreachable"),
        ("http://[::ffff:127.0.0.1]:{port}", "unreachable"),
        ("http://127.0.0.1:abc", "not a URL"),
        ("http://127.0.0.1:99999", "not a URL"),
        ("http://127.0.0.1:-1", "not a URL"),
        ("http://[::1", "not a URL"),
        ("http://127.0.0.1:0", "port 0"),
        ("ftp://127.0.0.1/", "http://"),
    ],
)
async def test_a_delivery_endpoint_must_be_public_unless_allowed(
    settings: Settings, storage_root: Path, s3_config: dict[str, Any], s3_bucket: str, endpoint: str, fragment: str
) -> None:
    port = urlsplit(s3_config["endpoint"]).port
    target = {"endpoint": endpoint.format(port=port), "access_key_id": "a", "secret_access_key": "b"}
    sealing = msgspec.structs.replace(settings, secret_key=SECRET_KEY)
    async with AsyncTestClient(create_app(sealing)) as client:
        registry = Registry(client, storage_root)
        await registry.storage()
        await setup_items(registry)
        refused = await client.post(
            "/request/deliver", json={"items": ["obs-1"], "destination": {"s3": {"bucket": s3_bucket, **target}}}
        )
        assert_error(refused, 422, "InvalidQueryParameters", "body.destination.s3.endpoint", fragment)
        assert "<" not in refused.json()["message"], "nothing the endpoint said is quoted back"
        assert (await client.get("/request/get_delivery", params={"delivery_id": 1})).status_code == 404


async def test_a_listed_private_endpoint_is_reached_at_the_address_checked(
    settings: Settings, storage_root: Path, s3_config: dict[str, Any], s3_bucket: str
) -> None:
    port = urlsplit(s3_config["endpoint"]).port
    allowed = msgspec.structs.replace(
        settings, secret_key=SECRET_KEY, outbound_allow=f"127.0.0.0/8:{port}", deliveries_interval_seconds=0.2
    )
    target = {key: s3_config[key] for key in ("access_key_id", "secret_access_key")}
    async with AsyncTestClient(create_app(allowed)) as client:
        registry = Registry(client, storage_root)
        await registry.storage()
        await setup_items(registry)
        other_port = await client.post(
            "/request/deliver",
            json={
                "items": ["obs-1"],
                "destination": {"s3": {"bucket": s3_bucket, "endpoint": "http://127.0.0.1:5432", **target}},
            },
        )
        assert_error(other_port, 422, "InvalidQueryParameters", "unreachable"), "the listing names the port"
        queued = await client.post(
            "/request/deliver",
            json={
                "items": ["obs-1"],
                "destination": {"s3": {"bucket": s3_bucket, "endpoint": f"http://127.0.0.1:{port}", **target}},
            },
        )
        assert queued.status_code == 200, queued.text
        assert (await finished(client, queued.json()["delivery_id"]))["status"] == "SUCCEEDED"
