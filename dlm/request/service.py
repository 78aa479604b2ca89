"""The request manager's questions: which items exist, where, in which state, and what happened to them.
The busiest are statements, answered as JSON by PostgreSQL itself (``dlm.rows.json_rows``)."""

import datetime
from typing import Any

from sqlalchemy import Row, Select, and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.data_item import ITEMS, item_selector
from dlm.db.models import DataItem, DataItemEvent, Storage
from dlm.enums import ItemState
from dlm.errors import NotFound
from dlm.parsing import parse_uuid, shift
from dlm.request.filters import MAX_PAGE_SIZE, parse_params

DEFAULT_ORDER = ["uid_creation", "uid"]


def query_items(
    *,
    item_name: str = "",
    oid: str = "",
    uid: str = "",
    storage_id: str = "",
    params: str | None = None,
) -> Select[Any]:
    """Items matching ``params`` and the given criteria; at most 1000 per call (use offset). As in
    SKA-DLM, a uid names the rows, else an oid, else an item_name (one that is given but not used is
    still checked); storage_id and ``params`` narrow them further."""
    query = parse_params(params, ITEMS, DEFAULT_ORDER)
    conditions = list(query.conditions)
    if uid or oid or item_name:
        conditions.append(item_selector(item_name=item_name, oid=oid, uid=uid))
    if storage_id:
        conditions.append(ITEMS.c.storage_id == parse_uuid(storage_id, "storage_id"))
    return (
        select(*(query.columns or ITEMS.c))
        .where(and_(True, *conditions))
        .order_by(*query.order_by)
        .limit(query.limit)
        .offset(query.offset)
    )


async def item_exists(
    session: AsyncSession, *, item_name: str = "", oid: str = "", uid: str = "", ready: bool = False
) -> bool:
    statement = select(DataItem.uid).where(item_selector(item_name=item_name, oid=oid, uid=uid))
    if ready:
        statement = statement.where(DataItem.item_state == ItemState.READY)
    return await session.scalar(select(statement.exists())) or False


def query_expired(*, offset: datetime.timedelta | None = None, now: datetime.datetime | None = None) -> Select[Any]:
    """READY replicas whose uid_expiration has passed, as of ``now + offset`` (a positive offset looks
    ahead), as SKA-DLM answers: a replica still being written (INITIALISED) is not expired data."""
    moment = shift(now or datetime.datetime.now(datetime.UTC), offset or datetime.timedelta(), "offset")
    return (
        select(ITEMS)
        .where(ITEMS.c.uid_expiration < moment, ITEMS.c.item_state == ItemState.READY)
        .order_by(ITEMS.c.uid_expiration, ITEMS.c.uid)
        .limit(MAX_PAGE_SIZE)
    )


def query_deleted(*, uid: str = "") -> Select[Any]:
    statement = select(ITEMS).where(ITEMS.c.item_state == ItemState.DELETED)
    if uid:
        statement = statement.where(ITEMS.c.uid == parse_uuid(uid, "uid"))
    return statement.order_by(ITEMS.c.uid_deletion, ITEMS.c.uid).limit(MAX_PAGE_SIZE)


def query_new(*, check_date: datetime.datetime, uid: str = "") -> Select[Any]:
    """Replicas created after ``check_date`` (exclusive)."""
    statement = select(ITEMS).where(ITEMS.c.uid_creation > check_date)
    if uid:
        statement = statement.where(ITEMS.c.uid == parse_uuid(uid, "uid"))
    return statement.order_by(ITEMS.c.uid_creation, ITEMS.c.uid).limit(MAX_PAGE_SIZE)


async def query_item_storage(
    session: AsyncSession, *, item_name: str = "", oid: str = "", uid: str = ""
) -> list[Row[Any]]:
    """Where the READY replicas of an item are: one row per replica with its storage."""
    statement = (
        select(
            DataItem.uid,
            DataItem.oid,
            DataItem.item_name,
            DataItem.item_type,
            DataItem.uri,
            DataItem.uid_phase,
            DataItem.item_state,
            Storage.storage_id,
            Storage.storage_name,
            Storage.storage_type,
            Storage.storage_interface,
            Storage.root_directory,
            Storage.storage_phase,
        )
        .join(Storage, Storage.storage_id == DataItem.storage_id)
        .where(item_selector(item_name=item_name, oid=oid, uid=uid), DataItem.item_state == ItemState.READY)
        .order_by(DataItem.uid_creation, DataItem.uid)
        .limit(MAX_PAGE_SIZE)
    )
    return list((await session.execute(statement)).all())


async def item_history(
    session: AsyncSession,
    *,
    item_name: str = "",
    oid: str = "",
    uid: str = "",
    after_event_id: int = 0,
    limit: int = MAX_PAGE_SIZE,
) -> list[Row[Any]]:
    """The trace: every recorded change of the named replica (uid), item (oid) or name, oldest first."""
    if not await item_exists(session, item_name=item_name, oid=oid, uid=uid):
        raise NotFound(f"no item has {_named(item_name=item_name, oid=oid, uid=uid)}")
    if uid:
        selector = DataItemEvent.uid == parse_uuid(uid, "uid")
    elif oid:
        selector = DataItemEvent.oid == parse_uuid(oid, "oid")
    else:
        selector = DataItemEvent.oid.in_(select(DataItem.oid).where(item_selector(item_name=item_name)))
    statement = (
        select(DataItemEvent.__table__)
        .where(selector, DataItemEvent.event_id > after_event_id)
        .order_by(DataItemEvent.event_id)
        .limit(limit)
    )
    return list((await session.execute(statement)).all())


def _named(**identifiers: str) -> str:
    return " ".join(f"{key} {value!r}" for key, value in identifiers.items() if value)
