"""The queries DLM runs on its hot paths can be answered from an index: with sequential scans priced
out, the planner still finds a plan without one. (At 10 M rows the planner makes the same choice.)"""

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

UID = "00000000-0000-0000-0000-000000000001"
HOT_QUERIES = {
    "by name": "SELECT * FROM data_item WHERE item_name = 'x'",
    "by oid": f"SELECT * FROM data_item WHERE oid = '{UID}'",
    "by uid": f"SELECT * FROM data_item WHERE uid = '{UID}'",
    "replicas on a storage": f"SELECT * FROM data_item WHERE storage_id = '{UID}' AND item_state = 'READY'",
    "by state": "SELECT * FROM data_item WHERE item_state = 'CORRUPTED'",
    "expiry sweep": "SELECT uid FROM data_item WHERE uid_expiration < now() AND item_state <> 'DELETED'",
    "item expiry sweep": "SELECT uid FROM data_item WHERE oid_expiration < now() AND item_state <> 'DELETED'",
    "already registered": f"SELECT 1 FROM data_item WHERE item_name = 'x' AND storage_id = '{UID}' "
    "AND item_state <> 'DELETED'",
    "new items": "SELECT * FROM data_item WHERE uid_creation > now() - interval '1 day'",
    "children": f"SELECT * FROM data_item WHERE parents = '{UID}'",
    "history of a replica": f"SELECT * FROM data_item_event WHERE uid = '{UID}' ORDER BY event_id",
    "history of an item": f"SELECT * FROM data_item_event WHERE oid = '{UID}' ORDER BY event_id",
    "audit claim": "SELECT uid FROM data_item WHERE item_state = 'READY' AND storage_id IS NOT NULL "
    "AND (last_check IS NULL OR last_check <= now() - interval '1 day') ORDER BY last_check NULLS FIRST, uid LIMIT 1",
    "claimable migrations": "SELECT * FROM migration WHERE status IN ('PENDING', 'RUNNING') "
    "AND next_attempt_at <= now()",
}


@pytest.mark.parametrize("query", HOT_QUERIES.values(), ids=HOT_QUERIES.keys())
async def test_hot_queries_have_an_index(engine: AsyncEngine, query: str) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SET enable_seqscan = off"))
        plan = "\n".join((await connection.execute(text(f"EXPLAIN {query}"))).scalars())
    assert "Seq Scan" not in plan, plan


async def test_the_audit_claims_its_next_replica_without_sorting_the_catalogue(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SET enable_seqscan = off"))
        plan = "\n".join((await connection.execute(text(f"EXPLAIN {HOT_QUERIES['audit claim']}"))).scalars())
    assert "ix_data_item_audit_due" in plan and "Sort" not in plan, plan
