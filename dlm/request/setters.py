"""The request manager's changes to items: SKA-DLM's set_* and update functions, each a thin layer over
``dlm.data_item.change_items`` so that every one of them obeys the same rules and leaves the same trace."""

import datetime
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.data_item import ItemChanges, change_items, changes_dict, convert_body, get_item, item_selector
from dlm.db.models import DataItem, PhaseChange
from dlm.enums import ItemState, Phase
from dlm.errors import InvalidQueryParameters, NotFound
from dlm.parsing import parse_json_object, parse_uuid, require_one


async def update_items(
    session: AsyncSession,
    *,
    item_name: str = "",
    oid: str = "",
    uid: str = "",
    changes: dict[str, Any] | None,
) -> list[Row[Any]]:
    """Change columns of the replicas named by uid, oid or item_name (all of them for an oid or a name)."""
    values = changes_dict(convert_body(changes, ItemChanges, "post_data"))
    if not values:
        raise InvalidQueryParameters("post_data: give at least one column to change")
    return await change_items(session, item_selector(item_name=item_name, oid=oid, uid=uid), values)


async def set_uri(session: AsyncSession, *, uid: str, uri: str, storage_id: str) -> Row[Any]:
    """Say where a replica's payload is: its storage and its path relative to the storage root."""
    changes = changes_dict(ItemChanges(uri=uri, storage_id=parse_uuid(storage_id, "storage_id")))
    return (await change_items(session, item_selector(uid=uid), changes))[0]


async def set_state(session: AsyncSession, *, uid: str, state: ItemState) -> Row[Any]:
    return (await change_items(session, item_selector(uid=uid), {"item_state": state}))[0]


async def set_metadata(session: AsyncSession, *, uid: str, metadata: dict[str, Any] | None) -> Row[Any]:
    return (await change_items(session, item_selector(uid=uid), {"metadata": metadata}))[0]


async def set_uid_expiration(session: AsyncSession, *, uid: str, expiration: datetime.datetime) -> Row[Any]:
    return (await change_items(session, item_selector(uid=uid), {"uid_expiration": expiration}))[0]


async def set_oid_expiration(session: AsyncSession, *, oid: str, expiration: datetime.datetime) -> list[Row[Any]]:
    if not oid:
        raise InvalidQueryParameters("oid: required")
    return await change_items(session, item_selector(oid=oid), {"oid_expiration": expiration})


async def set_owner_field(session: AsyncSession, *, oid: str, uid: str, column: str, value: Any) -> Row[Any]:
    """set_user / set_group / set_acl: one column of the replica (uid) or of all replicas of an item (oid)."""
    require_one({"oid": oid, "uid": uid})
    return (await change_items(session, item_selector(oid=oid, uid=uid), {column: value}))[0]


def parse_acl(acl: str) -> dict[str, Any]:
    return parse_json_object(acl, "acl")


async def set_phase(session: AsyncSession, *, uid: str, phase: Phase) -> Row[Any]:
    """Ask for an item to reach ``phase``: it becomes the target_phase of all its replicas, and a
    phase-change request is recorded for the lifecycle engines to act on."""
    item = await get_item(session, uid)
    session.add(PhaseChange(oid=item.oid, final_phase=phase))
    await change_items(session, DataItem.oid == item.oid, {"target_phase": phase})
    return (await session.execute(select(DataItem.__table__).where(DataItem.uid == item.uid))).one()


async def update_item_tags(
    session: AsyncSession, *, item_name: str = "", oid: str = "", item_tags: dict[str, Any] | None
) -> Row[Any]:
    """Merge ``item_tags`` into the tags of every replica of the item (a null value removes a tag)."""
    if not item_tags:
        raise InvalidQueryParameters("item_tags: give at least one tag")
    selector = item_selector(item_name=item_name, oid=oid)
    rows = (await session.execute(select(DataItem.uid, DataItem.item_tags).where(selector))).all()
    if not rows:
        raise NotFound(f"no item has {'oid ' + oid if oid else 'item_name ' + repr(item_name)}")
    changed: list[Row[Any]] = []
    for row in rows:
        merged = {**(row.item_tags or {}), **item_tags}
        merged = {key: value for key, value in merged.items() if value is not None}
        changed += await change_items(session, DataItem.uid == row.uid, {"item_tags": merged})
    return min(changed, key=lambda row: row.uid_creation)
