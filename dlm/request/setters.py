"""The request manager's changes to items: SKA-DLM's set_* and update functions, each a thin layer over
``dlm.data_item.change_items`` so that every one of them obeys the same rules (the owner rule of
``dlm.auth.policy`` among them) and leaves the same trace."""

import datetime
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.auth.principal import Principal
from dlm.data_item import ItemChanges, change_items, changes_dict, convert_body, get_item, item_selector
from dlm.db.models import DataItem, PhaseChange
from dlm.enums import ChecksumMethod, ItemState, Phase
from dlm.errors import InvalidQueryParameters, NotFound
from dlm.ingest.service import check_payload, check_same_bytes
from dlm.parsing import parse_json_object, parse_uuid, require_one
from dlm.storage.service import resolve_storage, storage_backend


async def update_items(
    session: AsyncSession,
    *,
    item_name: str = "",
    oid: str = "",
    uid: str = "",
    changes: dict[str, Any] | None,
    principal: Principal | None = None,
) -> list[Row[Any]]:
    """Change columns of the replicas named by uid, oid or item_name (all of them for an oid or a name)."""
    values = changes_dict(convert_body(changes, ItemChanges, "post_data"))
    if not values:
        raise InvalidQueryParameters("post_data: give at least one column to change")
    selector = item_selector(item_name=item_name, oid=oid, uid=uid)
    return await change_items(session, selector, values, principal=principal)


async def set_uri(
    session: AsyncSession,
    *,
    uid: str,
    uri: str,
    storage_id: str,
    principal: Principal | None = None,
    checksum_max_bytes: int = 0,
) -> Row[Any]:
    """Say where a replica's payload is: its storage and its path relative to the storage root. The
    payload must be there; its size (and crc32c, up to ``checksum_max_bytes``) are recorded anew, and
    must be those of the item's other READY replicas, if it has any: a replica is the item's bytes."""
    changes = changes_dict(ItemChanges(uri=uri, storage_id=parse_uuid(storage_id, "storage_id")))
    replica = await get_item(session, uid)
    storage = await resolve_storage(session, storage_id=storage_id)
    uri = changes["uri"]
    async with await storage_backend(session, storage) as backend:
        info = check_payload(
            await backend.stat(uri), uri=uri, storage_name=storage.storage_name, item_type=replica.item_type
        )
        checksum = None
        if info.size is not None and info.size <= checksum_max_bytes and not info.is_container:
            checksum = await backend.checksum(uri, ChecksumMethod.CRC32C)
    await check_same_bytes(
        session, oid=replica.oid, size=info.size, checksum=checksum, uri=uri, field="uri", other_than=replica.uid
    )
    changes.update(item_size=info.size, item_checksum=checksum, checksum_method=ChecksumMethod.CRC32C)
    return (await change_items(session, item_selector(uid=uid), changes, principal=principal))[0]


async def set_state(
    session: AsyncSession, *, uid: str, state: ItemState, principal: Principal | None = None
) -> Row[Any]:
    return (await change_items(session, item_selector(uid=uid), {"item_state": state}, principal=principal))[0]


async def set_metadata(
    session: AsyncSession, *, uid: str, metadata: dict[str, Any] | None, principal: Principal | None = None
) -> Row[Any]:
    return (await change_items(session, item_selector(uid=uid), {"metadata": metadata}, principal=principal))[0]


async def set_uid_expiration(
    session: AsyncSession, *, uid: str, expiration: datetime.datetime, principal: Principal | None = None
) -> Row[Any]:
    selector = item_selector(uid=uid)
    return (await change_items(session, selector, {"uid_expiration": expiration}, principal=principal))[0]


async def set_oid_expiration(
    session: AsyncSession, *, oid: str, expiration: datetime.datetime, principal: Principal | None = None
) -> list[Row[Any]]:
    if not oid:
        raise InvalidQueryParameters("oid: required")
    return await change_items(session, item_selector(oid=oid), {"oid_expiration": expiration}, principal=principal)


async def set_owner_field(
    session: AsyncSession, *, oid: str, uid: str, column: str, value: Any, principal: Principal | None = None
) -> Row[Any]:
    """set_user / set_group / set_acl: one column of the replica (uid) or of all replicas of an item (oid)."""
    require_one({"oid": oid, "uid": uid})
    values = changes_dict(ItemChanges(**{column: value}))
    return (await change_items(session, item_selector(oid=oid, uid=uid), values, principal=principal))[0]


def parse_acl(acl: str) -> dict[str, Any]:
    return parse_json_object(acl, "acl")


async def set_phase(session: AsyncSession, *, uid: str, phase: Phase, principal: Principal | None = None) -> Row[Any]:
    """Ask for an item to reach ``phase``: it becomes the target_phase of all its replicas, and a
    phase-change request is recorded for the lifecycle engines to act on."""
    item = await get_item(session, uid)
    await change_items(session, DataItem.oid == item.oid, {"target_phase": phase}, principal=principal)
    session.add(PhaseChange(oid=item.oid, final_phase=phase))
    return (await session.execute(select(DataItem.__table__).where(DataItem.uid == item.uid))).one()


async def update_item_tags(
    session: AsyncSession,
    *,
    item_name: str = "",
    oid: str = "",
    item_tags: dict[str, Any] | None,
    principal: Principal | None = None,
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
        changed += await change_items(session, DataItem.uid == row.uid, {"item_tags": merged}, principal=principal)
    return min(changed, key=lambda row: row.uid_creation)
