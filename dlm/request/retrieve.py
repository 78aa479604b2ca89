"""Give a payload's bytes back: pick the best READY replica the caller may read, stream it (a byte
range of it, or a container as a tar of its files), and record the retrieval in the item's history.

Who may read is ``dlm.auth.policy.may_read`` (docs/security.md#items).
"""

import datetime
import logging
import re
import tarfile
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.auth.policy import may_read
from dlm.auth.principal import Principal
from dlm.data_item import ITEMS, item_selector
from dlm.db.models import DataItemEvent, Location, Migration, Storage
from dlm.enums import ItemState, ItemType, MigrationStatus
from dlm.errors import Forbidden, InvalidQueryParameters, NotFound, ServiceUnavailable, UnmetPreconditionForOperation
from dlm.observability import metrics
from dlm.storage.service import latest_config
from dlm.transfer.backends import READING_COST, make_backend, place_of
from dlm.transfer.base import CHUNK_SIZE, TransferError
from dlm.transfer.paths import relative_name

log = logging.getLogger("dlm.retrieve")

RETRIEVED_EVENT = "retrieved"
# Which kind of storage serves a download first: a local file system, then an object store, then SFTP.
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class Source(msgspec.Struct, frozen=True):
    """One READY replica a download may read, with what it takes to open it."""

    uid: str
    storage_name: str
    storage_interface: Any
    root_directory: str
    config: dict[str, Any] | None
    uri: str
    kind: str

    def backend(self) -> Any:
        return make_backend(self.storage_interface, self.root_directory, self.config, self.storage_name)


class Retrieval(msgspec.Struct, frozen=True):
    """What a download serves: the item, where from (best first), and the headers that describe it."""

    item: dict[str, Any]
    sources: list[Source]
    size: int | None
    is_container: bool
    etag: str
    last_modified: datetime.datetime | None


async def prepare(
    session: AsyncSession,
    principal: Principal | None,
    *,
    item_name: str = "",
    oid: str = "",
    uid: str = "",
    near: str = "",
) -> Retrieval:
    """Everything a download needs from the database, read in the request's transaction (the bytes
    stream after it has ended). ``principal``: whose leave to read decides which replicas serve (None
    for DLM's own work, whose caller was checked when it was asked for)."""
    selector = item_selector(item_name=item_name, oid=oid, uid=uid)
    rows = list(
        (
            await session.execute(
                select(ITEMS, Storage, Location.location_name)
                .join(Storage, Storage.storage_id == ITEMS.c.storage_id)
                .join(Location, Location.location_id == Storage.location_id)
                .where(selector, ITEMS.c.item_state == ItemState.READY, Storage.storage_available.is_(True))
                # For a name: its newest version.
                .order_by(ITEMS.c.item_version.desc())
            )
        ).all()
    )
    named = item_name or oid or uid
    if not rows:
        exists = await session.scalar(select(ITEMS.c.uid).where(selector).limit(1))
        if exists is None:
            raise NotFound(f"no item {named!r}")
        raise UnmetPreconditionForOperation(f"item {named!r} has no READY replica on an available storage")
    newest = rows[0].item_version
    rows = [row for row in rows if row.item_version == newest]
    # An acl is set per replica (or on all of an item's at once): read only replicas that allow it.
    readable = [row for row in rows if principal is None or may_read(principal, row.item_owner, row.acl)]
    if not readable:
        assert principal is not None
        raise Forbidden(f"{principal.subject!r} may not read item {rows[0].item_name!r} (its owner and acl decide)")
    rows = readable
    busy = dict(
        (
            await session.execute(
                select(Migration.source_storage_id, func.count())
                .where(Migration.status == MigrationStatus.RUNNING)
                .group_by(Migration.source_storage_id)
            )
        ).all()
    )
    sources = []
    for row in rows:
        storage: Storage = row.Storage
        config = await latest_config(session, storage.storage_id)
        try:
            kind = place_of(storage.storage_interface, storage.root_directory, config).kind
        except UnmetPreconditionForOperation:
            continue
        rank = (row.location_name != near if near else False, READING_COST[kind], busy.get(storage.storage_id, 0))
        sources.append(
            (
                rank,
                storage.storage_name,
                Source(
                    str(row.uid),
                    storage.storage_name,
                    storage.storage_interface,
                    storage.root_directory,
                    config,
                    row.uri,
                    kind,
                ),
            )
        )
    if not sources:
        raise UnmetPreconditionForOperation(f"item {named!r}: DLM can reach none of its READY replicas")
    sources.sort(key=lambda entry: entry[:2])
    first = rows[0]
    item = dict(first._mapping)
    checksum = first.item_checksum or ""
    return Retrieval(
        item={key: value for key, value in item.items() if key != "Storage"},
        sources=[entry[2] for entry in sources],
        size=first.item_size,
        is_container=first.item_type is ItemType.CONTAINER,
        etag=f'"{first.oid}-{first.item_version}-{checksum}"',
        last_modified=first.payload_modified or first.uid_creation,
    )


async def present(session: AsyncSession, retrieval: Retrieval, *, flag: bool = True) -> Retrieval:
    """``retrieval`` from its first replica whose payload is there, asked before a status line is sent:
    a READY replica whose file is gone would otherwise answer 200 and a truncated body. A replica found
    without its payload (or with another size) is flagged for the audit (``flag``: the session may
    write), which checks it first; with none left the answer is 404 (every payload gone) or 503 (a
    storage did not answer)."""
    unreachable = []
    for index, source in enumerate(retrieval.sources):
        try:
            async with source.backend() as backend:
                info = await backend.stat(source.uri)
        except TransferError as exc:
            unreachable.append(f"{source.storage_name}: {exc.message}")
            continue
        wrong_size = (
            info is not None
            and not retrieval.is_container
            and retrieval.size is not None
            and info.size != retrieval.size
        )
        if info is not None and not wrong_size:
            return msgspec.structs.replace(retrieval, sources=retrieval.sources[index:])
        what = "another size" if wrong_size else "no payload"
        log.warning(
            "retrieve: replica %s on %s has %s; the audit checks it next", source.uid, source.storage_name, what
        )
        if flag:
            await session.execute(update(ITEMS).where(ITEMS.c.uid == uuid.UUID(source.uid)).values(last_check=None))
    if unreachable:
        raise ServiceUnavailable(f"no replica could be read: {'; '.join(unreachable)}")
    raise NotFound(
        f"item {retrieval.item['item_name']!r}: no READY replica has its payload any more (the audit will mark "
        "them so; an operator may restore them from another copy)"
    )


def parse_range(header: str | None, size: int | None) -> tuple[int, int] | None:
    """``Range: bytes=a-b`` as (offset, length) within ``size``; None to serve the whole payload
    (no header, several ranges, a container). Raises RangeNotSatisfiable for a range outside it."""
    if not header or size is None:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        if "," in header:
            return None  # several ranges: served whole, as HTTP allows
        raise InvalidQueryParameters(f"Range: {header!r} is not bytes=first-last")
    first, last = match.groups()
    if not first and not last:
        raise InvalidQueryParameters(f"Range: {header!r} names no bytes")
    if not first:  # the last N bytes
        length = min(int(last), size)
        if length == 0:
            raise RangeNotSatisfiable(size)
        return size - length, length
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise RangeNotSatisfiable(size)
    return start, end - start + 1


class RangeNotSatisfiable(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"the payload has {size} bytes")
        self.size = size


async def record(session: AsyncSession, principal: Principal, retrieval: Retrieval, what: str) -> None:
    """The retrieval in the item's history (who, which replica, which bytes), and its last access."""
    source = retrieval.sources[0]
    session.add(
        DataItemEvent(
            uid=source.uid,
            oid=retrieval.item["oid"],
            event=RETRIEVED_EVENT,
            new_value=f"{what} from storage {source.storage_name!r}",
            actor=principal.subject,
        )
    )
    await session.execute(update(ITEMS).where(ITEMS.c.uid == source.uid).values(last_access=func.now()))


async def stream_file(retrieval: Retrieval, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
    """The bytes, from the first replica that answers; one that fails mid-stream hands over to the
    next at the byte where it stopped (replicas of an item hold the same bytes)."""
    sent = 0
    errors = []
    for source in retrieval.sources:
        try:
            async with source.backend() as backend:
                left = None if length is None else length - sent
                async for chunk in backend.read(source.uri, CHUNK_SIZE, offset=offset + sent, length=left):
                    sent += len(chunk)
                    metrics.RETRIEVED_BYTES.inc(len(chunk))
                    yield chunk
            return
        except (TransferError, OSError) as exc:
            errors.append(f"{source.storage_name}: {exc}")
    raise ServiceUnavailable(f"no replica could be read: {'; '.join(errors)}")


async def stream_tar(retrieval: Retrieval) -> AsyncIterator[bytes]:
    """A container as an uncompressed tar of its files, written as they are read: nothing on disk,
    one chunk in memory."""
    source = retrieval.sources[0]
    mtime = retrieval.last_modified.timestamp() if retrieval.last_modified else 0
    async with source.backend() as backend:
        async for block in tar_members(backend, source.uri, top_name(source.uri), mtime):
            metrics.RETRIEVED_BYTES.inc(len(block))
            yield block
    yield TAR_END


TAR_END = tarfile.NUL * (2 * tarfile.BLOCKSIZE)


def top_name(uri: str) -> str:
    return relative_name(uri).rsplit("/", 1)[-1]


def content_disposition(filename: str) -> str:
    """``attachment`` with ``filename`` as RFC 6266 has it: an ASCII fallback (no quotes, backslashes or
    controls) and the name itself percent-encoded in ``filename*``; nothing in a name can end the header."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename) or "payload"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{urllib.parse.quote(filename, safe='')}"


async def tar_members(backend: Any, uri: str, top: str, mtime: float) -> AsyncIterator[bytes]:
    """The tar records of every file at or under ``uri``, named ``top/<path>`` (``top`` for a file);
    the archive's end (TAR_END) is the caller's to add."""
    top = relative_name(top)
    async for entry in backend.walk(uri):
        info = tarfile.TarInfo(f"{top}/{relative_name(entry.path)}" if entry.path else top)
        info.size = entry.size
        info.mtime = int(mtime)
        info.mode = (entry.mode or 0o644) & 0o7777
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        written = 0
        async for chunk in backend.read(f"{uri}/{entry.path}" if entry.path else uri):
            written += len(chunk)
            yield chunk
        if written != entry.size:
            raise ServiceUnavailable(f"{entry.path or uri!r} changed while it was being sent")
        if entry.size % tarfile.BLOCKSIZE:
            yield tarfile.NUL * (tarfile.BLOCKSIZE - entry.size % tarfile.BLOCKSIZE)
