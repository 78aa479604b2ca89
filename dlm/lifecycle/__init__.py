"""The lifecycle engines: each a single pass (``run_once``) that reports what it did, run on an
interval by ``EngineLoops`` inside the server, or once by `dlm worker <engine> --once`."""

import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession


async def claim_item(session: AsyncSession, namespace: int, oid: uuid.UUID) -> bool:
    """Take the item for this engine until the transaction ends; False when another process has it.
    Never waits, so engines in several processes share the work instead of queueing on each other."""
    return bool(await session.scalar(select(func.pg_try_advisory_xact_lock(namespace, func.hashtext(str(oid))))))
