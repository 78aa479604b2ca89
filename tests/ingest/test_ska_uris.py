"""URIs as SKA writes them: a leading "/" means "from the storage root". The uri is stored as given,
every escape check still applies, and "/x" and "x" are one payload."""

from pathlib import Path

from tests.conftest import Registry, assert_error
from tests.migration.conftest import copy, wait_for


async def test_a_uri_from_the_storage_root_registers_the_payload_under_it(registry: Registry) -> None:
    registry.payload("dlm/obs/vis.dat", b"vis")
    response = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "vis", "uri": "/dlm/obs/vis.dat", "storage_name": "disk"}
    )
    assert response.status_code == 200, response.text
    item = await registry.item(response.json())
    assert (item["uri"], item["item_size"]) == ("/dlm/obs/vis.dat", 3)
    same_payload = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "again", "uri": "dlm/obs/vis.dat", "storage_name": "disk"}
    )
    assert_error(same_payload, 422, "ValueAlreadyInDB", "already the payload of item 'vis'")
    escape = await registry.client.post(
        "/ingest/register_data_item",
        params={"item_name": "escape", "uri": "/dlm/../../x", "storage_name": "disk", "do_storage_access_check": False},
    )
    assert_error(escape, 422, "InvalidQueryParameters", "uri", "'..'")


async def test_a_copy_path_from_the_destination_root(registry: Registry, tmp_path: Path) -> None:
    await registry.storage("second", root=tmp_path / "second")
    uid = await registry.register("item", "item")
    queued = await copy(registry.client, uid=uid, destination_name="second", path="/archive/item")
    assert (await wait_for(registry.client, queued["migration_id"]))["status"] == "SUCCEEDED"
    assert (tmp_path / "second" / "archive" / "item").read_bytes() == (registry.root / "item").read_bytes()
    assert (await registry.item(queued["uid"]))["uri"] == "/archive/item"
