"""SKA-DLM's schema `dlm`, as other systems write into it: SKA's ODA trigger (ska-data-lifecycle's
setup/DB/create-eb-data-item-trigger.sql) inserts a container item into dlm.data_item for each
execution block. Applied to DLM's database unchanged, it makes items DLM serves."""

import os
from pathlib import Path

import asyncpg
from litestar.testing import AsyncTestClient

from dlm.app import create_app
from dlm.config import Settings
from tests.conftest import Registry, _asyncpg_dsn

TRIGGER_FILE = Path("ska-data-lifecycle/setup/DB/create-eb-data-item-trigger.sql")
# SKA's file where this machine has SKA's sources (not copied here: run, as it is).
PLACES = [
    Path(os.environ.get("DLM_SKA_REFERENCE", "/nonexistent")),
    Path(__file__).parents[3] / "shared" / "reference",
    Path("/work/shared/reference"),
]
# Where they are not: a trigger that inserts what SKA's does (its one statement is the interface).
STAND_IN = """
CREATE OR REPLACE FUNCTION fn_insert_eb_data_item() RETURNS trigger AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM dlm.data_item WHERE item_name = NEW.data ->> 'eb_id') THEN
    INSERT INTO dlm.data_item (item_name, item_type, uri, uid_phase, oid_phase)
    VALUES (NEW.data ->> 'eb_id', 'container', NEW.data ->> 'eb_id', 'SOLID', 'SOLID');
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER trg_insert_eb_data_item AFTER INSERT ON execution.execution_blocks
FOR EACH ROW EXECUTE FUNCTION fn_insert_eb_data_item();
"""


def _skas_trigger() -> str:
    for place in PLACES:
        if (place / TRIGGER_FILE).is_file():
            return (place / TRIGGER_FILE).read_text()
    print(f"SKA's {TRIGGER_FILE} is not on this machine: its one INSERT stands in for it")
    return STAND_IN


async def test_skas_oda_trigger_makes_items_dlm_serves(database_url: str, settings: Settings, tmp_path: Path) -> None:
    connection = await asyncpg.connect(**_asyncpg_dsn(database_url))
    try:
        await connection.execute(
            "CREATE SCHEMA execution; CREATE TABLE execution.execution_blocks (eb_id text, data jsonb)"
        )
        await connection.execute(_skas_trigger())
        await connection.execute(
            "INSERT INTO execution.execution_blocks (eb_id, data) VALUES ('eb-x', '{\"eb_id\": \"eb-m001-20261204-00001\"}')"
        )
        database_user = await connection.fetchval("SELECT session_user")
    finally:
        await connection.close()

    async with AsyncTestClient(create_app(settings)) as client:
        found = await client.get("/request/query_data_item", params={"item_name": "eb-m001-20261204-00001"})
        assert found.status_code == 200, found.text
        [item] = found.json()
        assert (item["item_type"], item["item_state"], item["uri"]) == (
            "container",
            "INITIALISED",
            "eb-m001-20261204-00001",
        )
        assert item["uid"] == item["oid"] and item["item_owner"] == "SKA" and item["target_phase"] == "SOLID"
        # Its phases are the ones DLM gives an item with no storage yet, not the SOLID the trigger wrote.
        assert (item["uid_phase"], item["oid_phase"]) == ("GAS", "GAS")
        [created] = (await client.get("/request/query_item_history", params={"uid": item["uid"]})).json()
        assert created["event"] == "created" and created["actor"] == database_user
        # And DLM carries on with it as with its own: on a storage, with its payload, it becomes READY.
        registry = Registry(client, tmp_path / "store")
        storage_id = await registry.storage(phase="SOLID")
        (tmp_path / "store" / "eb-m001-20261204-00001").mkdir()
        placed = await client.patch(
            "/request/set_uri",
            params={"uid": item["uid"], "uri": "eb-m001-20261204-00001", "storage_id": storage_id},
        )
        assert placed.status_code == 200, placed.text
        ready = await client.patch("/request/set_state", params={"uid": item["uid"], "state": "READY"})
        assert ready.status_code == 200, ready.text
        assert (ready.json()["uid_phase"], ready.json()["oid_phase"]) == ("SOLID", "SOLID")


async def test_skas_types_and_column_names_write_into_dlms_tables(database_url: str) -> None:
    """What SKA's SQLAlchemy models write (its ska_dlm.dlm_db.models): values cast to its types in schema
    dlm, location_facility's key as ``id``, a phase change's ``requested_phase``, item_type as text."""
    connection = await asyncpg.connect(**_asyncpg_dsn(database_url))
    try:
        await connection.execute("INSERT INTO dlm.location_facility (id) VALUES ('Test Facility')")
        location = await connection.fetchval(
            "INSERT INTO dlm.location (location_name, location_type, location_country, location_facility) "
            "VALUES ('perth', 'local-dev'::dlm.location_type, 'AU'::dlm.location_country, 'Test Facility') "
            "RETURNING location_id"
        )
        assert (
            await connection.fetchval(
                "SELECT facility_name FROM public.location_facility JOIN public.location "
                "ON location_facility = facility_name WHERE location_id = $1",
                location,
            )
            == "Test Facility"
        )
        item = await connection.fetchrow(
            "INSERT INTO dlm.data_item (item_name, item_type, item_mime_type) "
            "VALUES ('eb-1', 'container'::varchar, 'application/fits'::dlm.mime_type) RETURNING uid, item_type"
        )
        assert item["item_type"] == "container"
        await connection.execute(
            "INSERT INTO dlm.phase_change (oid, requested_phase) VALUES ($1, 'SOLID'::dlm.phase_type)", item["uid"]
        )
        assert await connection.fetchval("SELECT final_phase FROM public.phase_change WHERE oid = $1", item["uid"]) == (
            "SOLID"
        )
        # A value DLM's type does not have is refused, naming it, not stored.
        try:
            await connection.execute("SELECT 'blake2b'::dlm.checksum_method")
        except asyncpg.InvalidTextRepresentationError as exc:
            assert "blake2b" in str(exc)
        else:
            raise AssertionError("an unknown checksum method was accepted")
    finally:
        await connection.close()
