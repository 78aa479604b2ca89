"""The lifecycle engines: each a single pass (``run_once``) that reports what it did, run on an
interval by ``EngineLoops`` inside the server, or once by `dlm worker <engine> --once`."""

import uuid
from typing import Any

from sqlalchemy import case, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.enums import Phase


def phase_weight(column: Any) -> Any:
    """A phase column as its weight (SPEC §1), for sums and comparisons in SQL."""
    return case({phase: phase.weight for phase in Phase}, value=column)


async def claim_item(session: AsyncSession, namespace: int, oid: uuid.UUID) -> bool:
    """Take the item for this engine until the transaction ends; False when another process has it.
    Never waits, so engines in several processes share the work instead of queueing on each other."""
    return bool(await session.scalar(select(func.pg_try_advisory_xact_lock(namespace, func.hashtext(str(oid))))))


async def claim_items(session: AsyncSession, namespace: int, oids: list[uuid.UUID]) -> set[uuid.UUID]:
    """``claim_item`` for many items in one round trip; returns those this transaction now holds."""
    if not oids:
        return set()
    claimed = await session.execute(
        text(
            "SELECT oid FROM unnest(CAST(:oids AS uuid[])) AS oid "
            "WHERE pg_try_advisory_xact_lock(:namespace, hashtext(oid::text))"
        ),
        {"oids": oids, "namespace": namespace},
    )
    return {row.oid for row in claimed}
