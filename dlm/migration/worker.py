"""The workers that run queued copies: claim a job, copy and verify under a lease, finish it.

Any number of DLM processes may run workers against one database. A job is claimed with
``FOR UPDATE SKIP LOCKED`` and leased; the worker renews the lease (and records progress) every
heartbeat. A job whose lease runs out (its process died) is claimed again by whoever comes next,
so a copy survives a crash or a restart. Transient errors are retried with exponential backoff;
permanent ones fail the job with the reason, leaving no destination replica or payload behind.
"""

import asyncio
import contextlib
import datetime
import logging
import os
import socket
import time
import uuid
from typing import Any

import msgspec
from sqlalchemy import and_, any_, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.checksum import new_hasher
from dlm.config import Settings
from dlm.data_item import ITEMS, change_items, create_items, make_ready, refresh_oid_phase
from dlm.db.engine import transaction
from dlm.db.models import Migration, Storage
from dlm.enums import ChecksumMethod, ItemState, ItemType, MigrationStatus
from dlm.errors import Conflict, DLMError, ServiceUnavailable, UnmetPreconditionForOperation
from dlm.migration.service import discard_destination, replica_values, set_migration
from dlm.observability import metrics
from dlm.sites import service as sites
from dlm.sites.service import Site
from dlm.storage.service import delete_replica, lock_replicas, storage_backend
from dlm.transfer.base import PayloadExists, TransferError
from dlm.transfer.copy import SMALL_FILE, CopyResult, FileCopied, FilePair, copy_files, copy_payload
from dlm.transfer.paths import payload_key

log = logging.getLogger("dlm.migration")

ACTOR = "migration"
# How often a running copy records its progress and renews its lease, at most.
HEARTBEAT_SECONDS = 1.0


class Stopped(Exception):
    """The job is no longer ours to finish: cancelled, or its lease was taken over."""


def new_owner(index: int = 0) -> str:
    """A name for one worker that no other worker, here or in another process, shares."""
    return f"{socket.gethostname()}:{os.getpid()}:{index}:{uuid.uuid4().hex[:6]}"


async def claim(session: AsyncSession, owner: str, lease_seconds: float, site: Site | None = None) -> Migration | None:
    """Take the next job that is due, or whose worker stopped renewing its lease: at a ``site``, only one
    whose two storages it reaches, its own location's sources first; never one on a link or to or from
    a storage carrying as many transfers as it may (dlm.sites)."""
    now = func.now()
    due = select(Migration.migration_id).where(
        or_(
            and_(Migration.status == MigrationStatus.PENDING, Migration.next_attempt_at <= now),
            and_(Migration.status == MigrationStatus.RUNNING, Migration.lease_expires < now),
        )
    )
    full = await sites.full(session)
    if site is not None or full.links:
        due = sites.joined_storages(due)
        if site is not None:
            due = due.where(sites.within_reach(site))
    due = full.avoided(due)
    first = [sites.pushed_first(site)] if site is not None else []
    due = (
        due.order_by(*first, Migration.next_attempt_at, Migration.migration_id)
        .limit(1)
        .with_for_update(of=Migration, skip_locked=True)
        .scalar_subquery()
    )
    statement = (
        update(Migration)
        .where(Migration.migration_id == due)
        .values(
            status=MigrationStatus.RUNNING,
            lease_owner=owner,
            lease_expires=now + datetime.timedelta(seconds=lease_seconds),
            attempts=Migration.attempts + 1,
        )
        .returning(Migration)
    )
    return await session.scalar(statement, execution_options={"populate_existing": True})


class Job:
    """One claimed migration, run to its end by ``run``."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, owner: str, job: Migration):
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.owner = owner
        self.migration_id = job.migration_id
        self.attempts = job.attempts
        self.done = 0
        self.total = job.bytes_total
        self.last_renewal = time.monotonic()

    async def run(self) -> MigrationStatus:
        try:
            if self.attempts > self.settings.migration_max_attempts:
                # Claimed again and again without finishing: its copies keep dying with their process.
                return await self._fail(f"gave up after {self.settings.migration_max_attempts} attempts", retry=False)
            result = await self._copy()
            return await self._succeed(result)
        except Stopped as exc:
            log.info("migration %s: stopped (%s)", self.migration_id, exc)
            await self._let_go()
            return MigrationStatus.CANCELLED
        except asyncio.CancelledError:
            await self._release()
            raise
        except PayloadExists as exc:  # someone else's file at the destination: not ours to remove
            return await self._fail(f"{type(exc).__name__}: {exc.message}", retry=False, remove_payload=False)
        except TransferError as exc:
            return await self._fail(f"{type(exc).__name__}: {exc.message}", retry=exc.transient)
        except ServiceUnavailable as exc:
            # The database away (an outage, a failover): not the copy's fault, and no attempt of its.
            log.warning("migration %s: %s; the copy goes back to the queue", self.migration_id, exc.message)
            await self._release(last_error=exc.message, delay=self.settings.migration_poll_seconds)
            return MigrationStatus.PENDING
        except Conflict as exc:  # a concurrent change: try again
            return await self._fail(exc.message, retry=True)
        except DLMError as exc:
            return await self._fail(exc.message, retry=False)
        except Exception as exc:
            log.exception("migration %s: unexpected error", self.migration_id)
            return await self._fail(f"internal error: {exc!r}", retry=False)

    async def _copy(self) -> CopyResult:
        async with transaction(self.sessionmaker, actor=ACTOR) as session:
            job = await session.get(Migration, self.migration_id)
            assert job is not None
            source = (await session.execute(select(ITEMS).where(ITEMS.c.uid == job.source_uid))).one()
            target = (await session.execute(select(ITEMS).where(ITEMS.c.uid == job.destination_uid))).one()
            if source.item_state is not ItemState.READY:
                raise UnmetPreconditionForOperation(
                    f"the source replica {source.uid} is {source.item_state.value}, no longer READY"
                )
            if target.item_state is not ItemState.INITIALISED:
                raise UnmetPreconditionForOperation(
                    f"the destination replica {target.uid} is {target.item_state.value}, no longer INITIALISED"
                )
            source_storage = await session.get(Storage, job.source_storage_id)
            destination_storage = await session.get(Storage, job.destination_storage_id)
            assert source_storage is not None and destination_storage is not None
            source_backend = await storage_backend(session, source_storage)
            destination_backend = await storage_backend(session, destination_storage)
            rate = _slowest(
                self.settings.transfer_max_bytes_per_second,
                await sites.link_rate(session, source_storage, destination_storage),
            )
        expected = source.item_checksum if source.item_type is not ItemType.CONTAINER else None
        async with source_backend as reader, destination_backend as writer:
            if (
                expected
                and source.checksum_method is not ChecksumMethod.NONE
                and (earlier := await _identical_payload(writer, target.uri, source)) is not None
            ):
                # An earlier attempt of this job wrote the payload, then lost the database before it
                # could say so (an outage, a failover): the bytes are the source's, so they are the copy.
                log.info("migration %s: the payload an earlier attempt wrote is complete", self.migration_id)
                return earlier
            copying = asyncio.create_task(
                copy_payload(
                    reader,
                    source.uri,
                    writer,
                    target.uri,
                    method=source.checksum_method,  # copy_payload uses crc32c for "none"
                    on_progress=self._progress,
                    max_bytes_per_second=rate,
                    expected_checksum=expected,
                )
            )
            try:
                while True:
                    finished, _ = await asyncio.wait({copying}, timeout=self._heartbeat_interval())
                    if finished:
                        return copying.result()
                    await self._heartbeat()
            finally:
                if not copying.done():
                    copying.cancel()
                    with contextlib.suppress(BaseException):
                        await copying  # it removes what it wrote

    def _heartbeat_interval(self) -> float:
        return min(HEARTBEAT_SECONDS, self.settings.migration_lease_seconds / 4)

    async def _progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    async def _heartbeat(self) -> None:
        """Record progress and renew the lease; raise Stopped if the job was cancelled or taken over."""
        try:
            async with transaction(self.sessionmaker, actor=ACTOR) as session:
                status = await session.scalar(
                    update(Migration)
                    .where(
                        Migration.migration_id == self.migration_id,
                        Migration.lease_owner == self.owner,
                        Migration.status == MigrationStatus.RUNNING,
                    )
                    .values(
                        bytes_done=self.done,
                        bytes_total=self.total,
                        lease_expires=func.now() + datetime.timedelta(seconds=self.settings.migration_lease_seconds),
                    )
                    .returning(Migration.status)
                )
        except ServiceUnavailable:
            # The database is away: keep copying while the lease holds, stop once another may take over.
            if time.monotonic() - self.last_renewal > self.settings.migration_lease_seconds:
                raise Stopped("lease lost while the database was unreachable") from None
            return
        if status is None:
            raise Stopped("cancelled, or the lease passed to another worker")
        self.last_renewal = time.monotonic()

    async def _lock_if_ours(self, session: AsyncSession) -> Migration | None:
        job = await session.scalar(
            select(Migration).where(Migration.migration_id == self.migration_id).with_for_update()
        )
        if job is None or job.status is not MigrationStatus.RUNNING or job.lease_owner != self.owner:
            return None
        return job

    async def _succeed(self, result: CopyResult) -> MigrationStatus:
        async with transaction(self.sessionmaker, actor=ACTOR) as session:
            job = await self._lock_if_ours(session)
            if job is None:
                # Cancelled while the last bytes went over: the cancellation wins, and what we wrote goes.
                await self._discard_if_cancelled(session)
                return MigrationStatus.CANCELLED
            # Lock the item's replicas in the one order every writer uses (by uid) before changing any:
            # two copies of one item finishing together would otherwise deadlock on each other's rows.
            await lock_replicas(session, job.oid)
            source = (await session.execute(select(ITEMS).where(ITEMS.c.uid == job.source_uid))).one()
            values: dict[str, Any] = {"item_state": ItemState.READY, "item_size": result.bytes}
            if result.checksum is not None:
                values["item_checksum"] = result.checksum
                if source.checksum_method is ChecksumMethod.NONE:
                    values["checksum_method"] = ChecksumMethod.CRC32C
            await change_items(session, ITEMS.c.uid == job.destination_uid, values)
            if source.item_type is ItemType.CONTAINER:
                await self._replicate_children(session, job, source)
            seconds = max(result.seconds, 1e-9)
            await set_migration(
                session,
                self.migration_id,
                status=MigrationStatus.SUCCEEDED,
                complete=True,
                completion_date=func.now(),
                bytes_done=result.bytes,
                bytes_total=result.bytes,
                last_error=None,
                lease_owner=None,
                lease_expires=None,
                job_status={"finished": True, "success": True, "error": ""},
                job_stats={
                    "files": result.files,
                    "bytes": result.bytes,
                    "seconds": round(result.seconds, 3),
                    "bytes_per_second": round(result.bytes / seconds),
                    "checksum": result.checksum,
                    "worker": self.owner,
                    # Made by the storage itself (S3 CopyObject): its checksum is the one S3 computed.
                    **({"server_side": True} if result.through is not None else {}),
                    # Said, not silently dropped: a link to a directory inside the container is not followed.
                    **({"unfollowed_symlinks": list(result.unfollowed)} if result.unfollowed else {}),
                },
            )
            if job.move:
                await self._remove_source(session, job)
            link = await sites.link_of(session, job.source_storage_id, job.destination_storage_id)
        metrics.COPIED_BYTES.inc(result.bytes)
        metrics.COPIED_THROUGH.inc(result.bytes_through)
        metrics.LINK_BYTES.labels(*link).inc(result.bytes)
        metrics.COPY_SECONDS.observe(result.seconds)
        metrics.COPIES.labels(MigrationStatus.SUCCEEDED.value).inc()
        log.info("migration %s: copied %d bytes in %d files", self.migration_id, result.bytes, result.files)
        if result.unfollowed:
            log.warning(
                "migration %s: did not follow symlinked directories %s (their contents were not copied)",
                self.migration_id,
                ", ".join(result.unfollowed[:10]),
            )
        return MigrationStatus.SUCCEEDED

    async def _remove_source(self, session: AsyncSession, job: Migration) -> None:
        """A move's last step, in the transaction that made the copy READY: the item is never without
        a READY replica. The source goes as a user's deletion would (the resilience rule, read-only
        storages); if it may not, the copy stands and the job says why the source stayed."""
        replicas = await lock_replicas(session, job.oid)
        source = next((row for row in replicas if row.uid == job.source_uid), None)
        if source is None or source.item_state is ItemState.DELETED:
            return
        try:
            async with session.begin_nested():
                await delete_replica(session, source, replicas, force=job.move_force)
        except (DLMError, TransferError) as exc:
            reason = f"copied; the source replica stays: {getattr(exc, 'message', exc)}"
            log.warning("migration %s: %s", self.migration_id, reason)
            await set_migration(
                session,
                self.migration_id,
                last_error=reason,
                job_status={"finished": True, "success": True, "error": reason},
            )

    async def _replicate_children(self, session: AsyncSession, job: Migration, container: Any) -> None:
        """The container's registered members got copied with it: give each a READY replica there too."""
        destination = await session.get(Storage, job.destination_storage_id)
        target_uri = await session.scalar(select(ITEMS.c.uri).where(ITEMS.c.uid == job.destination_uid))
        assert destination is not None and target_uri is not None
        prefix = f"{payload_key(container.uri)}/"
        children = (
            await session.execute(
                select(ITEMS).where(
                    ITEMS.c.parents == container.oid,
                    ITEMS.c.storage_id == container.storage_id,
                    ITEMS.c.item_state == ItemState.READY,
                    func.ltrim(ITEMS.c.uri, "/").startswith(prefix, autoescape=True),
                )
            )
        ).all()
        already = set(
            await session.scalars(
                select(ITEMS.c.oid).where(
                    ITEMS.c.oid.in_([child.oid for child in children]),
                    ITEMS.c.storage_id == destination.storage_id,
                    ITEMS.c.item_state != ItemState.DELETED,
                )
            )
        )
        rows = []
        for child in children:
            if child.oid in already:
                continue
            uri = target_uri + "/" + payload_key(child.uri)[len(prefix) :]
            row = replica_values(child, storage=destination, uri=uri, state=ItemState.READY)
            row["item_checksum"] = child.item_checksum  # verified file by file during the copy
            rows.append(row)
        await create_items(session, rows)
        if rows:
            await refresh_oid_phase(session, {row["oid"] for row in rows})

    async def _discard_if_cancelled(self, session: AsyncSession) -> None:
        job = await session.get(Migration, self.migration_id)
        if job is not None and job.status is MigrationStatus.CANCELLED:
            await discard_destination(session, job)
            if job.lease_owner == self.owner:
                job.lease_owner = job.lease_expires = None

    async def _fail(self, reason: str, *, retry: bool, remove_payload: bool = True) -> MigrationStatus:
        async with transaction(self.sessionmaker, actor=ACTOR) as session:
            job = await self._lock_if_ours(session)
            if job is None:
                await self._discard_if_cancelled(session)
                return MigrationStatus.CANCELLED
            if retry and job.attempts < self.settings.migration_max_attempts:
                delay = self.settings.migration_retry_base_seconds * 2 ** (job.attempts - 1)
                log.warning("migration %s: %s; retrying in %.0f s", self.migration_id, reason, delay)
                await set_migration(
                    session,
                    self.migration_id,
                    status=MigrationStatus.PENDING,
                    last_error=reason,
                    next_attempt_at=func.now() + datetime.timedelta(seconds=delay),
                    lease_owner=None,
                    lease_expires=None,
                    bytes_done=0,
                    job_status={"finished": False, "success": False, "error": reason},
                )
                return MigrationStatus.PENDING
            if retry:
                reason = f"{reason} (gave up after {job.attempts} attempts)"
            log.warning("migration %s failed: %s", self.migration_id, reason)
            await set_migration(
                session,
                self.migration_id,
                status=MigrationStatus.FAILED,
                # SKA-DLM's sense: finished, whatever the outcome (job_status.success says which).
                complete=True,
                last_error=reason,
                completion_date=func.now(),
                lease_owner=None,
                lease_expires=None,
                job_status={"finished": True, "success": False, "error": reason},
            )
            await discard_destination(session, job, remove_payload=remove_payload)
            if self.settings.ska_deletion == "unconditional" and job.destination_uid is not None:
                # SKA-DLM's migration manager removed a failed copy's replica row; its clients look for it gone.
                await session.execute(
                    ITEMS.delete().where(ITEMS.c.uid == job.destination_uid, ITEMS.c.item_state == ItemState.DELETED)
                )
        metrics.COPIES.labels(MigrationStatus.FAILED.value).inc()
        return MigrationStatus.FAILED

    async def _let_go(self) -> None:
        """Say we are done with a cancelled job (what we wrote is gone): it may now be retried."""
        async with transaction(self.sessionmaker, actor=ACTOR) as session:
            await session.execute(
                update(Migration)
                .where(Migration.migration_id == self.migration_id, Migration.lease_owner == self.owner)
                .values(lease_owner=None, lease_expires=None)
            )

    async def _release(self, *, last_error: str | None = None, delay: float = 0) -> None:
        """Hand the job back (shutting down mid-copy, or the database away): this attempt does not
        count. If the database cannot be told, the lease runs out and the job is claimed again."""
        values: dict[str, Any] = {} if last_error is None else {"last_error": last_error}
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5), transaction(self.sessionmaker, actor=ACTOR) as session:
                await session.execute(
                    update(Migration)
                    .where(Migration.migration_id == self.migration_id, Migration.lease_owner == self.owner)
                    .values(
                        status=MigrationStatus.PENDING,
                        attempts=Migration.attempts - 1,
                        next_attempt_at=func.now() + datetime.timedelta(seconds=delay),
                        lease_owner=None,
                        lease_expires=None,
                        bytes_done=0,
                        **values,
                    )
                )


def _slowest(*rates: int) -> int:
    """The tightest of these limits in bytes a second (0: none)."""
    return min((rate for rate in rates if rate), default=0)


async def _identical_payload(writer: Any, uri: str, source: Any) -> CopyResult | None:
    """The copy, if a file with exactly the source's size and checksum is already at ``uri``."""
    started = time.monotonic()
    try:
        info = await writer.stat(uri)
    except TransferError:
        return None
    if info is None or info.is_container or (source.item_size is not None and info.size != source.item_size):
        return None
    hasher = new_hasher(source.checksum_method)
    async for chunk in writer.read(uri):
        hasher.update(chunk)
    if hasher.hexdigest() != source.item_checksum:
        return None
    return CopyResult(files=1, bytes=info.size, checksum=source.item_checksum, seconds=time.monotonic() - started)


async def clean_up_abandoned(session: AsyncSession) -> int | None:
    """A job cancelled while its worker held the lease is the worker's to clean up; if that worker died,
    its lease runs out with the partial payload still there. Remove what it wrote and release the job
    (then it may be retried); returns its migration_id, or None when there is none."""
    job = await session.scalar(
        select(Migration)
        .where(
            Migration.status == MigrationStatus.CANCELLED,
            Migration.lease_owner.is_not(None),
            Migration.lease_expires < func.now(),
        )
        .order_by(Migration.lease_expires)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    if job is None:
        return None
    log.info("migration %s: removing what the cancelled copy of %s left behind", job.migration_id, job.lease_owner)
    await discard_destination(session, job)
    job.lease_owner = job.lease_expires = None
    return job.migration_id


async def run_next(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, owner: str, site: Site | None = None
) -> int | None:
    """Claim and run one due job, with the due jobs like it when it is a small file's (a batch); or
    clean up after an abandoned cancelled one. Returns the (first) migration_id, or None when there is
    nothing to do."""
    async with transaction(sessionmaker, actor=ACTOR) as session:
        if (abandoned := await clean_up_abandoned(session)) is not None:
            return abandoned
    async with transaction(sessionmaker, actor=ACTOR) as session:
        job = await claim(session, owner, settings.migration_lease_seconds, site)
        companions = (
            [] if job is None else await claim_companions(session, owner, settings.migration_lease_seconds, job)
        )
    if job is None:
        return None
    if companions:
        log.info("migrations %s and %d more: one batch, by %s", job.migration_id, len(companions), owner)
        await Batch(sessionmaker, settings, owner, [job, *companions]).run()
        return job.migration_id
    log.info("migration %s: attempt %d by %s", job.migration_id, job.attempts, owner)
    await Job(sessionmaker, settings, owner, job).run()
    return job.migration_id


# A batch: due copies of single small files between the same two storages, copied together (one read,
# one write and durability barrier, one verification per file batch) and recorded in one transaction.
BATCH_JOBS = 1000
BATCH_JOB_BYTES = 64 * 1024 * 1024


async def claim_companions(
    session: AsyncSession, owner: str, lease_seconds: float, first: Migration
) -> list[Migration]:
    """More due copies like ``first`` for one batch (the same storages, a single file up to SMALL_FILE
    bytes, not a move), up to BATCH_JOBS and BATCH_JOB_BYTES; none when ``first`` is not such a copy."""
    if first.move or first.bytes_total is None or first.bytes_total > SMALL_FILE:
        return []
    source, destination = (
        await session.get(Storage, first.source_storage_id),
        await session.get(Storage, first.destination_storage_id),
    )
    if source is None or destination is None or await sites.link_rate(session, source, destination):
        return []  # a batch is not throttled: over a link with a bandwidth cap, copies go one by one
    if await session.scalar(select(ITEMS.c.item_type).where(ITEMS.c.uid == first.source_uid)) is not ItemType.FILE:
        return []
    now = func.now()
    candidates = (
        await session.execute(
            select(Migration.migration_id, Migration.bytes_total)
            .join(ITEMS, ITEMS.c.uid == Migration.source_uid)
            .where(
                Migration.status == MigrationStatus.PENDING,
                Migration.next_attempt_at <= now,
                Migration.source_storage_id == first.source_storage_id,
                Migration.destination_storage_id == first.destination_storage_id,
                Migration.move.is_(False),
                Migration.bytes_total <= SMALL_FILE,
                ITEMS.c.item_type == ItemType.FILE,
            )
            .order_by(Migration.next_attempt_at, Migration.migration_id)
            .limit(BATCH_JOBS - 1)
            .with_for_update(of=Migration, skip_locked=True)
        )
    ).all()
    chosen, room = [], BATCH_JOB_BYTES - first.bytes_total
    for candidate in candidates:
        if candidate.bytes_total > room:
            break
        room -= candidate.bytes_total
        chosen.append(candidate.migration_id)
    if not chosen:
        return []
    claimed = await session.scalars(
        update(Migration)
        .where(Migration.migration_id == any_(chosen))
        .values(
            status=MigrationStatus.RUNNING,
            lease_owner=owner,
            lease_expires=now + datetime.timedelta(seconds=lease_seconds),
            attempts=Migration.attempts + 1,
        )
        .returning(Migration),
        execution_options={"populate_existing": True},
    )
    return list(claimed)


class Batch:
    """Claimed copies of small single files between two storages, run together: each file still
    verified, each job its own outcome (one refused fails alone, retried or not as its error says),
    the successes recorded in one transaction (their history and notifications by the triggers)."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, owner: str, jobs: list[Migration]
    ) -> None:
        self.sessionmaker, self.settings, self.owner = sessionmaker, settings, owner
        self.jobs = jobs
        self.ids = [job.migration_id for job in jobs]

    def _ours(self, ids: list[int]) -> Any:
        """These jobs, where this worker still runs them (not cancelled, not taken over)."""
        return and_(
            Migration.migration_id == any_(ids),
            Migration.lease_owner == self.owner,
            Migration.status == MigrationStatus.RUNNING,
        )

    def _alone(self, job: Migration) -> Job:
        return Job(self.sessionmaker, self.settings, self.owner, job)

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            await self._release()
            raise

    async def _run(self) -> None:
        started = time.monotonic()
        async with transaction(self.sessionmaker, actor=ACTOR) as session:
            uids = [job.source_uid for job in self.jobs] + [job.destination_uid for job in self.jobs]
            columns = ("uid", "item_state", "item_type", "uri", "item_size", "item_checksum", "checksum_method")
            query = select(*(ITEMS.c[name] for name in columns)).where(ITEMS.c.uid == any_(uids))
            rows = {row.uid: row for row in await session.execute(query)}
            source_storage = await session.get(Storage, self.jobs[0].source_storage_id)
            destination_storage = await session.get(Storage, self.jobs[0].destination_storage_id)
            assert source_storage is not None and destination_storage is not None
            source_backend = await storage_backend(session, source_storage)
            destination_backend = await storage_backend(session, destination_storage)
        batched, alone = [], []
        for job in self.jobs:
            source, target = rows.get(job.source_uid), rows.get(job.destination_uid)
            ready = source is not None and source.item_state is ItemState.READY and source.item_type is ItemType.FILE
            if ready and target is not None and target.item_state is ItemState.INITIALISED:
                batched.append((job, source, target))
            else:
                alone.append(job)  # its own path says why it cannot be copied
        outcomes: list[FileCopied | TransferError] = []
        if batched:
            method = batched[0][1].checksum_method
            same = [entry for entry in batched if entry[1].checksum_method is method]
            alone += [job for job, source, _ in batched if source.checksum_method is not method]
            batched = same
            pairs = [
                FilePair(
                    source.uri,
                    target.uri,
                    source.item_size or 0,
                    expected=source.item_checksum if method is not ChecksumMethod.NONE else None,
                )
                for _, source, target in batched
            ]
            async with source_backend as reader, destination_backend as writer:
                outcomes = await copy_files(reader, writer, pairs, method=method, on_batch=self._renew)
        succeeded = [
            (job, outcome)
            for (job, _, _), outcome in zip(batched, outcomes, strict=True)
            if isinstance(outcome, FileCopied)
        ]
        await self._succeed(succeeded, time.monotonic() - started)
        for (job, _, _), outcome in zip(batched, outcomes, strict=True):
            if isinstance(outcome, PayloadExists):
                alone.append(job)  # maybe an earlier attempt's complete copy, which its own path adopts
            elif isinstance(outcome, TransferError):
                await self._alone(job)._fail(f"{type(outcome).__name__}: {outcome.message}", retry=outcome.transient)
        for job in alone:
            await self._alone(job).run()

    async def _renew(self, moved: int) -> None:
        """Each file batch done: the leases of the whole batch renewed."""
        async with transaction(self.sessionmaker, actor=ACTOR) as session:
            await session.execute(
                update(Migration)
                .where(self._ours(self.ids))
                .values(lease_expires=func.now() + datetime.timedelta(seconds=self.settings.migration_lease_seconds))
            )

    async def _succeed(self, succeeded: list[tuple[Migration, FileCopied]], seconds: float) -> None:
        if not succeeded:
            return
        async with transaction(self.sessionmaker, actor=ACTOR) as session:
            oids = sorted({job.oid for job, _ in succeeded})
            # Every writer locks an item's replicas in one order (by uid): these items' all at once.
            await session.execute(
                select(ITEMS.c.uid).where(ITEMS.c.oid == any_(oids)).order_by(ITEMS.c.uid).with_for_update()
            )
            ours = set(
                await session.scalars(
                    select(Migration.migration_id)
                    .where(self._ours([job.migration_id for job, _ in succeeded]))
                    .with_for_update()
                )
            )
            done = [
                {
                    "id": job.migration_id,
                    "uid": str(job.destination_uid),
                    "size": copied.bytes,
                    "checksum": copied.checksum,
                }
                for job, copied in succeeded
                if job.migration_id in ours
            ]
            if done:
                document = msgspec.json.encode(done).decode()
                await make_ready(session, done)
                await session.execute(
                    text(_JOBS_SUCCEEDED),
                    {"rows": document, "seconds": round(seconds, 3), "worker": self.owner, "count": len(done)},
                )
            for job, _ in succeeded:
                if job.migration_id not in ours:  # cancelled while it was copied: the cancellation wins
                    cancelled = await session.get(Migration, job.migration_id)
                    if cancelled is not None and cancelled.status is MigrationStatus.CANCELLED:
                        await discard_destination(session, cancelled)
                        if cancelled.lease_owner == self.owner:
                            cancelled.lease_owner = cancelled.lease_expires = None
            link = await sites.link_of(session, self.jobs[0].source_storage_id, self.jobs[0].destination_storage_id)
        moved = sum(entry["size"] for entry in done)
        recorded = {entry["id"] for entry in done}
        through = sum(copied.bytes_through for job, copied in succeeded if job.migration_id in recorded)
        metrics.COPIED_BYTES.inc(moved)
        metrics.COPIED_THROUGH.inc(through)
        metrics.LINK_BYTES.labels(*link).inc(moved)
        metrics.COPY_SECONDS.observe(seconds)
        metrics.COPIES.labels(MigrationStatus.SUCCEEDED.value).inc(len(done))
        log.info("migrations: %d copied in one batch (%d bytes, %.2f s)", len(done), moved, seconds)

    async def _release(self) -> None:
        """Shutting down mid-batch: every job still ours goes back to the queue, no attempt counted."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5), transaction(self.sessionmaker, actor=ACTOR) as session:
                await session.execute(
                    update(Migration)
                    .where(self._ours(self.ids))
                    .values(
                        status=MigrationStatus.PENDING,
                        attempts=Migration.attempts - 1,
                        next_attempt_at=func.now(),
                        lease_owner=None,
                        lease_expires=None,
                        bytes_done=0,
                    )
                )


_JOBS_SUCCEEDED = """
    UPDATE migration AS m
    SET status = 'SUCCEEDED', complete = true, completion_date = now(), bytes_done = v.size,
        bytes_total = v.size, last_error = NULL, lease_owner = NULL, lease_expires = NULL,
        job_status = CAST('{"finished": true, "success": true, "error": ""}' AS jsonb),
        job_stats = jsonb_build_object('files', 1, 'bytes', v.size, 'seconds', CAST(:seconds AS float8),
                                       'checksum', v.checksum, 'worker', CAST(:worker AS text),
                                       'batch', CAST(:count AS int))
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(id bigint, size bigint, checksum text)
    WHERE m.migration_id = v.id
"""


# How often a process with copy workers says it is running, and looks for copies none can place.
PRESENCE_SECONDS = 10.0


class MigrationWorkers:
    """``settings.migration_workers`` loops in this process, each running one job at a time, at
    ``settings.worker_location`` when it is set; and one that keeps the process's presence (where its
    workers run) and reports the queued copies no running worker can reach."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.wakeup = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.process = new_owner()
        self.site: Site | None = None
        self.placed = asyncio.Event()  # set once the site is known and announced

    def start(self) -> None:
        if not self.settings.migration_workers:
            return
        self.tasks.append(asyncio.create_task(self._presence(), name="dlm-migration-presence"))
        for index in range(self.settings.migration_workers):
            self.tasks.append(asyncio.create_task(self._loop(new_owner(index)), name=f"dlm-migration-{index}"))

    async def _presence(self) -> None:
        try:
            while True:
                try:
                    async with transaction(self.sessionmaker, actor=ACTOR) as session:
                        if self.settings.worker_location and self.site is None:
                            self.site = await sites.find_site(session, self.settings.worker_location)
                        await sites.announce(session, self.process, self.site, self.settings.migration_workers)
                    self.placed.set()
                    async with transaction(self.sessionmaker, actor=ACTOR) as session:
                        await sites.place_copies(session)
                except asyncio.CancelledError:
                    raise
                except DLMError as exc:
                    log.warning("migration workers: %s", exc.message)
                except Exception:
                    log.exception("migration workers: keeping their presence failed")
                await asyncio.sleep(PRESENCE_SECONDS)
        finally:
            with contextlib.suppress(Exception):
                async with transaction(self.sessionmaker, actor=ACTOR) as session:
                    await sites.withdraw(session, self.process)

    def wake(self) -> None:
        """A job was queued in this process: look now rather than at the next poll."""
        self.wakeup.set()

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()

    async def _loop(self, owner: str) -> None:
        await self.placed.wait()  # a worker with a location claims only once it knows where it is
        while True:
            try:
                ran = await run_next(self.sessionmaker, self.settings, owner, self.site)
            except asyncio.CancelledError:
                raise
            except Conflict as exc:  # a deadlock or serialisation failure, rolled back: try again
                log.warning("migration worker %s: %s", owner, exc.message)
                ran = None
            except ServiceUnavailable as exc:
                log.warning("migration worker %s: cannot reach the queue: %s", owner, exc.message)
                ran = None
            except Exception:
                log.exception("migration worker %s: unexpected error", owner)
                ran = None
            if ran is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), self.settings.migration_poll_seconds)
                self.wakeup.clear()
