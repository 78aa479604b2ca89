"""Delivery requests: a selection of items shipped to an S3 bucket or a directory, packaged as asked,
tracked to a manifest; refused (and nothing recorded) for what the caller may not read or reach."""

import asyncio
import functools
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aioboto3
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from dlm.app import create_app
from dlm.config import Settings
from dlm.db.engine import create_sessionmaker
from dlm.db.models import Delivery
from dlm.enums import Role
from dlm.request import delivery
from dlm.storage.configs import Keyring
from dlm.storage.context import session_info
from dlm.transfer.copy import copy_payload
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
    (tmp_path / "a-file").write_text("not a directory\n")
    await refused(
        {"items": ["obs-1"], "destination": {"posix": str(tmp_path / "a-file" / "inbox")}},
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


def _worker_sessionmaker(engine: AsyncEngine, settings: Settings) -> async_sessionmaker[AsyncSession]:
    """A delivery worker's sessions, as `dlm worker` makes them (keys, confinement, outbound policy)."""
    return create_sessionmaker(engine, info=session_info(settings))


@pytest.fixture
def by_hand(settings: Settings) -> Settings:
    """No delivery worker in the app: the test ships deliveries itself (delivery.run_once)."""
    return msgspec.structs.replace(settings, deliveries_interval_seconds=0)


async def test_a_directory_resolved_when_asked_is_where_files_go_whatever_links_change(
    by_hand: Settings, storage_root: Path, tmp_path: Path, engine: AsyncEngine
) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    inbox, elsewhere = tmp_path / "inbox", tmp_path / "elsewhere"
    inbox.mkdir()
    elsewhere.mkdir()
    link = tmp_path / "outbox"
    link.symlink_to(inbox)
    async with AsyncTestClient(create_app(by_hand)) as client:
        registry = Registry(client, storage_root)
        await registry.storage()
        await setup_items(registry)
        ids = []
        for target in (outside, elsewhere):
            queued = await client.post(
                "/request/deliver", json={"items": ["obs-1"], "destination": {"posix": str(link / "x")}}
            )
            assert queued.status_code == 200, queued.text
            ids.append(queued.json()["delivery_id"])
            row = (await client.get("/request/get_delivery", params={"delivery_id": ids[-1]})).json()
            assert row["destination"] == {"posix": str(inbox / "x")}, "kept resolved"
            # Afterwards someone re-points a directory on the way: first out of the roots, then inside them.
            (inbox / "x").rmdir()
            (inbox / "x").symlink_to(target)
            report = await delivery.run_once(_worker_sessionmaker(engine, by_hand))
            assert report.failed == [ids[-1]]
            (inbox / "x").unlink()
            (inbox / "x").mkdir()
        for delivery_id, fragment in zip(ids, ("outside", "no longer the directory"), strict=True):
            row = (await client.get("/request/get_delivery", params={"delivery_id": delivery_id})).json()
            assert row["status"] == "FAILED" and fragment in row["last_error"], row
        assert list(outside.iterdir()) == [] and list(elsewhere.iterdir()) == [], "nothing went where the links led"


async def test_a_delivery_directory_is_created_but_never_inside_a_storage(
    by_hand: Settings, storage_root: Path, tmp_path: Path, engine: AsyncEngine
) -> None:
    async with AsyncTestClient(create_app(by_hand)) as client:
        registry = Registry(client, storage_root)
        await registry.storage()
        await setup_items(registry)
        for where in (storage_root / "sub", storage_root, tmp_path):
            refused = await client.post(
                "/request/deliver", json={"items": ["obs-1"], "destination": {"posix": str(where)}}
            )
            assert_error(
                refused, 422, "UnmetPreconditionForOperation", "body.destination.posix", "overlaps storage 'disk'"
            )
        fresh = tmp_path / "new" / "inbox"
        queued = await client.post("/request/deliver", json={"items": ["obs-1"], "destination": {"posix": str(fresh)}})
        assert queued.status_code == 200, queued.text
        await delivery.run_once(_worker_sessionmaker(engine, by_hand))
        assert (fresh / "obs-1").read_bytes() == b"one"


async def test_a_delivery_that_cannot_go_on_fails_for_good_and_can_be_cancelled(
    by_hand: Settings, storage_root: Path, tmp_path: Path, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = _worker_sessionmaker(engine, by_hand)
    out = tmp_path / "out"
    out.mkdir()
    async with AsyncTestClient(create_app(by_hand)) as client:
        registry = Registry(client, storage_root)
        await registry.storage()
        await setup_items(registry)

        async def deliver() -> int:
            queued = await client.post(
                "/request/deliver", json={"items": ["obs-1"], "destination": {"posix": str(out)}}
            )
            assert queued.status_code == 200, queued.text
            return queued.json()["delivery_id"]

        # A worker that died three times while shipping: the fourth finds it FAILED, not RUNNING for ever.
        stuck = await deliver()
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "UPDATE delivery SET status = 'RUNNING', attempts = 3, lease_owner = 'dead', "
                    "lease_expires = now() - interval '1 second' WHERE delivery_id = :id"
                ),
                {"id": stuck},
            )
        assert (await delivery.run_once(worker)).delivered == []
        row = (await client.get("/request/get_delivery", params={"delivery_id": stuck})).json()
        assert row["status"] == "FAILED" and "stopped while shipping it 3 times" in row["last_error"]

        # Cancelled while queued: never shipped. Cancelled again, or someone else's: refused.
        queued = await deliver()
        cancelled = await client.post("/request/cancel_delivery", params={"delivery_id": queued})
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED", cancelled.text
        assert "cancelled by anonymous" in cancelled.json()["last_error"]
        again = await client.post("/request/cancel_delivery", params={"delivery_id": queued})
        assert_error(again, 422, "UnmetPreconditionForOperation", "CANCELLED")
        assert_error(await client.post("/request/cancel_delivery", params={"delivery_id": 999}), 404, "NotFound")
        assert (await delivery.run_once(worker)).delivered == []
        assert list(out.iterdir()) == []

        # Cancelled while its bytes move: it stops at its next progress record and removes what it wrote;
        # those records also renew its lease while one large item is shipped.
        registry.payload("big.dat", os.urandom(64 * 1024 * 1024))
        await registry.register("big", "big.dat")
        monkeypatch.setattr(delivery, "RECORD_SECONDS", 0.0)
        # 16 MiB/s: four seconds of shipping, time enough to watch it and cancel it.
        monkeypatch.setattr(delivery, "copy_payload", functools.partial(copy_payload, max_bytes_per_second=2**24))
        queued = (
            await client.post("/request/deliver", json={"items": ["big"], "destination": {"posix": str(out)}})
        ).json()
        shipping = asyncio.create_task(delivery.run_once(worker))
        leases = set()
        while (
            row := (await client.get("/request/get_delivery", params={"delivery_id": queued["delivery_id"]})).json()
        )["bytes_done"] == 0:
            assert not shipping.done(), row
            await asyncio.sleep(0.01)
        leases.add(row["lease_expires"])
        while len(leases) < 2:
            await asyncio.sleep(0.01)  # the test client blocks this loop while it asks: let the worker run
            row = (await client.get("/request/get_delivery", params={"delivery_id": queued["delivery_id"]})).json()
            leases.add(row["lease_expires"])
        assert row["bytes_done"] < 64 * 1024 * 1024, "the lease was renewed in the middle of the item"
        await client.post("/request/cancel_delivery", params={"delivery_id": queued["delivery_id"]})
        report = await asyncio.wait_for(shipping, 30)
        assert report.delivered == [] and report.failed == []
        assert list(out.iterdir()) == [], "what it wrote is gone"
        row = (await client.get("/request/get_delivery", params={"delivery_id": queued["delivery_id"]})).json()
        assert row["status"] == "CANCELLED"


async def test_names_become_relative_paths_that_stay_inside_the_destination(
    registry: Registry, tmp_path: Path, engine: AsyncEngine
) -> None:
    registry.payload("box/a", b"alpha")
    registry.payload("old.dat", b"old")
    await registry.register("/abs/box", "box", item_type="container")
    legacy = await registry.register("legacy", "old.dat")
    async with engine.begin() as connection:  # a name DLM refuses now, registered by an older DLM
        await connection.execute(
            text("UPDATE data_item SET item_name = '../../../outside/pwn' WHERE uid = :uid"), {"uid": legacy}
        )
    for packaging in ("tar", "none"):
        out = tmp_path / packaging
        response = await registry.client.post(
            "/request/deliver",
            json={
                "items": ["/abs/box", "../../../outside/pwn"],
                "destination": {"posix": str(out)},
                "packaging": packaging,
            },
        )
        assert response.status_code == 200, response.text
        delivery_id = response.json()["delivery_id"]
        assert (await finished(registry.client, delivery_id))["status"] == "SUCCEEDED"
        if packaging == "tar":
            with tarfile.open(out / f"delivery-{delivery_id}.tar") as tar:
                assert sorted(member.name for member in tar.getmembers()) == ["abs/box/a", "outside/pwn"]
        else:
            assert (out / "abs" / "box" / "a").read_bytes() == b"alpha"
            assert (out / "outside" / "pwn").read_bytes() == b"old"
    assert not (tmp_path.parent / "outside").exists()
