"""Audit: verify, at a bounded rate, that each READY replica's payload is there, has its size and
its checksum. A replica that fails becomes CORRUPTED (the history says why), which takes it out of
its item's phase, and phase enforcement replaces it from a good replica. Optionally, list payloads a
storage holds that DLM does not know (dark data), without touching them, and the partial files of
copies that will never finish (removed after a grace period).

A replica is claimed by stamping its ``last_check`` in a short transaction (``FOR UPDATE SKIP
LOCKED``), checked with no lock held, and the verdict recorded in a second one; so several processes
share the work, and a replica is checked again only once ``DLM_AUDIT_RECHECK_SECONDS`` have passed.
"""

import contextlib
import datetime
import logging
import uuid
from typing import Any

import msgspec
from sqlalchemy import Row, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.checksum import new_hasher
from dlm.data_item import ITEMS, change_items
from dlm.db.engine import transaction
from dlm.db.models import DataItemEvent, Migration, Storage
from dlm.enums import ChecksumMethod, ItemState, ItemType, MigrationStatus, StorageInterface
from dlm.errors import DLMError
from dlm.storage.service import storage_backend
from dlm.transfer.base import Backend, TransferError
from dlm.transfer.copy import Throttle
from dlm.transfer.posix import PosixBackend

log = logging.getLogger("dlm.lifecycle.audit")

ACTOR = "audit"
FAILED_EVENT = "audit_failed"


class Finding(msgspec.Struct, frozen=True):
    uid: uuid.UUID
    item_name: str | None
    reason: str


class DarkPayload(msgspec.Struct, frozen=True):
    storage_name: str
    uri: str
    size: int


class PartialFile(msgspec.Struct, frozen=True):
    storage_name: str
    # The uri the interrupted write was for.
    uri: str
    age_seconds: float
    removed: bool


class AuditReport(msgspec.Struct, kw_only=True):
    checked: int = 0
    bytes_read: int = 0
    corrupted: list[Finding] = msgspec.field(default_factory=list)
    # Not judged this time: the storage did not answer.
    unreachable: list[Finding] = msgspec.field(default_factory=list)
    dark: list[DarkPayload] = msgspec.field(default_factory=list)
    # Partial files no copy is writing any more (with dark_data); those past the grace period removed.
    partials: list[PartialFile] = msgspec.field(default_factory=list)

    def summary(self) -> str:
        removed = sum(partial.removed for partial in self.partials)
        return (
            f"checked {self.checked} ({self.bytes_read} bytes read), {len(self.corrupted)} corrupted, "
            f"{len(self.unreachable)} unreachable, {len(self.dark)} dark payloads, "
            f"{len(self.partials)} orphaned partial files ({removed} removed)"
        )


async def run_once(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    now: datetime.datetime | None = None,
    recheck_after: datetime.timedelta = datetime.timedelta(days=7),
    max_bytes_per_second: int = 0,
    limit: int | None = None,
    dark_data: bool = False,
    partial_grace: datetime.timedelta = datetime.timedelta(days=1),
) -> AuditReport:
    """Check every READY replica not checked since ``now - recheck_after`` (at most ``limit``). With
    ``dark_data``, also list what the storages hold that DLM does not know, and the partial files no
    copy is writing any more, removing those older than ``partial_grace``."""
    now = now or datetime.datetime.now(datetime.UTC)
    report = AuditReport()
    throttle = Throttle(max_bytes_per_second)
    # One open backend per storage for the pass: opening one (its config, and for S3 a client) costs
    # more than checking a small replica.
    readers: dict[uuid.UUID, Backend] = {}
    async with contextlib.AsyncExitStack() as open_readers:
        while limit is None or report.checked < limit:
            async with transaction(sessionmaker, actor=ACTOR) as session:
                replica = await _claim(session, now, recheck_after)
                if replica is None:
                    break
                backend = None
                if replica.storage_id not in readers:
                    storage = await session.get(Storage, replica.storage_id)
                    assert storage is not None
                    backend = await storage_backend(session, storage)
            report.checked += 1
            try:
                if backend is not None:
                    readers[replica.storage_id] = await open_readers.enter_async_context(backend)
                problem = await _verify(readers[replica.storage_id], replica, throttle, report)
            except TransferError as exc:
                report.unreachable.append(Finding(replica.uid, replica.item_name, exc.message))
                continue
            if problem is not None:
                async with transaction(sessionmaker, actor=ACTOR) as session:
                    await _mark_corrupted(session, replica, problem)
                report.corrupted.append(Finding(replica.uid, replica.item_name, problem))
                log.warning("audit: %s (%s) is corrupted: %s", replica.uid, replica.item_name, problem)
    if dark_data:
        async with transaction(sessionmaker, actor=ACTOR) as session:
            report.dark = await find_dark_data(session)
            report.partials = await clear_orphaned_partials(session, now, partial_grace)
    return report


async def _claim(session: AsyncSession, now: datetime.datetime, recheck_after: datetime.timedelta) -> Row[Any] | None:
    """The next replica to check, stamped as checked now: one never checked, else the one checked
    longest ago if that was before ``now - recheck_after``. Two questions rather than one with an OR:
    each is a range of ix_data_item_audit_due, so a pass with nothing due reads one index entry, not
    the whole index."""
    for due in (ITEMS.c.last_check.is_(None), ITEMS.c.last_check <= now - recheck_after):
        uid = (
            select(ITEMS.c.uid)
            .where(ITEMS.c.item_state == ItemState.READY, ITEMS.c.storage_id.is_not(None), due)
            .order_by(ITEMS.c.last_check.asc().nulls_first(), ITEMS.c.uid)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        # last_check is not a traced column: stamping it leaves no history noise.
        claimed = await session.execute(
            update(ITEMS).where(ITEMS.c.uid == uid).values(last_check=now).returning(*ITEMS.c)
        )
        if (replica := claimed.first()) is not None:
            return replica
    return None


async def _verify(backend: Backend, replica: Row[Any], throttle: Throttle, report: AuditReport) -> str | None:
    """What is wrong with the replica's payload, or None."""
    info = await backend.stat(replica.uri)
    if info is None:
        return f"payload missing at {replica.uri!r}"
    if info.is_container != (replica.item_type is ItemType.CONTAINER):
        kind = "a directory" if info.is_container else "a file"
        return f"payload at {replica.uri!r} is {kind}, not a {replica.item_type.value}"
    if info.is_container:
        return None  # its registered members are audited as items of their own
    if replica.item_size is not None and info.size != replica.item_size:
        return f"size {info.size}, registered {replica.item_size}"
    if not replica.item_checksum or replica.checksum_method is ChecksumMethod.NONE:
        return None
    hasher = new_hasher(replica.checksum_method)
    async for chunk in backend.read(replica.uri):
        hasher.update(chunk)
        report.bytes_read += len(chunk)
        await throttle.account(len(chunk))
    found = hasher.hexdigest()
    if found != replica.item_checksum:
        return f"{replica.checksum_method.value} {found}, registered {replica.item_checksum}"
    return None


async def _mark_corrupted(session: AsyncSession, replica: Row[Any], problem: str) -> None:
    current = await session.scalar(select(ITEMS.c.item_state).where(ITEMS.c.uid == replica.uid).with_for_update())
    if current is not ItemState.READY:
        return  # changed while we read it (deleted, expired): the verdict no longer applies
    await change_items(session, ITEMS.c.uid == replica.uid, {"item_state": ItemState.CORRUPTED})
    session.add(DataItemEvent(uid=replica.uid, oid=replica.oid, event=FAILED_EVENT, new_value=problem, actor=ACTOR))


async def find_dark_data(session: AsyncSession) -> list[DarkPayload]:
    """Files on available storages that no live replica accounts for (inside a registered container
    counts as accounted for). Reported, never deleted: they may be someone's."""
    dark = []
    storages = await session.scalars(select(Storage).where(Storage.storage_available.is_(True)))
    for storage in list(storages):
        known = set(
            await session.scalars(
                select(ITEMS.c.uri).where(
                    ITEMS.c.storage_id == storage.storage_id, ITEMS.c.item_state != ItemState.DELETED
                )
            )
        )
        try:
            async with await storage_backend(session, storage) as backend:
                async for entry in backend.walk():
                    if not _accounted(entry.path, known):
                        dark.append(DarkPayload(storage.storage_name, entry.path, entry.size))
        except TransferError as exc:
            log.warning("audit: cannot list storage %s: %s", storage.storage_name, exc.message)
    return dark


async def clear_orphaned_partials(
    session: AsyncSession, now: datetime.datetime, grace: datetime.timedelta
) -> list[PartialFile]:
    """Partial files on POSIX storages that no queued or running copy is writing: left by a copy
    whose cleanup could not run (its storage unreachable then, say). Reported; removed once older
    than ``grace``, which leaves any copy time to resume."""
    found = []
    storages = await session.scalars(
        select(Storage).where(Storage.storage_available.is_(True), Storage.storage_interface == StorageInterface.POSIX)
    )
    for storage in list(storages):
        writing = list(
            await session.scalars(
                select(ITEMS.c.uri)
                .join(Migration, Migration.destination_uid == ITEMS.c.uid)
                .where(
                    Migration.destination_storage_id == storage.storage_id,
                    Migration.status.in_([MigrationStatus.PENDING, MigrationStatus.RUNNING]),
                )
            )
        )
        backend = await storage_backend(session, storage)
        if not isinstance(backend, PosixBackend):
            continue
        try:
            for uri, modified in await backend.partial_files():
                if _accounted(uri, {path for path in writing if path}):
                    continue  # a copy (into this uri, or a container around it) may still write it
                age = now.timestamp() - modified
                removed = age > grace.total_seconds()
                if removed:
                    await backend.remove_partial(uri)
                    log.info("audit: removed the orphaned partial file of %s on %s", uri, storage.storage_name)
                found.append(PartialFile(storage.storage_name, uri, round(age, 1), removed))
        except (OSError, TransferError, DLMError) as exc:
            log.warning("audit: cannot look for partial files on %s: %s", storage.storage_name, exc)
    return found


def _accounted(path: str, known: set[str]) -> bool:
    parts = path.split("/")
    return any("/".join(parts[:index]) in known for index in range(1, len(parts) + 1))
