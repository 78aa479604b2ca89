"""The operator page as served: its assets come from DLM alone, under a strict Content-Security-Policy,
and its overview reports real work, limited to what the caller's role may see."""

import asyncio
import re
from pathlib import Path
from unittest.mock import ANY

import msgspec
from litestar.testing import AsyncTestClient

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
