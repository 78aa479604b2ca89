"""Copy a payload (a file, or a container recursively) between any two backends, verified.

Bytes stream from the source through a checksum into the destination's atomic write, one chunk at a
time. The small files of a container travel in batches instead: read whole, checksummed, written and
made durable together (a container of thousands of small files is bound by per-file costs, not bytes).
Each file is then read back from the destination and its checksum compared with the one computed from
the bytes that left the source, unless the storage confirmed the file's bytes itself (S3 answers an
upload with the MD5 of what it stored). Any failure removes what the copy wrote at the destination
URI, and only that. A file whose two storages can copy it between themselves (two buckets of one S3
service: ``copy_within``) is copied there, none of its bytes through DLM, and verified by the checksum
the storage computed of the copy.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import msgspec

from dlm.checksum import checksum_of, new_hasher
from dlm.enums import ChecksumMethod
from dlm.transfer.base import Backend, ChecksumMismatch, Entry, SmallFile, TransferError
from dlm.transfer.batches import FILES_AT_ONCE

Progress = Callable[[int, int], Awaitable[None]]
# A member of a container up to this size is copied in a batch with others.
SMALL_FILE = 1024 * 1024
# What a batch may hold in memory, and how many files it may have: each batch costs one flush of the
# destination, and two are in flight at once.
BATCH_BYTES = 16 * 1024 * 1024
BATCH_FILES = 1000
BATCHES_AT_ONCE = 2
# Bytes a copy moves per step. Smaller than a download's (CHUNK_SIZE): a copy to S3 also holds the part
# it is filling, and with 1 MiB steps two concurrent 2 GiB copies held 50 MiB less between POSIX and S3,
# and S3→POSIX ran faster (bench/copy_memory.py); a 1 GiB POSIX copy is as fast as with 8 MiB.
COPY_CHUNK_SIZE = 1024 * 1024


class CopyResult(msgspec.Struct, frozen=True):
    files: int
    bytes: int
    # The checksum of a single-file payload (None for a container: its members are verified one by one).
    checksum: str | None
    seconds: float
    # Symlinks to directories inside a container, not followed: what they lead to was not copied.
    unfollowed: tuple[str, ...] = ()
    # Of ``bytes``, those that passed through DLM (None: all; a copy inside one S3 service, none).
    through: int | None = None

    @property
    def bytes_through(self) -> int:
        return self.bytes if self.through is None else self.through


class Throttle:
    """Keep a stream at or below ``rate`` bytes/s (0: unlimited) so bulk work leaves room for others."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.started = time.monotonic()
        self.done = 0

    async def account(self, size: int) -> None:
        if not self.rate:
            return
        self.done += size
        ahead = self.done / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            await asyncio.sleep(ahead)


async def list_payload(backend: Backend, uri: str) -> list[Entry]:
    return [entry async for entry in backend.walk(uri)]


def member_uri(uri: str, entry: Entry) -> str:
    return f"{uri}/{entry.path}" if entry.path else uri


async def copy_payload(
    source: Backend,
    source_uri: str,
    destination: Backend,
    destination_uri: str,
    *,
    method: ChecksumMethod = ChecksumMethod.CRC32C,
    on_progress: Progress | None = None,
    max_bytes_per_second: int = 0,
    expected_checksum: str | None = None,
) -> CopyResult:
    """Copy and verify. ``expected_checksum`` (the registered checksum of a single file, by ``method``)
    also catches a source that has rotted since it was registered."""
    if method is ChecksumMethod.NONE:
        method = ChecksumMethod.CRC32C
    started = time.monotonic()
    entries = await list_payload(source, source_uri)
    total = sum(entry.size for entry in entries)
    if len(entries) == 1 and not entries[0].path and (within := getattr(destination, "copy_within", None)):
        if on_progress:
            await on_progress(0, total)
        server_side = await within(source, source_uri, destination_uri, total, method)
        if server_side is not None:
            checksum, through = server_side
            await _check_copied(destination, destination_uri, checksum, expected_checksum, method, source_uri)
            if on_progress:
                await on_progress(total, total)
            return CopyResult(
                files=1, bytes=total, checksum=checksum, seconds=time.monotonic() - started, through=through
            )
    throttle = Throttle(max_bytes_per_second)
    chunk_size = (
        COPY_CHUNK_SIZE if not max_bytes_per_second else max(64 * 1024, min(COPY_CHUNK_SIZE, max_bytes_per_second // 4))
    )
    done = 0
    checksums: dict[str, str] = {}
    # What this copy put at the destination: on failure, that goes (and nothing someone else put there).
    written: list[str] = []
    if on_progress:
        await on_progress(0, total)

    async def copy_file(entry: Entry) -> None:
        nonlocal done
        hasher = new_hasher(method)

        async def counted() -> AsyncIterator[bytes]:
            nonlocal done
            async for chunk in source.read(member_uri(source_uri, entry), chunk_size):
                hasher.update(chunk)
                yield chunk
                done += len(chunk)
                await throttle.account(len(chunk))
                if on_progress:
                    await on_progress(done, total)

        target = member_uri(destination_uri, entry)
        await destination.write(target, counted(), size_hint=entry.size, mode=entry.mode)
        written.append(target)
        checksum = hasher.hexdigest()
        if not entry.path:
            _check_source(source_uri, checksum, expected_checksum, method)
        # What the storage confirmed it stored (S3: the ETag of the upload) needs no reading back.
        read_back = checksum if destination.stored_as_sent(target) else await destination.checksum(target, method)
        if read_back != checksum:
            raise ChecksumMismatch(
                f"destination {target!r} reads back with {method.value} {read_back}, the source sent {checksum}"
            )
        checksums[entry.path] = checksum

    async def copy_batch(batch: list[Entry]) -> None:
        nonlocal done
        pairs = [
            FilePair(member_uri(source_uri, entry), member_uri(destination_uri, entry), entry.size, entry.mode)
            for entry in batch
        ]
        copied = await copy_small(source, destination, pairs, method, written)
        size = sum(length for _, length in copied)
        done += size
        await throttle.account(size)
        if on_progress:
            await on_progress(done, total)
        for entry, (checksum, _) in zip(batch, copied, strict=True):
            checksums[entry.path] = checksum

    async def copy_files(queue: Iterator[Entry]) -> None:
        for entry in queue:
            await copy_file(entry)

    async def copy_batches(queue: Iterator[list[Entry]]) -> None:
        for batch in queue:
            await copy_batch(batch)

    single = len(entries) == 1 and not entries[0].path
    small = [] if single else [entry for entry in entries if entry.size <= SMALL_FILE]
    large = [entry for entry in entries if single or entry.size > SMALL_FILE]
    batch_bytes = BATCH_BYTES if not max_bytes_per_second else chunk_size
    try:
        files, batches = iter(large), iter(_batches(small, batch_bytes))
        async with asyncio.TaskGroup() as group:
            for _ in range(min(FILES_AT_ONCE, len(large))):
                group.create_task(copy_files(files))
            for _ in range(BATCHES_AT_ONCE if small else 0):
                group.create_task(copy_batches(batches))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            await _remove_what_was_written(destination, destination_uri, written)
        # One file's error is the copy's error, not a group of one.
        if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            raise exc.exceptions[0] from None
        raise
    return CopyResult(
        files=len(entries),
        bytes=done,
        checksum=checksums[""] if single else None,
        seconds=time.monotonic() - started,
        unfollowed=tuple(getattr(source, "unfollowed", ())),
    )


async def _check_copied(
    destination: Backend, uri: str, checksum: str, expected: str | None, method: ChecksumMethod, source_uri: str
) -> None:
    """A copy the storage made itself (``copy_within``) is verified by the checksum the storage computed
    of what it wrote, against the one registered; a mismatch removes it."""
    try:
        _check_source(source_uri, checksum, expected, method)
    except ChecksumMismatch:
        with contextlib.suppress(Exception):
            await destination.delete(uri)
        raise


def _check_source(source_uri: str, checksum: str, expected: str | None, method: ChecksumMethod) -> None:
    """Refuse a source whose bytes no longer have the checksum registered for them (when one was)."""
    if expected and checksum != expected:
        raise ChecksumMismatch(f"source {source_uri!r} has {method.value} {checksum}, but {expected} was registered")


class FilePair(msgspec.Struct, frozen=True):
    """A small file to copy: where it is, where it goes, its size, its permissions there."""

    source: str
    destination: str
    size: int = 0
    mode: int | None = None
    # The checksum registered for the source (by the copy's method): a source that rotted since is refused.
    expected: str | None = None


async def copy_small(
    source: Backend, destination: Backend, pairs: list[FilePair], method: ChecksumMethod, written: list[str]
) -> list[tuple[str, int]]:
    """Copy a batch of small files, all or none: read in one go, checksummed, written and made durable
    together, then verified (read back in one go, unless the storage confirmed what it stored). Returns
    each file's checksum and size; what was written is added to ``written`` (for the caller to remove
    should the copy fail, here or later)."""
    contents = await source.read_small([pair.source for pair in pairs], SMALL_FILE)
    sent = await asyncio.to_thread(_checksums, contents, method)
    sizes = [len(content) for content in contents]
    for pair, checksum in zip(pairs, sent, strict=True):
        _check_source(pair.source, checksum, pair.expected, method)
    targets = [pair.destination for pair in pairs]
    writing = asyncio.ensure_future(
        destination.write_small(
            [SmallFile(pair.destination, content, pair.mode) for pair, content in zip(pairs, contents, strict=True)]
        )
    )
    try:
        await asyncio.shield(writing)
    finally:
        if not writing.done():
            # Cancelled meanwhile: a thread cannot be stopped half-way, so the batch is let finish (it is
            # small) and its files are then removed with the rest of what the copy wrote.
            with contextlib.suppress(BaseException):
                await writing
        if writing.done() and not writing.cancelled() and writing.exception() is None:
            written.extend(targets)
    writing.result()
    del contents
    # What the storage confirmed it stored (S3: the ETag of each PUT) needs no reading back.
    unconfirmed = [index for index, target in enumerate(targets) if not destination.stored_as_sent(target)]
    read_back = list(sent)
    if unconfirmed:
        found = await destination.checksum_many([targets[index] for index in unconfirmed], method)
        for index, checksum in zip(unconfirmed, found, strict=True):
            read_back[index] = checksum
    for target, checksum, found in zip(targets, sent, read_back, strict=True):
        if found != checksum:
            raise ChecksumMismatch(
                f"destination {target!r} reads back with {method.value} {found}, the source sent {checksum}"
            )
    return list(zip(sent, sizes, strict=True))


class FileCopied(msgspec.Struct, frozen=True):
    checksum: str
    bytes: int
    # Of ``bytes``, those that passed through DLM (None: all; a copy inside one S3 service, none).
    through: int | None = None

    @property
    def bytes_through(self) -> int:
        return self.bytes if self.through is None else self.through


# Copies inside one storage service (``copy_within``) under way at once for a batch of small files,
# and how many go between two calls of ``on_batch``.
WITHIN_AT_ONCE = 16
WITHIN_PER_STEP = 100


async def copy_files(
    source: Backend,
    destination: Backend,
    pairs: list[FilePair],
    *,
    method: ChecksumMethod = ChecksumMethod.CRC32C,
    on_batch: Callable[[int], Awaitable[None]] | None = None,
) -> list[FileCopied | TransferError]:
    """Copy many small files, each its own payload (the items of a batch of copies), in batches as a
    container's members go; each file's outcome is its own: a batch that fails is undone and copied
    again file by file, so one file refused (taken at the destination, rotted at the source) fails
    alone. ``on_batch(bytes)`` is awaited after each batch (progress, a lease renewed)."""
    if method is ChecksumMethod.NONE:
        method = ChecksumMethod.CRC32C
    if pairs and (within := getattr(destination, "copy_within", None)) is not None:
        copied_within = await _copy_each_within(within, source, destination, pairs, method, on_batch)
        if copied_within is not None:
            return copied_within
    outcomes: list[FileCopied | TransferError] = []
    for batch in _batches(pairs, BATCH_BYTES):
        written: list[str] = []
        try:
            copied = [FileCopied(*found) for found in await copy_small(source, destination, batch, method, written)]
        except TransferError:
            await _delete_all(destination, written)
            copied = []
            for pair in batch:  # one by one: which of them is at fault, and the others copied
                one: list[str] = []
                try:
                    [found] = await copy_small(source, destination, [pair], method, one)
                    copied.append(FileCopied(*found))
                except TransferError as exc:
                    await _delete_all(destination, one)
                    copied.append(exc)
        except BaseException:
            await _delete_all(destination, written)
            raise
        outcomes += copied
        if on_batch is not None:
            await on_batch(sum(outcome.bytes for outcome in copied if isinstance(outcome, FileCopied)))
    return outcomes


async def _copy_each_within(
    within: Callable[..., Awaitable[tuple[str, int] | None]],
    source: Backend,
    destination: Backend,
    pairs: list[FilePair],
    method: ChecksumMethod,
    on_batch: Callable[[int], Awaitable[None]] | None,
) -> list[FileCopied | TransferError] | None:
    """The files copied by their storage itself (two buckets of one S3 service), WITHIN_AT_ONCE at a
    time, each verified by the checksum the storage computed; None, with nothing copied, when the two
    storages cannot (the first file says)."""

    async def one(pair: FilePair) -> FileCopied | TransferError | None:
        try:
            made = await within(source, pair.source, pair.destination, pair.size, method)
            if made is None:
                return None
            await _check_copied(destination, pair.destination, made[0], pair.expected, method, pair.source)
        except TransferError as exc:
            return exc
        return FileCopied(made[0], pair.size, through=made[1])

    first = await one(pairs[0])
    if first is None:
        return None
    outcomes: list[FileCopied | TransferError | None] = [first]
    slots = asyncio.Semaphore(WITHIN_AT_ONCE)

    async def limited(pair: FilePair) -> FileCopied | TransferError | None:
        async with slots:
            return await one(pair)

    for start in range(1, len(pairs), WITHIN_PER_STEP):
        step = await asyncio.gather(*(limited(pair) for pair in pairs[start : start + WITHIN_PER_STEP]))
        outcomes += step
        if on_batch is not None:
            await on_batch(sum(outcome.bytes for outcome in step if isinstance(outcome, FileCopied)))
    assert all(outcome is not None for outcome in outcomes), "the same two storages, every file alike"
    return outcomes  # type: ignore[return-value]


async def _delete_all(destination: Backend, uris: list[str]) -> None:
    for uri in uris:
        with contextlib.suppress(Exception):
            await destination.delete(uri)


Sized = TypeVar("Sized", Entry, FilePair)


def _batches(entries: list[Sized], batch_bytes: int) -> Iterator[list[Sized]]:
    batch: list[Sized] = []
    size = 0
    for entry in entries:
        if batch and (size + entry.size > batch_bytes or len(batch) >= BATCH_FILES):
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += entry.size
    if batch:
        yield batch


def _checksums(contents: list[bytes], method: ChecksumMethod) -> list[str]:
    return [checksum_of(content, method) for content in contents]


async def _remove_what_was_written(destination: Backend, destination_uri: str, written: list[str]) -> None:
    """Undo a failed copy: its files (partial ones remove themselves), then whatever directories it
    made, if nothing else is in them. What someone else put there stays."""
    for uri in written:
        await destination.delete(uri)
    try:
        remaining = [entry async for entry in destination.walk(destination_uri)]
    except TransferError:
        return  # nothing there at all
    if not remaining:
        await destination.delete(destination_uri)
