"""Delivery requests: ship a selection of items to where someone asked, tracked to the end.

A request names its items (names, oids or uids) or a ``params`` filter, a destination and a packaging:

- destination: ``{"storage_name": …, "path": …}`` (a registered storage's tree), ``{"posix": "/dir"}``
  (a directory inside the allowed roots), or ``{"s3": {"bucket", "prefix", "endpoint",
  "access_key_id", "secret_access_key", "region"}}`` (credentials sealed with DLM_SECRET_KEY, never
  shown again);
- packaging: ``none`` (files as they are, containers as directory trees), ``tar-per-container``
  (containers as ``<name>.tar``), or ``tar`` (everything in ``delivery-<id>.tar``).

What is shipped is not a replica: the copies are the recipient's, outside DLM's lifecycle. Each file
is verified as a copy is (read back, checksum compared); nothing is ever overwritten; a failed delivery
removes what it wrote. At the end ``manifest`` lists each item with its size, checksum and where it was
delivered, and ``manifest.json`` is written beside the files.
"""

import datetime
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import msgspec
from sqlalchemy import Row, and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.auth.policy import may_read
from dlm.auth.principal import Principal
from dlm.data_item import ITEMS, convert_body
from dlm.db.engine import transaction
from dlm.db.models import Delivery, Storage
from dlm.enums import ChecksumMethod, ItemState, ItemType, MigrationStatus, Role, StorageInterface
from dlm.errors import DLMError, Forbidden, InvalidQueryParameters, NotFound, UnmetPreconditionForOperation
from dlm.parsing import parse_uuid
from dlm.request import retrieve
from dlm.request.filters import parse_params
from dlm.storage import configs
from dlm.storage.service import check_no_overlap, is_writable, keyring, refuse_new_payloads, storage_backend
from dlm.transfer.backends import Place, make_backend, normalise_endpoint
from dlm.transfer.base import TransferError
from dlm.transfer.copy import copy_payload
from dlm.transfer.outbound import OutboundPolicy
from dlm.transfer.paths import check_relative_uri, relative_name

log = logging.getLogger("dlm.delivery")

ACTOR = "delivery"
MAX_ITEMS = 10_000
MAX_ATTEMPTS = 3
LEASE_SECONDS = 60.0
# How often a running delivery records its progress, renewing its lease and noticing a cancel.
RECORD_SECONDS = 5.0


class DeliveryRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    items: list[str] | None = None
    params: str | None = None
    destination: dict[str, Any]
    packaging: Literal["none", "tar-per-container", "tar"] = "none"


def _owned_by(principal: Principal) -> str | None:
    """Below the operator role, a caller sees only its own deliveries."""
    return None if principal.may(Role.OPERATOR) else principal.subject


async def create_delivery(session: AsyncSession, principal: Principal, body: Any, confinement: Any) -> dict[str, Any]:
    """Check and record a delivery request; a worker ships it. Returns its id and what it will ship."""
    if not isinstance(body, dict):
        raise InvalidQueryParameters("body: must be a JSON object with items or params, and destination")
    request: DeliveryRequest = convert_body(body, DeliveryRequest, "body")
    if (request.items is None) == (request.params is None):
        raise InvalidQueryParameters("body: give items (names, oids or uids) or params (a filter), not both")
    rows = await _select(session, request)
    unreadable = [row.item_name for row in rows if not may_read(principal, row.item_owner, row.acl)]
    if unreadable:
        raise Forbidden(f"{principal.subject!r} may not read {', '.join(repr(name) for name in unreadable[:5])}")
    if not {"storage_name", "posix"}.isdisjoint(request.destination) and not principal.may(Role.OPERATOR):
        # Those write on DLM's own storages; a reader ships to a bucket of its own.
        raise Forbidden("body.destination: delivering to a storage or a directory of DLM's needs role operator")
    if "s3" in request.destination and not keyring(session).sealing:
        raise UnmetPreconditionForOperation(
            "body.destination.s3: DLM keeps inline credentials only sealed, and has no key to seal them "
            "with: an operator sets DLM_SECRET_KEY (dlm db new-secret-key)"
        )
    destination = await _check_destination(session, request.destination, confinement)
    try:
        async with (await open_destination(session, destination)).backend as backend:
            await backend.check()
    except TransferError as exc:
        raise UnmetPreconditionForOperation(f"body.destination: cannot be reached: {exc.message}") from None
    items = [
        {"oid": str(row.oid), "item_name": row.item_name, "item_type": row.item_type.value, "size": row.item_size or 0}
        for row in rows
    ]
    stored = keyring(session).seal(destination)
    delivery = Delivery(
        user=principal.subject,
        destination=stored,
        packaging=request.packaging,
        items=items,
        bytes_total=sum(item["size"] for item in items),
    )
    session.add(delivery)
    await session.flush()
    return {"delivery_id": delivery.delivery_id, "items": len(items), "bytes_total": delivery.bytes_total}


async def _select(session: AsyncSession, request: DeliveryRequest) -> list[Row[Any]]:
    """One READY replica of each item chosen (its newest version), in a stable order."""
    ready = ITEMS.c.item_state == ItemState.READY
    if request.items is not None:
        if not request.items or len(request.items) > MAX_ITEMS:
            raise InvalidQueryParameters(f"body.items: 1 to {MAX_ITEMS} names, oids or uids")
        found: dict[Any, Row[Any]] = {}
        for index, name in enumerate(request.items):
            try:
                given = parse_uuid(name, f"body.items[{index}]")
                selector = or_(ITEMS.c.oid == given, ITEMS.c.uid == given)
            except InvalidQueryParameters:
                selector = ITEMS.c.item_name == name
            row = (
                await session.execute(
                    select(ITEMS).where(selector, ready).order_by(ITEMS.c.item_version.desc()).limit(1)
                )
            ).first()
            if row is None:
                raise NotFound(f"body.items[{index}]: no READY item {name!r}")
            found.setdefault(row.oid, row)
        return list(found.values())
    query = parse_params(request.params, ITEMS, ["item_name"])
    newest = (
        select(ITEMS)
        .where(and_(True, *query.conditions), ready)
        .ext(distinct_on(ITEMS.c.oid))
        .order_by(ITEMS.c.oid, ITEMS.c.item_version.desc())
        .limit(MAX_ITEMS + 1)
    )
    rows = list((await session.execute(newest)).all())
    if not rows:
        raise NotFound("body.params: no READY item matches")
    if len(rows) > MAX_ITEMS:
        raise InvalidQueryParameters(f"body.params: more than {MAX_ITEMS} items match; narrow it")
    return sorted(rows, key=lambda row: (row.item_name or "", str(row.oid)))


async def _check_destination(session: AsyncSession, destination: dict[str, Any], confinement: Any) -> dict[str, Any]:
    kinds = {"storage_name", "posix", "s3"} & destination.keys()
    if len(kinds) != 1:
        raise InvalidQueryParameters("body.destination: one of storage_name (with path), posix, s3")
    for key in ("storage_name", "path", "posix"):
        if key in destination and not isinstance(destination[key], str):
            raise InvalidQueryParameters(f"body.destination.{key}: must be a string")
    if "storage_name" in destination:
        storage = await session.scalar(select(Storage).where(Storage.storage_name == destination["storage_name"]))
        if storage is None:
            raise NotFound(f"body.destination.storage_name: no storage {destination['storage_name']!r}")
        refuse_new_payloads(storage, "body.destination")
        if not is_writable(storage):
            raise UnmetPreconditionForOperation(f"body.destination: storage {storage.storage_name!r} is read-only")
        path = str(destination.get("path") or "")
        check_relative_uri(path, "body.destination.path")
        return {"storage_name": storage.storage_name, "path": path}
    if "posix" in destination:
        directory = str(destination["posix"])
        if not os.path.isabs(directory) or "\x00" in directory:
            raise InvalidQueryParameters("body.destination.posix: must be an absolute directory")
        try:
            real = confinement.check_posix_root(directory)
        except InvalidQueryParameters as exc:
            raise InvalidQueryParameters(exc.message.replace("root_directory", "body.destination.posix", 1)) from None
        existing = next(parent for parent in (real, *real.parents) if parent.exists())
        if not existing.is_dir():
            raise UnmetPreconditionForOperation(f"body.destination.posix: {str(existing)!r} is not a directory")
        await check_no_overlap(
            session,
            Place("local", "", str(real)),
            field="body.destination.posix",
            reason="a delivery there would leave files its storage does not know of",
        )
        # Kept resolved: where the files go is decided now, not by a symlink someone changes later.
        return {"posix": str(real)}
    target = destination["s3"]
    if not isinstance(target, dict) or not isinstance(target.get("bucket"), str) or not target["bucket"]:
        raise InvalidQueryParameters("body.destination.s3.bucket: required")
    config = {"type": "s3", **{key: value for key, value in target.items() if key not in ("bucket", "prefix")}}
    try:
        configs.validate(config, interface=StorageInterface.S3)
    except InvalidQueryParameters as exc:  # named as the caller wrote it: body.destination.s3.<key>
        raise InvalidQueryParameters(exc.message.replace("config.", "body.destination.s3.", 1)) from None
    endpoint = config.get("endpoint")
    root = f"{target['bucket']}/{str(target.get('prefix') or '').strip('/')}".rstrip("/")
    field = "body.destination.s3.endpoint"
    confinement.check_place(Place("s3", normalise_endpoint(str(endpoint), field) if endpoint else "aws", root))
    if endpoint:
        await outbound(session).check_url(str(endpoint), field)
    return {"s3": {**target, "root": root, "config": config}}


class Destination(msgspec.Struct):
    """Where a delivery writes: a backend (not yet entered: ``async with destination.backend``) and the
    path inside it everything goes under."""

    backend: Any
    prefix: str = ""


async def open_destination(session: AsyncSession, destination: dict[str, Any]) -> Destination:
    """The destination's backend; a registered storage's config is read here, in the transaction."""
    if "storage_name" in destination:
        storage = await session.scalar(select(Storage).where(Storage.storage_name == destination["storage_name"]))
        if storage is None:
            raise NotFound(f"storage {destination['storage_name']!r} is gone")
        return Destination(await storage_backend(session, storage), destination["path"].strip("/"))
    if "posix" in destination:
        directory = _unchanged_directory(session, destination["posix"])
        return Destination(make_backend(StorageInterface.POSIX, str(directory), None))
    target = destination["s3"]
    backend = make_backend(StorageInterface.S3, target["root"], target["config"], outbound=outbound(session))
    return Destination(backend)


def _unchanged_directory(session: AsyncSession, directory: str) -> Path:
    """The directory a POSIX delivery was resolved to when it was asked for, created if missing, as long
    as no component of it has become a symlink since (each is opened with O_NOFOLLOW) and it is still
    inside the allowed roots: a link re-pointed after the request does not steer the files elsewhere."""
    confinement = session.info.get("confinement")
    if confinement is not None:
        confinement.check_posix_root(directory)
    path = Path(directory)
    descriptor = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in path.parts[1:]:
            try:
                os.mkdir(part, 0o755, dir_fd=descriptor)
            except FileExistsError:
                pass
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=descriptor)
            except OSError:
                raise UnmetPreconditionForOperation(
                    f"destination {directory!r}: {part!r} is no longer the directory it was when the delivery was "
                    "asked for (a symlink or a file now): nothing was written"
                ) from None
            os.close(descriptor)
            descriptor = inner
    finally:
        os.close(descriptor)
    return path


def outbound(session: AsyncSession) -> OutboundPolicy:
    """Where endpoints a caller names may be: the process's policy (public addresses only, by default)."""
    return session.info.get("outbound") or OutboundPolicy()


def shown(row: Row[Any] | Delivery, ring: Any) -> dict[str, Any]:
    """A delivery as callers see it: an inline destination's secrets as ***."""
    values = {column.name: getattr(row, column.name) for column in Delivery.__table__.columns}
    destination = ring.open(values["destination"])
    if "s3" in destination and "config" in destination["s3"]:  # else: finished, its secrets already gone
        target = destination["s3"]
        public = configs.redact(target["config"])
        public.pop("type", None)
        destination = {"s3": {"bucket": target["bucket"], "prefix": target.get("prefix") or "", **public}}
    values["destination"] = destination
    return values


async def get_delivery(session: AsyncSession, principal: Principal, delivery_id: int) -> dict[str, Any]:
    query = select(Delivery).where(Delivery.delivery_id == delivery_id)
    if (owner := _owned_by(principal)) is not None:
        query = query.where(Delivery.user == owner)
    delivery = await session.scalar(query)
    if delivery is None:
        raise NotFound(f"delivery_id {delivery_id} does not exist")
    return shown(delivery, keyring(session))


# A page of deliveries at most; offset pages further.
MAX_DELIVERIES = 1000


async def query_deliveries(
    session: AsyncSession,
    principal: Principal,
    *,
    status: MigrationStatus | None = None,
    offset: int = 0,
    limit: int = MAX_DELIVERIES,
) -> list[dict[str, Any]]:
    """Deliveries, newest first (below the operator role only the caller's own), each with how many
    items it ships instead of the list and without its manifest: get_delivery has both."""
    query = select(Delivery).order_by(Delivery.delivery_id.desc()).offset(offset).limit(min(limit, MAX_DELIVERIES))
    if (owner := _owned_by(principal)) is not None:
        query = query.where(Delivery.user == owner)
    if status is not None:
        query = query.where(Delivery.status == status)
    found = []
    for delivery in await session.scalars(query):
        row = shown(delivery, keyring(session))
        row["item_count"] = len(row.pop("items") or [])
        del row["manifest"]
        found.append(row)
    return found


async def cancel_delivery(session: AsyncSession, principal: Principal, delivery_id: int) -> dict[str, Any]:
    """Cancel a delivery that has not finished: a queued one is never shipped, a running one stops at its
    next lease renewal and removes what it wrote. Its owner or an operator may."""
    query = select(Delivery).where(Delivery.delivery_id == delivery_id).with_for_update()
    if (owner := _owned_by(principal)) is not None:
        query = query.where(Delivery.user == owner)
    delivery = await session.scalar(query)
    if delivery is None:
        raise NotFound(f"delivery_id {delivery_id} does not exist")
    if delivery.status not in (MigrationStatus.PENDING, MigrationStatus.RUNNING):
        raise UnmetPreconditionForOperation(
            f"delivery_id {delivery_id}: {delivery.status.value}; only PENDING or RUNNING deliveries can be cancelled"
        )
    delivery.status = MigrationStatus.CANCELLED
    delivery.finished = func.now()
    delivery.last_error = f"cancelled by {principal.subject}"
    delivery.destination = keyring(session).seal(shown(delivery, keyring(session))["destination"])
    await session.flush()
    await session.refresh(delivery)
    return shown(delivery, keyring(session))


class DeliveryReport(msgspec.Struct):
    delivered: list[int] = msgspec.field(default_factory=list)
    failed: list[int] = msgspec.field(default_factory=list)

    def summary(self) -> str:
        return f"{len(self.delivered)} delivered, {len(self.failed)} failed"


async def run_once(sessionmaker: async_sessionmaker[AsyncSession], owner: str = "deliveries") -> DeliveryReport:
    """Ship every delivery that is due (queued, or whose worker stopped renewing its lease)."""
    report = DeliveryReport()
    while True:
        async with transaction(sessionmaker, actor=ACTOR) as session:
            claimed = await _claim(session, owner)
        if claimed is None:
            return report
        status = await _ship(sessionmaker, claimed)
        if status is MigrationStatus.SUCCEEDED:
            report.delivered.append(claimed)
        elif status is not MigrationStatus.CANCELLED:
            report.failed.append(claimed)


async def _claim(session: AsyncSession, owner: str) -> int | None:
    now = func.now()
    # A delivery whose worker stopped renewing its lease as often as it may be tried is not tried again.
    await session.execute(
        update(Delivery)
        .where(
            Delivery.status == MigrationStatus.RUNNING,
            Delivery.lease_expires < now,
            Delivery.attempts >= MAX_ATTEMPTS,
        )
        .values(
            status=MigrationStatus.FAILED,
            finished=now,
            last_error=f"its worker stopped while shipping it {MAX_ATTEMPTS} times (DLM restarted or crashed)",
            lease_owner=None,
            lease_expires=None,
        )
    )
    due = (
        select(Delivery.delivery_id)
        .where(
            or_(
                Delivery.status == MigrationStatus.PENDING,
                and_(Delivery.status == MigrationStatus.RUNNING, Delivery.lease_expires < now),
            )
        )
        .order_by(Delivery.created)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    return await session.scalar(
        update(Delivery)
        .where(Delivery.delivery_id == due)
        .values(
            status=MigrationStatus.RUNNING,
            lease_owner=owner,
            lease_expires=now + datetime.timedelta(seconds=LEASE_SECONDS),
            attempts=Delivery.attempts + 1,
        )
        .returning(Delivery.delivery_id)
    )


async def _ship(sessionmaker: async_sessionmaker[AsyncSession], delivery_id: int) -> MigrationStatus:
    async with transaction(sessionmaker, actor=ACTOR) as session:
        delivery = await session.get(Delivery, delivery_id)
        assert delivery is not None
        packaging, items, attempts = delivery.packaging, list(delivery.items), delivery.attempts
        # What an earlier, interrupted attempt wrote: ours to replace.
        leftovers = [entry["delivered_to"] for entry in delivery.manifest or []]
        try:
            destination = await open_destination(session, keyring(session).open(delivery.destination))
            sources = [await _source(session, item) for item in items]
        except DLMError as exc:
            return await _finish_failed(sessionmaker, delivery_id, exc.message, retry=False)
        except (TransferError, OSError) as exc:
            reason = getattr(exc, "message", None) or str(exc)
            retry = bool(getattr(exc, "transient", False)) and attempts < MAX_ATTEMPTS
            return await _finish_failed(sessionmaker, delivery_id, reason, retry=retry)
    progress = _Progress(sessionmaker, delivery_id)
    written: list[str] = []
    manifest: list[dict[str, Any]] = []
    try:
        async with destination.backend as backend:
            for uri in leftovers:
                await backend.delete(uri)
            if packaging == "tar":
                target = _join(destination.prefix, f"delivery-{delivery_id}.tar")
                await backend.write(target, _one_tar(sources, items, progress))
                written.append(target)
                manifest = [_entry(item, source, None, target) for item, source in zip(items, sources, strict=True)]
            else:
                for item, source in zip(items, sources, strict=True):
                    entry = await _ship_item(backend, destination.prefix, item, source, packaging, progress)
                    written.append(entry["delivered_to"])
                    manifest.append(entry)
                    await progress.record(manifest)
            listing = json.dumps({"delivery_id": delivery_id, "items": manifest}, indent=2).encode()
            manifest_uri = _join(destination.prefix, f"manifest-{delivery_id}.json")
            await backend.write(manifest_uri, _chunks(listing))
            written.append(manifest_uri)
    except DeliveryCancelled:
        await _undo(destination, written)
        log.info("delivery %s: cancelled; what it wrote is removed", delivery_id)
        return MigrationStatus.CANCELLED
    except Exception as exc:  # noqa: BLE001 - each attempt ends with its reason, never in a loop
        if isinstance(exc, DLMError | TransferError):
            reason, transient = exc.message, bool(getattr(exc, "transient", False))
        elif isinstance(exc, OSError):
            reason, transient = str(exc), True
        else:
            log.exception("delivery %s: unexpected error", delivery_id)
            reason, transient = f"internal error ({type(exc).__name__}); the server log has the details", True
        await _undo(destination, written)
        return await _finish_failed(sessionmaker, delivery_id, reason, retry=transient and attempts < MAX_ATTEMPTS)
    async with transaction(sessionmaker, actor=ACTOR) as session:
        finished = await session.scalar(
            update(Delivery)
            .where(Delivery.delivery_id == delivery_id, Delivery.status == MigrationStatus.RUNNING)
            .values(
                status=MigrationStatus.SUCCEEDED,
                destination=await _without_secrets(sessionmaker, delivery_id),
                manifest=manifest,
                bytes_done=progress.done,
                finished=func.now(),
                last_error=None,
                lease_owner=None,
                lease_expires=None,
            )
            .returning(Delivery.delivery_id)
        )
    if finished is None:  # cancelled as its last bytes went
        await _undo(destination, written)
        return MigrationStatus.CANCELLED
    return MigrationStatus.SUCCEEDED


async def _finish_failed(
    sessionmaker: async_sessionmaker[AsyncSession], delivery_id: int, reason: str, *, retry: bool
) -> MigrationStatus:
    async with transaction(sessionmaker, actor=ACTOR) as session:
        await session.execute(
            update(Delivery)
            .where(Delivery.delivery_id == delivery_id, Delivery.status == MigrationStatus.RUNNING)
            .values(
                **({} if retry else {"destination": await _without_secrets(sessionmaker, delivery_id)}),
                status=MigrationStatus.PENDING if retry else MigrationStatus.FAILED,
                last_error=reason,
                finished=None if retry else func.now(),
                manifest=None,
                bytes_done=0,
                lease_owner=None,
                lease_expires=None,
            )
        )
    log.warning("delivery %s %s: %s", delivery_id, "will be retried" if retry else "failed", reason)
    return MigrationStatus.PENDING if retry else MigrationStatus.FAILED


async def _without_secrets(sessionmaker: async_sessionmaker[AsyncSession], delivery_id: int) -> dict[str, Any]:
    """A finished delivery keeps where it went, not the credentials it went with."""
    async with transaction(sessionmaker, actor=ACTOR) as session:
        delivery = await session.get(Delivery, delivery_id)
        assert delivery is not None
        return keyring(session).seal(shown(delivery, keyring(session))["destination"])


class DeliveryCancelled(Exception):
    """The delivery was cancelled while it was being shipped."""


class _Progress:
    """Bytes done, and the lease renewed, as the delivery goes: between items and, for a large one,
    while its bytes move (a 1 GiB item outlives a lease). A cancel is noticed when the lease is renewed."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], delivery_id: int) -> None:
        self.sessionmaker, self.delivery_id = sessionmaker, delivery_id
        self.done = 0
        self._recorded = time.monotonic()

    def add(self, count: int) -> None:
        self.done += count

    async def tick(self) -> None:
        """Record progress if RECORD_SECONDS have passed since the last record."""
        if time.monotonic() - self._recorded > RECORD_SECONDS:
            await self.record()

    async def record(self, manifest: list[dict[str, Any]] | None = None) -> None:
        values: dict[str, Any] = {
            "bytes_done": self.done,
            "lease_expires": func.now() + datetime.timedelta(seconds=LEASE_SECONDS),
        }
        if manifest is not None:
            values["manifest"] = manifest
        async with transaction(self.sessionmaker, actor=ACTOR) as session:
            renewed = await session.scalar(
                update(Delivery)
                .where(Delivery.delivery_id == self.delivery_id, Delivery.status == MigrationStatus.RUNNING)
                .values(**values)
                .returning(Delivery.delivery_id)
            )
        self._recorded = time.monotonic()
        if renewed is None:
            raise DeliveryCancelled(self.delivery_id)


async def _source(session: AsyncSession, item: dict[str, Any]) -> retrieve.Source:
    """The item's best READY replica DLM can reach (as a download picks it)."""
    try:
        prepared = await retrieve.prepare(session, None, oid=item["oid"])
    except (NotFound, UnmetPreconditionForOperation) as exc:
        raise UnmetPreconditionForOperation(f"item {item['item_name']!r}: {exc.message}") from None
    return prepared.sources[0]


async def _ship_item(
    backend: Any, prefix: str, item: dict[str, Any], source: retrieve.Source, packaging: str, progress: "_Progress"
) -> dict[str, Any]:
    name = item["item_name"]
    async with source.backend() as reader:
        if item["item_type"] == ItemType.CONTAINER.value and packaging == "tar-per-container":
            target = _join(prefix, f"{relative_name(name)}.tar")

            async def tar() -> AsyncIterator[bytes]:
                async for block in retrieve.tar_members(reader, source.uri, retrieve.top_name(name), 0):
                    progress.add(len(block))
                    await progress.tick()
                    yield block
                yield retrieve.TAR_END

            size = await backend.write(target, tar())
            return _entry(item, source, None, target, size)
        target = _join(prefix, relative_name(name))
        before = progress.done

        async def counted(done: int, total: int) -> None:
            progress.done = before + done
            await progress.tick()

        result = await copy_payload(reader, source.uri, backend, target, on_progress=counted)
        return _entry(item, source, result.checksum, target, result.bytes)


async def _one_tar(
    sources: list[retrieve.Source], items: list[dict[str, Any]], progress: "_Progress"
) -> AsyncIterator[bytes]:
    for item, source in zip(items, sources, strict=True):
        async with source.backend() as reader:
            async for block in retrieve.tar_members(reader, source.uri, item["item_name"], 0):
                progress.add(len(block))
                await progress.tick()
                yield block
    yield retrieve.TAR_END


def _entry(
    item: dict[str, Any], source: retrieve.Source, checksum: str | None, target: str, size: int | None = None
) -> dict[str, Any]:
    entry = {
        "item_name": item["item_name"],
        "oid": item["oid"],
        "uid": source.uid,
        "size": size if size is not None else item["size"],
        "delivered_to": target,
    }
    if checksum is not None:
        entry["checksum"] = {"method": ChecksumMethod.CRC32C.value, "value": checksum}
    return entry


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


async def _chunks(content: bytes) -> AsyncIterator[bytes]:
    yield content


async def _undo(destination: Destination, written: list[str]) -> None:
    """A failed delivery leaves nothing: what it wrote goes (what others put there stays)."""
    if not written:
        return
    try:
        async with destination.backend as backend:
            for uri in written:
                await backend.delete(uri)
    except (TransferError, OSError) as exc:
        log.warning("delivery: cannot remove what a failed delivery wrote: %s", exc)
