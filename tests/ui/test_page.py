"""The operator page as served: its assets come from DLM alone, under a strict Content-Security-Policy,
and its overview reports real work, limited to what the caller's role may see."""

import asyncio
import re
import uuid
from pathlib import Path
from unittest.mock import ANY

import msgspec
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from dlm.app import create_app
from dlm.config import Settings
from dlm.enums import Role
from dlm.ui.routes import assets
from tests.auth.conftest import bearer, make_token
from tests.conftest import Registry, assert_error
from tests.migration.conftest import copy, wait_for

# What a page may name that is not a request: the SVG namespace.
NOT_A_REQUEST = {"http://www.w3.org/2000/svg"}


def external_urls(text: str) -> set[str]:
    return set(re.findall(r"https?://[^\s\"'<>)`]+", text)) - NOT_A_REQUEST


async def test_the_page_and_its_assets_come_from_dlm_alone(client: AsyncTestClient) -> None:
    page = await client.get("/ui")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    for path, content in assets().items():
        if path.startswith("vendor/"):
            continue  # published libraries; the browser test shows they request nothing elsewhere
        assert external_urls(content.decode()) == set(), path
        served = await client.get(f"/ui/assets/{path}")
        assert served.status_code == 200 and served.content == content, path
    schema_page = await client.get("/schema")
    assert schema_page.status_code == 200
    assert schema_page.headers["content-security-policy"] == policy, "the API browser is a page like /ui"
    assert schema_page.headers["x-frame-options"] == "DENY"
    assert external_urls(schema_page.text) == set()
    for reference in re.findall(r'(?:src|href)="([^"]+)"', schema_page.text):
        assert (await client.get(reference)).status_code == 200, reference


async def test_only_the_shipped_assets_are_served(client: AsyncTestClient) -> None:
    for path in ("nothing.js", "../routes.py", "%2e%2e/routes.py", "vendor/README.md", "/etc/passwd"):
        assert_error(await client.get(f"/ui/assets/{path}"), 404, "NotFound")


async def test_the_overview_reports_real_work(registry: Registry, tmp_path: Path) -> None:
    await registry.storage("archive", phase="SOLID", root=tmp_path / "archive", storage_capacity=10_000)
    registry.payload("obs", b"x" * 1000)
    uid = await registry.register("obs", "obs")
    before = (await registry.client.get("/ui/overview")).json()["backlog"]
    assert before["below_target"] == {"count": 1, "more": False, "by_target_phase": {"SOLID": 1}, "oldest": ANY}
    assert before["below_target"]["oldest"] is not None and before["corrupted_replicas"] == 0
    assert before["replicas_expiring"] == {"count": 1, "more": False}, "uid_expiration: a day after registration"
    assert before["items_expiring"] == {"count": 0, "more": False}
    queued = await copy(registry.client, uid=uid, destination_name="archive")
    assert (await wait_for(registry.client, queued["migration_id"]))["status"] == "SUCCEEDED"

    response = await registry.client.get("/ui/overview")
    assert response.status_code == 200, response.text
    overview = response.json()
    storages = {storage["storage_name"]: storage for storage in overview["storages"]}
    assert storages["archive"]["used_bytes"] == 1000 and storages["archive"]["capacity_bytes"] == 10_000
    assert storages["archive"]["storage_phase"] == "SOLID" and storages["disk"]["storage_interface"] == "posix"
    # Replicas, by storage: the one item has one on each.
    by_storage = {(row["storage_id"], row["item_state"]): row["count"] for row in overview["replicas"]}
    assert by_storage == {(storages["disk"]["storage_id"], "READY"): 1, (storages["archive"]["storage_id"], "READY"): 1}
    backlog = overview["backlog"]
    assert backlog["below_target"]["count"] == 0 and backlog["failures"] == []
    assert overview["migrations"]["by_status"]["SUCCEEDED"] == 1 and overview["migrations"]["active"] == []
    hours = overview["copied_per_hour"]
    assert len(hours) == 24 and hours[-1]["bytes"] == 1000 and sum(hour["bytes"] for hour in hours) == 1000
    assert {event["event"] for event in overview["storage_events"]} == {"storage_created"}

    # Failed copies, grouped by where they went and why.
    for name in ("gone-1", "gone-2"):
        path = registry.payload(name)
        lost = await registry.register(name, name)
        path.unlink()
        failed = await copy(registry.client, uid=lost, destination_name="archive")
        assert (await wait_for(registry.client, failed["migration_id"]))["status"] == "FAILED"
    [failures] = (await registry.client.get("/ui/overview")).json()["backlog"]["failures"]
    assert failures["count"] == 2 and failures["destination_storage_id"] == storages["archive"]["storage_id"]
    assert failures["error"] == "PayloadMissing" and "no payload at 'gone-" in failures["example"]
    assert failures["last"] is not None


async def test_the_overview_shows_engine_passes_and_only_a_readers_own_copies(
    settings: Settings, sessionmaker, tmp_path: Path
) -> None:
    engines_on = msgspec.structs.replace(settings, expiry_interval_seconds=0.05, auth="required", migration_workers=0)
    async with AsyncTestClient(create_app(engines_on)) as client:
        operator = bearer(await make_token(sessionmaker, "olga", Role.OPERATOR))
        reader = bearer(await make_token(sessionmaker, "rita", Role.READER))
        admin = bearer(await make_token(sessionmaker, "ada", Role.ADMIN))
        client.headers.update(admin)
        registry = Registry(client, tmp_path / "store")
        await registry.storage()
        await registry.storage("archive", root=tmp_path / "archive")
        uid = await registry.register("obs", "obs")
        queued = await client.post(
            "/migration/copy_data_item", params={"uid": uid, "destination_name": "archive"}, headers=operator
        )
        assert queued.status_code == 200, queued.text
        await asyncio.sleep(0.3)

        seen_by_operator = (await client.get("/ui/overview", headers=operator)).json()
        seen_by_reader = (await client.get("/ui/overview", headers=reader)).json()
        assert [copy["migration_id"] for copy in seen_by_operator["migrations"]["active"]] == [
            queued.json()["migration_id"]
        ]
        assert seen_by_operator["migrations"]["oldest_due"] is not None
        assert seen_by_reader["migrations"]["active"] == [], "another's copy is not a reader's to see"
        assert seen_by_reader["migrations"]["by_status"]["PENDING"] == 1
        expiry = seen_by_operator["engines"]["expiry"]
        assert expiry["ok"] is True and expiry["summary"].startswith("deleted 0") and expiry["seconds"] >= 0
        client.headers.pop("Authorization")
        assert_error(await client.get("/ui/overview"), 401, "Unauthorized")
        assert (await client.get("/ui")).status_code == 200, "the page itself holds nothing; it asks for a token"


async def test_a_storage_page_shows_its_fill_over_time_replicas_and_copies(
    registry: Registry, tmp_path: Path, sessionmaker
) -> None:
    """The fill per day comes from DLM's own rows: what is held now, less what came since, plus what went."""
    await registry.storage("archive", phase="SOLID", root=tmp_path / "archive")
    old = await registry.register("old", registry.payload("old", b"o" * 300) and "old")
    gone = await registry.register("gone", registry.payload("gone", b"g" * 50) and "gone")
    await registry.register("new", registry.payload("new", b"n" * 20) and "new")
    async with sessionmaker() as session, session.begin():
        # "old" and "gone" were registered five days ago; "gone" was deleted two days ago.
        await session.execute(
            text("UPDATE data_item SET uid_creation = now() - interval '5 days' WHERE uid = ANY(:uids)"),
            {"uids": [uuid.UUID(old), uuid.UUID(gone)]},
        )
    deleted = await registry.client.post("/storage/delete_data_item_payload", params={"uid": gone, "force": True})
    assert deleted.status_code == 200, deleted.text
    async with sessionmaker() as session, session.begin():
        await session.execute(
            text("UPDATE data_item SET uid_deletion = now() - interval '2 days' WHERE uid = :uid"),
            {"uid": uuid.UUID(gone)},
        )
    queued = await copy(registry.client, uid=old, destination_name="archive")
    assert (await wait_for(registry.client, queued["migration_id"]))["status"] == "SUCCEEDED"

    response = await registry.client.get("/ui/storage", params={"storage_name": "disk"})
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["storage"]["storage_name"] == "disk" and page["storage"]["used_bytes"] == 320
    fill = [day["bytes"] for day in page["fill"]]
    assert len(fill) == 30
    assert fill[-1] == 320, "today: what is there now"
    assert fill[-2] == 300 and fill[-3] == 300, "before today's registration, after the deletion"
    assert fill[-4] == 350 and fill[-5] == 350, "while 'gone' was there"
    assert fill[-7] == 0, "before either"
    assert page["replicas"] == {"READY": 2, "DELETED": 1}
    assert page["copies_under_way"] == {"in": {"PENDING": 0, "RUNNING": 0}, "out": {"PENDING": 0, "RUNNING": 0}}
    [latest] = page["latest_copies"]
    assert latest["item_name"] == "old" and latest["status"] == "SUCCEEDED"
    assert {event["event"] for event in page["events"]} == {"storage_created"}
    archive = (await registry.client.get("/ui/storage", params={"storage_name": "archive"})).json()
    assert archive["fill"][-1]["bytes"] == 300 and archive["latest_copies"][0]["migration_id"] == latest["migration_id"]
    assert_error(await registry.client.get("/ui/storage", params={"storage_name": "nosuch"}), 404, "NotFound", "nosuch")
    # Copies carry their item's name wherever they are listed.
    [listed] = (await registry.client.get("/migration/query_migrations")).json()
    assert listed["item_name"] == "old"


async def test_deliveries_are_listed_newest_first_each_callers_own(
    settings: Settings, sessionmaker, tmp_path: Path
) -> None:
    closed = msgspec.structs.replace(settings, auth="required")
    async with AsyncTestClient(create_app(closed)) as client:
        admin = bearer(await make_token(sessionmaker, "ada", Role.ADMIN))
        reader = bearer(await make_token(sessionmaker, "rita", Role.READER))
        client.headers.update(admin)
        registry = Registry(client, tmp_path / "store")
        await registry.storage()
        await registry.register("obs-1", registry.payload("obs-1", b"abc") and "obs-1")
        out = tmp_path / "out"
        out.mkdir()
        made = []
        for _ in range(2):
            response = await client.post(
                "/request/deliver", json={"items": ["obs-1"], "destination": {"posix": str(out / str(len(made)))}}
            )
            assert response.status_code == 200, response.text
            made.append(response.json()["delivery_id"])
        listed = (await client.get("/request/query_deliveries")).json()
        assert [row["delivery_id"] for row in listed] == made[::-1]
        assert listed[0]["item_count"] == 1 and listed[0]["bytes_total"] == 3 and listed[0]["user"] == "token:ada"
        assert "manifest" not in listed[0] and "items" not in listed[0]
        paged = (await client.get("/request/query_deliveries", params={"limit": 1, "offset": 1})).json()
        assert [row["delivery_id"] for row in paged] == made[:1]
        assert (await client.get("/request/query_deliveries", headers=reader)).json() == [], "not the reader's"
        assert_error(
            await client.get("/request/query_deliveries", params={"status": "LOST"}),
            422,
            "InvalidQueryParameters",
            "status",
        )
