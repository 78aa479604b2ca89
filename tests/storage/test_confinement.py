"""Storages stay where the operator allows and never share bytes; no request can name a storage root as
a payload. Each case replays an attack from the security review: it must get a 4xx and leave no row,
file or object behind."""

import json
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dlm.app import create_app
from dlm.config import Settings
from dlm.storage.confinement import Confinement, normalise_endpoint
from tests.conftest import Registry, assert_error


def _posix(name: str, root: Path | str, **params: Any) -> dict[str, Any]:
    return {
        "storage_name": name,
        "storage_type": "filesystem",
        "storage_interface": "posix",
        "root_directory": str(root),
        "location_name": "site",
        **params,
    }


def _s3(name: str, root: str) -> dict[str, Any]:
    return {
        "storage_name": name,
        "storage_type": "objectstore",
        "storage_interface": "s3",
        "root_directory": root,
        "location_name": "site",
    }


async def _storage_names(client: AsyncTestClient) -> set[str]:
    return {row["storage_name"] for row in (await client.get("/storage/query_storage")).json()}


async def _refused_until_configured(
    client: AsyncTestClient, name: str, root: Path | str, location: str = "site"
) -> None:
    """A POSIX root outside DLM_STORAGE_ROOTS that exists here may be the same path on another host (SKA's
    directory watcher shares /dlm): the storage is made, but waits for a config, unusable. Nothing makes
    it a local storage there: not registering, not making it available, not a local config."""
    created = await client.post("/storage/init_storage", params=_posix(name, root, location_name=location))
    assert created.status_code == 200, created.text
    [row] = (await client.get("/storage/query_storage", params={"storage_name": name})).json()
    assert row["storage_available"] is False
    events = (await client.get("/storage/query_storage_events", params={"storage_name": name})).json()
    assert any("outside DLM_STORAGE_ROOTS" in (event.get("detail") or "") for event in events), events
    registered = await client.post(
        "/ingest/register_data_item", params={"item_name": "passwd", "uri": "passwd", "storage_name": name}
    )
    assert registered.status_code == 422 and "not available" in registered.text, registered.text
    available = await client.patch(
        "/storage/update_storage", params={"storage_name": name, "storage_available": "true"}
    )
    assert_error(available, 422, "InvalidQueryParameters", "root_directory", "DLM_STORAGE_ROOTS")
    local = await client.post("/storage/create_storage_config", params={"storage_name": name}, json={"type": "local"})
    assert_error(local, 422, "InvalidQueryParameters", "DLM_STORAGE_ROOTS")


async def test_a_storage_over_host_files_is_never_usable(registry: Registry) -> None:
    """The review copied /etc/passwd out through a storage rooted at /etc."""
    for root in ("/etc", "/root", "/usr/lib", "/"):
        await _refused_until_configured(registry.client, f"host{root.replace('/', '-')}", root)
    for root in ("/etc", "/"):
        with_config = await registry.client.post(
            "/storage/init_storage", params=_posix("configured", root), json={"type": "local"}
        )
        assert_error(with_config, 422, "InvalidQueryParameters", "root_directory")
    assert await _storage_names(registry.client) == {"disk", "host-etc", "host-root", "host-usr-lib", "host-"}


async def test_a_storage_over_dlms_own_database_is_refused(registry: Registry, settings: Settings) -> None:
    settings.pgdata_dir.mkdir(parents=True, exist_ok=True)
    for root in (settings.pgdata_dir, settings.pgdata_dir.parent):
        response = await registry.client.post("/storage/init_storage", params=_posix("db", root))
        assert_error(response, 422, "InvalidQueryParameters", "database directory")


async def test_two_storages_never_share_files(registry: Registry, tmp_path: Path) -> None:
    (registry.root / "inner").mkdir()
    link = tmp_path / "alias-of-store"
    link.symlink_to(registry.root)
    for name, root in (("same", registry.root), ("inner", registry.root / "inner"), ("alias", link)):
        response = await registry.client.post("/storage/init_storage", params=_posix(name, root))
        assert_error(response, 422, "UnmetPreconditionForOperation", "'disk'", "must not share")
    await registry.storage("deep", root=tmp_path / "a" / "b")
    outer = await registry.client.post("/storage/init_storage", params=_posix("outer", tmp_path / "a"))
    assert_error(outer, 422, "UnmetPreconditionForOperation", "'deep'", "must not share")
    sibling = tmp_path / "sibling"
    sibling.mkdir()
    assert (await registry.client.post("/storage/init_storage", params=_posix("sibling", sibling))).status_code == 200


async def test_s3_storages_on_one_bucket_need_disjoint_prefixes(
    registry: Registry, s3_config: dict[str, Any], s3_bucket: str
) -> None:
    await registry.s3_storage("whole", f"{s3_bucket}/data", s3_config)
    for root in (f"{s3_bucket}/data", f"{s3_bucket}/data/raw", s3_bucket):
        response = await registry.client.post("/storage/init_storage", params=_s3("again", root), json=s3_config)
        assert_error(response, 422, "UnmetPreconditionForOperation", "overlaps storage 'whole'")
    await registry.s3_storage("beside", f"{s3_bucket}/other", s3_config)
    elsewhere = {**s3_config, "endpoint": "http://s3.elsewhere.example:9000"}
    await registry.s3_storage("same-name-other-endpoint", f"{s3_bucket}/data", elsewhere, check=False)


async def test_s3_endpoints_can_be_limited(settings: Settings, tmp_path: Path, s3_config: dict[str, Any]) -> None:
    limited = msgspec.structs.replace(settings, s3_endpoints=s3_config["endpoint"] + "/")
    async with AsyncTestClient(create_app(limited)) as client:
        registry = Registry(client, tmp_path / "store")
        await registry.storage()
        await registry.s3_storage("ours", "bucket-a", s3_config, check=False)
        attacker = {**s3_config, "endpoint": "https://s3.attacker.example"}
        params = _s3("theirs", "loot")
        refused = await client.post("/storage/init_storage", params=params, json=attacker)
        assert_error(refused, 422, "InvalidQueryParameters", "config.endpoint", "DLM_S3_ENDPOINTS")
        aws = await client.post("/storage/init_storage", params=params, json={**s3_config, "endpoint": ""})
        assert_error(aws, 422, "InvalidQueryParameters", "'aws'")
        swapped = await client.post("/storage/create_storage_config", params={"storage_name": "ours"}, json=attacker)
        assert_error(swapped, 422, "InvalidQueryParameters", "config.endpoint")
        assert await _storage_names(client) == {"disk", "ours"}


def test_endpoints_compare_by_where_they_point() -> None:
    assert normalise_endpoint("HTTPS://S3.Example.org/") == normalise_endpoint("https://user:pw@s3.example.org:443")
    assert normalise_endpoint("http://s3.example.org") != normalise_endpoint("https://s3.example.org")
    assert normalise_endpoint("AWS") == "aws"


@pytest.mark.parametrize("uri", [".", "./", "./.", "dir/..", "", "/"])
async def test_no_uri_may_name_the_storage_root(registry: Registry, uri: str) -> None:
    """The review registered uri=. as a container and then deleted the whole storage root."""
    response = await registry.client.post(
        "/ingest/register_data_item",
        params={"item_name": "everything", "uri": uri, "storage_name": "disk", "item_type": "container"},
    )
    assert response.status_code == 422, response.text
    assert "uri" in response.json()["message"]


async def test_no_copy_may_land_on_a_storage_root(registry: Registry, tmp_path: Path) -> None:
    await registry.storage("second", root=tmp_path / "second")
    uid = await registry.register("one")
    for path in (".", "./", "x/.."):
        response = await registry.client.post(
            "/migration/copy_data_item", params={"uid": uid, "destination_name": "second", "path": path}
        )
        assert_error(response, 422, "InvalidQueryParameters", "path")
    assert (await registry.client.get("/migration/query_migrations")).json() == []


async def test_a_stored_root_uri_is_never_deleted(registry: Registry, engine: AsyncEngine, tmp_path: Path) -> None:
    """Rows an older DLM let in (uri '.' or a symlink to the root) cannot take the storage with them."""
    keep = registry.payload("precious.dat")
    uid = await registry.register("victim", "victim.dat", target_phase="GAS")
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE data_item SET uri = '.' WHERE uid = :uid"), {"uid": uid})
    response = await registry.client.post("/storage/delete_data_item_payload", params={"uid": uid, "force": "true"})
    assert_error(response, 422, "InvalidQueryParameters", "uri", "storage root")
    assert keep.exists() and (await registry.item(uid))["item_state"] == "READY"

    (registry.root / "to-root").symlink_to(registry.root)
    linked = await registry.register("link", "to-root", item_type="container", do_storage_access_check=False)
    response = await registry.client.post("/storage/delete_data_item_payload", params={"uid": linked, "force": "true"})
    assert_error(response, 422, "InvalidQueryParameters", "storage root")
    assert keep.exists()


async def test_a_symlink_out_of_the_root_is_not_a_payload(registry: Registry, tmp_path: Path) -> None:
    secret = tmp_path / "outside.txt"
    secret.write_text("not DLM's")
    (registry.root / "passwd").symlink_to(secret)
    response = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "passwd", "uri": "passwd", "storage_name": "disk"}
    )
    assert_error(response, 422, "InvalidQueryParameters", "outside the storage root")


async def test_seed_files_may_allow_roots(database_url: str, tmp_path: Path) -> None:
    from dlm.serve import prepare

    allowed = tmp_path / "site-data"
    listed = tmp_path / "listed"
    for path in (allowed, listed):
        path.mkdir()
    storages = tmp_path / "storages.json"
    storages.write_text(
        json.dumps(
            {
                "storage_roots": [str(allowed)],
                "storages": [
                    {
                        "storage_name": "seeded",
                        "location_name": "here",
                        "storage_type": "filesystem",
                        "storage_interface": "posix",
                        "root_directory": str(listed),
                    }
                ],
            }
        )
    )
    locations = tmp_path / "locations.json"
    locations.write_text(json.dumps([{"location_name": "here", "location_type": "local-dev"}]))
    settings = Settings(
        database_url=database_url,
        data_dir=str(tmp_path / "data"),
        storage_config=str(storages),
        location_config=str(locations),
        allowed_hosts="testserver.local",
        auth="none",
    )
    await prepare(settings)
    async with AsyncTestClient(create_app(settings)) as client:
        assert await _storage_names(client) == {"seeded"}
        (allowed / "a").mkdir()
        params = {**_posix("by-api", allowed / "a"), "location_name": "here"}
        assert (await client.post("/storage/init_storage", params=params)).status_code == 200
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        await _refused_until_configured(client, "no", elsewhere, location="here")


def test_confinement_resolves_symlinks_before_comparing(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "escape").symlink_to("/etc")
    confinement = Confinement(posix_roots=(allowed.resolve(),))
    assert confinement.check_posix_root(str(allowed / "inside")) == (allowed / "inside").resolve()
    with pytest.raises(Exception, match="outside the directories"):
        confinement.check_posix_root(str(allowed / "escape"))
    assert os.path.realpath(allowed / "escape") == "/etc"


async def test_a_storage_made_available_later_is_checked_for_overlap_then(registry: Registry, tmp_path: Path) -> None:
    later = tmp_path / "later"
    # Its root does not exist yet: DLM waits for it (or a config), unavailable, checking nothing so far.
    waiting = await registry.client.post("/storage/init_storage", params=_posix("later", later))
    assert waiting.status_code == 200, waiting.text
    assert (await registry.client.get("/storage/query_storage", params={"storage_name": "later"})).json()[0][
        "storage_available"
    ] is False
    later.symlink_to(registry.root)  # the root appears: as another storage's
    made = await registry.client.patch(
        "/storage/update_storage", params={"storage_name": "later", "storage_available": "true"}
    )
    assert_error(made, 422, "UnmetPreconditionForOperation", "overlaps storage 'disk'")
    later.unlink()
    later.mkdir()
    made = await registry.client.patch(
        "/storage/update_storage", params={"storage_name": "later", "storage_available": "true"}
    )
    assert made.status_code == 200 and made.json()["storage_available"] is True, made.text


async def test_a_root_re_pointed_at_another_storage_is_refused_when_opened(registry: Registry, tmp_path: Path) -> None:
    own = tmp_path / "own"
    own.mkdir()
    link = tmp_path / "linked-root"
    link.symlink_to(own)
    await registry.storage("linked", root=link)
    registry.payload("first.dat", root=own)
    first = await registry.register("first", "first.dat", storage="linked")
    registry.payload("theirs.dat")  # on 'disk'
    link.unlink()
    link.symlink_to(registry.root)  # re-pointed at 'disk''s root after the storage was made
    response = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "theirs", "uri": "theirs.dat", "storage_name": "linked"}
    )
    assert_error(
        response, 422, "UnmetPreconditionForOperation", "'linked' cannot be reached", "overlaps storage 'disk'"
    )
    deleted = await registry.client.post("/storage/delete_data_item_payload", params={"uid": first, "force": "true"})
    assert deleted.status_code == 422, deleted.text
    assert (registry.root / "theirs.dat").exists(), "nothing of 'disk''s was touched"
