from typing import Any

from tests.conftest import Registry, assert_error


def _entries(registry: Registry, count: int, prefix: str = "bulk") -> list[dict[str, Any]]:
    entries = []
    for index in range(count):
        registry.payload(f"{prefix}/{index}.dat", f"payload {index}".encode())
        entries.append({"item_name": f"{prefix}-{index}", "uri": f"{prefix}/{index}.dat", "storage_name": "disk"})
    return entries


async def _count(registry: Registry) -> int:
    return len((await registry.client.get("/request/query_data_item")).json())


async def test_bulk_registration_returns_uids_in_order(registry: Registry) -> None:
    entries = _entries(registry, 25)
    entries[3]["metadata"] = {"kind": "calibration"}
    entries[4]["uid_expiration"] = "2031-05-01T00:00:00"
    response = await registry.client.post("/ingest/register_data_items", json=entries)
    assert response.status_code == 200, response.text
    uids = response.json()
    assert len(uids) == 25 and len(set(uids)) == 25
    items = [await registry.item(uid) for uid in uids[:5]]
    assert [item["item_name"] for item in items] == [f"bulk-{index}" for index in range(5)]
    assert all(item["item_state"] == "READY" and item["item_size"] for item in items)
    assert items[3]["metadata"] == {"kind": "calibration", "uid": uids[3], "item_name": "bulk-3"}
    assert items[3]["item_mime_type"] == "application/octet-stream" and items[3]["payload_modified"]
    assert items[4]["uid_expiration"] == "2031-05-01T00:00:00+00:00"
    assert items[0]["uid_expiration"] > items[0]["uid_creation"], "the default expiry applies to the others"


async def test_one_bad_entry_registers_nothing(registry: Registry) -> None:
    entries = _entries(registry, 5)
    entries[2]["uri"] = "bulk/missing.dat"
    response = await registry.client.post("/ingest/register_data_items", json=entries)
    assert_error(response, 422, "UnmetPreconditionForOperation", "items[2]", "missing.dat")
    assert await _count(registry) == 0


async def test_a_name_already_on_the_storage_fails_the_whole_batch(registry: Registry) -> None:
    entries = _entries(registry, 4)
    await registry.register("bulk-1", "bulk/1.dat")
    response = await registry.client.post("/ingest/register_data_items", json=entries)
    assert_error(response, 422, "ValueAlreadyInDB", "items[1]", "bulk-1")
    assert await _count(registry) == 1


async def test_duplicates_within_a_batch_are_refused(registry: Registry) -> None:
    entries = _entries(registry, 3)
    entries.append(dict(entries[0]))
    response = await registry.client.post("/ingest/register_data_items", json=entries)
    assert_error(response, 422, "ValueAlreadyInDB", "items[0]", "twice")
    assert await _count(registry) == 0


async def test_bad_bulk_bodies(registry: Registry) -> None:
    client = registry.client
    assert_error(await client.post("/ingest/register_data_items", json=[]), 422, "InvalidQueryParameters", "at least")
    assert_error(
        await client.post("/ingest/register_data_items", json={"item_name": "x"}), 422, "InvalidQueryParameters", "data"
    )
    assert_error(
        await client.post("/ingest/register_data_items", json=[{"item_name": "x", "uri": "x", "item_size": "big"}]),
        422,
        "InvalidQueryParameters",
        "items[0].item_size",
    )
    assert_error(
        await client.post("/ingest/register_data_items", json=[{"item_name": "x", "uri": "x", "colour": 1}]),
        422,
        "InvalidQueryParameters",
        "colour",
    )
    assert_error(
        await client.post("/ingest/register_data_items", json=[{"uri": "x"}]),
        422,
        "InvalidQueryParameters",
        "item_name",
    )
    assert_error(
        await client.post(
            "/ingest/register_data_items",
            json=[
                {"item_name": "x", "uri": "x", "storage_name": "disk", "do_storage_access_check": False},
                {"item_name": "y", "uri": "../y", "storage_name": "disk"},
            ],
        ),
        422,
        "InvalidQueryParameters",
        "items[1].uri",
    )
    assert await _count(registry) == 0


async def test_large_batches_bind_arrays_not_lists(registry: Registry) -> None:
    # 12,000 keys once overflowed PostgreSQL's expression stack when sent as an IN list.
    entries = [
        {"item_name": f"big-{index}", "uri": f"big/{index}", "storage_name": "disk", "do_storage_access_check": False}
        for index in range(12_000)
    ]
    response = await registry.client.post("/ingest/register_data_items", json=entries)
    assert response.status_code == 200, response.text
    assert len(response.json()) == 12_000
    response = await registry.client.post("/ingest/register_data_items", json=entries[::-1])
    assert_error(response, 422, "ValueAlreadyInDB", "is already registered")
