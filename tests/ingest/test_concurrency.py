import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Registry


async def test_racing_registrations_of_one_name_have_one_winner(registry: Registry, engine: AsyncEngine) -> None:
    registry.payload("race.dat")
    params = {"item_name": "race", "uri": "race.dat", "storage_name": "disk"}
    responses = await asyncio.gather(
        *(registry.client.post("/ingest/register_data_item", params=params) for _ in range(8))
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] + [422] * 7, [response.text for response in responses]
    for response in responses:
        if response.status_code == 422:
            assert response.json()["exec"] == "ValueAlreadyInDB"
    winner = next(response.json() for response in responses if response.status_code == 200)
    async with engine.connect() as connection:
        items = (await connection.execute(text("SELECT uid FROM data_item"))).scalars().all()
        event_uids = (await connection.execute(text("SELECT DISTINCT uid FROM data_item_event"))).scalars().all()
    assert [str(uid) for uid in items] == [winner]
    assert [str(uid) for uid in event_uids] == [winner], "losers leave no trace behind"


async def test_racing_bulk_and_single_registrations(registry: Registry, engine: AsyncEngine) -> None:
    entries = []
    for index in range(50):
        registry.payload(f"r/{index}")
        entries.append({"item_name": f"r{index}", "uri": f"r/{index}", "storage_name": "disk"})
    single = {"item_name": "r49", "uri": "r/49", "storage_name": "disk"}
    bulk, one = await asyncio.gather(
        registry.client.post("/ingest/register_data_items", json=entries),
        registry.client.post("/ingest/register_data_item", params=single),
    )
    assert sorted([bulk.status_code, one.status_code]) == [200, 422]
    async with engine.connect() as connection:
        count = await connection.scalar(text("SELECT count(*) FROM data_item"))
    assert count == (50 if bulk.status_code == 200 else 1)
