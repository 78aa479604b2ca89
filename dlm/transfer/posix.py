"""Payloads on a local (POSIX) file system: a directory tree under the storage's root."""

import asyncio
import contextlib
import ctypes
import errno
import os
import shutil
import stat
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Self, TypeVar

import aiofiles

from dlm.checksum import descriptor_checksum, file_checksum
from dlm.enums import ChecksumMethod
from dlm.errors import DLMError
from dlm.transfer.base import (
    CHUNK_SIZE,
    Entry,
    PayloadChanged,
    PayloadExists,
    PayloadInfo,
    PayloadMissing,
    SmallFile,
    StorageRefused,
    StorageUnreachable,
    TransferError,
)
from dlm.transfer.paths import Resolver, check_relative_uri

PARTIAL_SUFFIX = ".dlm-partial"
_WALK_BATCH = 1000
# stat_many lists a directory once where it asks about at least this many of its names, unless the
# listing runs past this many entries per name asked about (then a stat each is cheaper).
_LISTED_FROM = 8
_LISTING_PER_NAME = 16
# Errors that will not go away by trying again: the copy fails at once, with the reason.
_REFUSED = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.ENAMETOOLONG,
    errno.ELOOP,
}
# Where a file system has no hard links, publishing falls back to a checked rename.
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK}
T = TypeVar("T")


# A write this small is gathered in memory and done in one thread hop (open, write, fsync, rename):
# for a container of many small files the hops, not the bytes, are what costs.
SMALL_WRITE = 1024 * 1024


class PosixBackend:
    def __init__(self, root_directory: str) -> None:
        self.root = Path(root_directory)
        self._real_root: Path | None = None
        # Symlinks to directories the walks met and did not follow (a container's copy says so).
        self.unfollowed: list[str] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def local_path(self, uri: str) -> Path:
        return self.resolver()(uri)

    def resolver(self) -> Resolver:
        """Local paths of URIs; one resolver for a batch resolves each directory once."""
        if self._real_root is None:
            self._real_root = self.root.resolve()
        return Resolver(self._real_root)

    def _error(self, exc: OSError, uri: str) -> TransferError:
        reason = exc.strerror or str(exc)
        if not self.root.is_dir():
            # An unmounted or vanished volume may come back: worth retrying, never worth recreating.
            return StorageUnreachable(f"storage root {str(self.root)!r} is not there")
        if exc.errno == errno.ENOENT:
            return PayloadMissing(f"no payload at {uri!r}")
        if exc.errno == errno.EEXIST:
            return PayloadExists(f"{uri!r} exists already; DLM never overwrites a payload")
        if exc.errno in _REFUSED:
            return StorageRefused(f"{uri!r}: {reason}")
        return StorageUnreachable(f"{uri!r}: {reason}")

    def _stat(self, uri: str, resolver: Resolver | None = None) -> PayloadInfo | None:
        path = (resolver or self.resolver())(uri)
        try:
            info = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._error(exc, uri) from None
        if stat.S_ISDIR(info.st_mode):
            return PayloadInfo(size=None, is_container=True, modified=info.st_mtime)
        return PayloadInfo(size=info.st_size, is_container=False, modified=info.st_mtime)

    async def stat(self, uri: str) -> PayloadInfo | None:
        return await asyncio.to_thread(self._stat, uri)

    async def stat_many(self, uris: list[str]) -> list[PayloadInfo | None]:
        """One thread hop for the whole batch, each directory resolved once: bulk registration and a
        replication pass stat thousands of small files."""

        def stat_each() -> list[PayloadInfo | None]:
            resolver = self.resolver()
            by_directory: dict[Path, list[tuple[int, str]]] = {}
            for index, uri in enumerate(uris):
                directory, name = resolver.place(uri)
                by_directory.setdefault(directory, []).append((index, name))
            found: list[PayloadInfo | None] = [None] * len(uris)
            for directory, wanted in by_directory.items():
                present = self._names_in(directory, len(wanted)) if len(wanted) >= _LISTED_FROM else None
                for index, name in wanted:
                    if present is None or name in present:
                        found[index] = self._stat(uris[index], resolver)
            return found

        return await asyncio.to_thread(stat_each)

    def _names_in(self, directory: Path, wanted: int) -> set[str] | None:
        """The names in a directory, where listing it is cheaper than a stat per wanted name (most of
        them absent: the destinations of copies being planned); None where it holds far more."""
        names: set[str] = set()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    names.add(entry.name)
                    if len(names) > _LISTING_PER_NAME * wanted:
                        return None
        except (FileNotFoundError, NotADirectoryError):
            return set()
        except OSError:
            return None  # each stat says what is wrong
        return names

    async def read(
        self, uri: str, chunk_size: int = CHUNK_SIZE, *, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """A file up to ``chunk_size`` in one thread hop; a larger one streamed chunk by chunk."""
        whole_file = offset == 0 and length is None

        # Resolving a path costs a system call per component: done in the thread, off the event loop.
        def read_small() -> tuple[Path, bytes | None]:
            path = self.local_path(uri)
            if not whole_file or os.stat(path).st_size >= chunk_size:
                return path, None
            with open(path, "rb") as stream:
                return path, stream.read()

        try:
            path, whole = await asyncio.to_thread(read_small)
            if whole is not None:
                if whole:
                    yield whole
                return
            left = length
            async with aiofiles.open(path, "rb") as stream:
                if offset:
                    await stream.seek(offset)
                while left is None or left > 0:
                    chunk = await stream.read(chunk_size if left is None else min(chunk_size, left))
                    if not chunk:
                        break
                    if left is not None:
                        left -= len(chunk)
                    yield chunk
        except IsADirectoryError:
            raise StorageRefused(f"{uri!r} is a directory, not a file") from None
        except OSError as exc:
            raise self._error(exc, uri) from None

    async def write(
        self, uri: str, chunks: AsyncIterable[bytes], *, size_hint: int | None = None, mode: int | None = None
    ) -> int:
        """Write next to the target under a partial name, fsync, then give it the target's name (never
        over an existing file: that is a StorageRefused): a crash leaves no file or the whole file, plus
        at worst a ``.dlm-partial`` that the next attempt at the same URI replaces (or deleting the URI
        removes). Up to SMALL_WRITE bytes are gathered
        and written in one thread hop; beyond that the bytes stream to disk as they come."""
        check_relative_uri(uri)  # a bad URI fails before a byte is consumed; resolving waits for the thread
        target = partial = Path()
        buffered: list[bytes] = []
        buffered_size = written = 0
        stream: Any = None

        def prepare() -> None:
            nonlocal target, partial
            target = self.local_path(uri)
            partial = target.with_name(f".{target.name}{PARTIAL_SUFFIX}")
            if not self.root.is_dir():
                raise FileNotFoundError(errno.ENOENT, "storage root missing")
            target.parent.mkdir(parents=True, exist_ok=True)

        def write_small() -> None:
            prepare()
            with open(partial, "wb", opener=_create_partial) as small:
                small.writelines(buffered)
                small.flush()
                os.fsync(small.fileno())

        def publish() -> None:
            if mode is not None:
                os.chmod(partial, stat.S_IMODE(mode))
            _publish_without_overwriting(partial, target)
            _fsync_directory(target.parent)

        try:
            async for chunk in chunks:
                written += len(chunk)
                if stream is None and buffered_size + len(chunk) <= SMALL_WRITE:
                    buffered.append(chunk)
                    buffered_size += len(chunk)
                    continue
                if stream is None:
                    await asyncio.to_thread(prepare)
                    stream = await aiofiles.open(partial, "wb", opener=_create_partial)
                    if size_hint:
                        # As rclone does: the file's blocks reserved at once make the writes that follow
                        # several times faster on ext4, and a full disk is known before a byte is sent.
                        await asyncio.to_thread(_reserve, stream.fileno(), size_hint)
                    for early in buffered:
                        await stream.write(early)
                    buffered.clear()
                await stream.write(chunk)
            if stream is None:
                await asyncio.to_thread(lambda: (write_small(), publish()))
            else:
                await stream.flush()
                if size_hint and written < size_hint:  # the source shrank: no reserved tail stays behind
                    await asyncio.to_thread(os.ftruncate, stream.fileno(), written)
                await asyncio.to_thread(os.fsync, stream.fileno())
                await stream.close()
                await asyncio.to_thread(publish)
        except BaseException as exc:
            if stream is not None:
                with contextlib.suppress(OSError):
                    await stream.close()
            if partial.name:
                await asyncio.to_thread(_remove_quietly, partial)
            if isinstance(exc, OSError):
                raise self._error(exc, uri) from None
            raise
        return written

    async def read_small(self, uris: list[str], limit: int) -> list[bytes]:
        """Every file in one thread hop."""

        def read_all() -> list[bytes]:
            contents = self._read_each(uris, lambda descriptor: _read_up_to(descriptor, limit + 1))
            for uri, content in zip(uris, contents):
                if len(content) > limit:
                    raise PayloadChanged(f"{uri!r} grew to over {limit} bytes while it was being copied")
            return contents

        return await asyncio.to_thread(read_all)

    async def write_small(self, files: list[SmallFile]) -> None:
        """The batch in one thread hop: every file to its partial, one flush of the file system for all of
        them (syncfs: far cheaper than an fsync per file, and as durable), then each published as
        ``write`` publishes, and each directory synced once."""
        await asyncio.to_thread(self._write_small, files)

    def stored_as_sent(self, uri: str) -> bool:
        return False  # a file system confirms nothing: a copy reads its files back

    def _write_small(self, files: list[SmallFile]) -> None:
        resolver = self.resolver()
        made: list[tuple[str, str, str]] = []  # uri, partial, target
        published: list[str] = []
        directories: set[Path] = set()
        if not files:
            return
        batch = f"{files[0].uri} and {len(files) - 1} more" if len(files) > 1 else files[0].uri
        try:
            with self._errors_named(batch):
                # Opened before writing: syncfs reports write-back errors since the descriptor was opened.
                root = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for file in files:
                    with self._errors_named(file.uri):
                        # The last component is not resolved: the partial is created without following a
                        # link, and publishing never follows or replaces what is at the target's name.
                        directory, name = resolver.place(file.uri)
                        if directory not in directories:
                            os.makedirs(directory, exist_ok=True)
                            directories.add(directory)
                        partial, target = f"{directory}/.{name}{PARTIAL_SUFFIX}", f"{directory}/{name}"
                        descriptor = _create_partial(partial, 0)
                        made.append((file.uri, partial, target))
                        try:
                            _write_all(descriptor, file.content)
                            if file.mode is not None:
                                os.fchmod(descriptor, stat.S_IMODE(file.mode))
                        finally:
                            os.close(descriptor)
                with self._errors_named(batch):
                    _flush_file_system(root, [partial for _, partial, _ in made])
            finally:
                os.close(root)
            for uri, partial, target in made:
                with self._errors_named(uri):
                    _publish_without_overwriting(partial, target)
                published.append(target)
            with self._errors_named(batch):
                for directory in directories:
                    _fsync_directory(directory)
        except BaseException:
            for _, partial, _ in made:
                _remove_quietly(partial)
            for target in published:
                _remove_quietly(target)
            raise

    async def checksum_many(self, uris: list[str], method: ChecksumMethod) -> list[str]:
        return await asyncio.to_thread(
            self._read_each, uris, lambda descriptor: descriptor_checksum(descriptor, method)
        )

    def _read_each(self, uris: list[str], read: Callable[[int], T]) -> list[T]:
        """``read`` of each file, opened inside the root (blocking: call it from a thread)."""
        resolver = self.resolver()
        found = []
        for uri in uris:
            with self._errors_named(uri):
                descriptor = _open_inside(resolver, uri)
                try:
                    found.append(read(descriptor))
                finally:
                    os.close(descriptor)
        return found

    @contextlib.contextmanager
    def _errors_named(self, uri: str) -> Iterator[None]:
        """Inside the block, an OSError becomes the TransferError that names ``uri``."""
        try:
            yield
        except OSError as exc:
            raise self._error(exc, uri) from None

    async def delete(self, uri: str) -> bool:
        # Resolving the path (a system call per component) in the thread too: on the event loop it was a
        # third of an expiry pass's own CPU.
        return await asyncio.to_thread(self._delete, self.resolver(), uri)

    async def delete_many(self, uris: list[str]) -> dict[str, str]:
        """Every payload in one thread hop. These are expiry's, which no copy is writing (a copy in
        progress defers its item's expiry), so no partial file is looked for beside each (about a
        tenth of the time of deleting small files): one a crash left is the audit's to sweep
        (dlm.lifecycle.audit, partial files)."""

        def delete_all() -> dict[str, str]:
            resolver = self.resolver()
            failed = {}
            for uri in uris:
                try:
                    self._delete(resolver, uri, with_partial=False)
                except (TransferError, DLMError) as exc:
                    failed[uri] = exc.message
            return failed

        return await asyncio.to_thread(delete_all)

    def _delete(self, resolver: Resolver, uri: str, *, with_partial: bool = True) -> bool:
        path = resolver(uri)
        if with_partial:
            # A write cut short by a crash leaves its partial file beside the target: it goes too.
            _remove_quietly(f"{path.parent}/.{path.name}{PARTIAL_SUFFIX}")
        try:
            try:
                os.unlink(path)
            except (IsADirectoryError, PermissionError):  # Linux says EISDIR for a directory, others EPERM
                if not path.is_dir():
                    raise
                shutil.rmtree(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self._error(exc, uri) from None
        return True

    async def walk(self, uri: str = "") -> AsyncIterator[Entry]:
        start = self.local_path(uri) if uri else self.root.resolve()
        batches = self._walk_batches(start, uri)
        while batch := await asyncio.to_thread(next, batches, None):
            for entry in batch:
                yield entry

    def _walk_batches(self, start: Path, uri: str) -> Iterator[list[Entry]]:
        real_root = self.root.resolve()
        inside = Resolver(real_root)
        try:
            info = os.stat(start)
        except OSError as exc:
            raise self._error(exc, uri) from None
        if not stat.S_ISDIR(info.st_mode):
            yield [Entry(path="", size=info.st_size, mode=info.st_mode)]
            return
        batch: list[Entry] = []

        def translate(exc: OSError) -> None:
            raise self._error(exc, uri)

        for directory, directories, files in os.walk(start, onerror=translate):
            self.unfollowed += [
                Path(directory, name).relative_to(start).as_posix()
                for name in sorted(directories)
                if os.path.islink(os.path.join(directory, name))
            ]
            for name in sorted(files):
                if name.endswith(PARTIAL_SUFFIX):
                    continue
                path = Path(directory, name)
                relative = path.relative_to(start).as_posix()
                try:
                    inside(path.relative_to(real_root).as_posix())
                    info = os.stat(path)
                except DLMError:
                    raise StorageRefused(f"{uri}/{relative}: a symlink that points outside the storage root") from None
                except OSError as exc:
                    raise self._error(exc, f"{uri}/{relative}") from None
                batch.append(Entry(path=relative, size=info.st_size, mode=info.st_mode))
                if len(batch) >= _WALK_BATCH:
                    yield batch
                    batch = []
        if batch:
            yield batch

    async def check(self) -> None:
        """Raise the TransferError that says why the root cannot be used."""
        if not await asyncio.to_thread(self.root.is_dir):
            raise StorageUnreachable(f"storage root {str(self.root)!r} is not a directory on this DLM host")

    async def partial_files(self) -> list[tuple[str, float]]:
        """What interrupted writes left: per partial file, the uri it was being written for, and
        when it was last written (seconds since the epoch)."""

        def find() -> list[tuple[str, float]]:
            real_root = self.root.resolve()
            found = []
            for directory, _, files in os.walk(real_root):
                for name in files:
                    if name.startswith(".") and name.endswith(PARTIAL_SUFFIX):
                        path = Path(directory, name)
                        target = path.with_name(name[1 : -len(PARTIAL_SUFFIX)]).relative_to(real_root)
                        with contextlib.suppress(OSError):
                            found.append((target.as_posix(), path.lstat().st_mtime))
            return found

        return await asyncio.to_thread(find)

    async def remove_partial(self, uri: str) -> None:
        """Remove the partial file an interrupted write of ``uri`` left, and nothing else."""
        path = self.local_path(uri)
        await asyncio.to_thread(_remove_quietly, path.with_name(f".{path.name}{PARTIAL_SUFFIX}"))

    async def checksum(self, uri: str, method: ChecksumMethod) -> str:
        return await _in_thread(lambda: file_checksum(self.local_path(uri), method), self, uri)


async def _in_thread(function: Callable[[], T], backend: PosixBackend, uri: str) -> T:
    try:
        return await asyncio.to_thread(function)
    except OSError as exc:
        raise backend._error(exc, uri) from None


def _open_inside(resolver: Resolver, uri: str) -> int:
    """A descriptor reading the file at ``uri``; a symlink is followed only where it stays inside."""
    directory, name = resolver.place(uri)
    try:
        return os.open(f"{directory}/{name}", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
    return os.open(resolver(uri), os.O_RDONLY | os.O_CLOEXEC)


def _read_up_to(descriptor: int, size: int) -> bytes:
    chunks = []
    while size > 0 and (chunk := os.read(descriptor, size)):
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _write_all(descriptor: int, content: bytes) -> None:
    view = memoryview(content)
    while view:
        view = view[os.write(descriptor, view) :]


def _create_partial(path: str, flags: int) -> int:
    """Open a new partial file, never through a symlink: O_EXCL | O_NOFOLLOW, so a link planted in the
    storage under the partial's name cannot redirect the write outside it. A partial left by a crashed
    write (or such a link) is removed first; unlinking removes a link, never what it points to."""
    create = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, create, 0o666)
    except FileExistsError:
        os.unlink(path)
        return os.open(path, create, 0o666)


def _libc_function(name: str) -> Callable[..., int] | None:
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), name)  # type: ignore[no-any-return]
    except (AttributeError, OSError):
        return None  # not Linux, or a C library without it


_SYNCFS = _libc_function("syncfs")
_FALLOCATE = _libc_function("fallocate")
if _FALLOCATE is not None:
    _FALLOCATE.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]  # type: ignore[attr-defined]
_RENAMEAT2 = _libc_function("renameat2")
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _publish_without_overwriting(partial: str | Path, target: str | Path) -> None:
    """Give the partial file its name, atomically, unless something took that name meanwhile (another
    writer, a user): renameat2's RENAME_NOREPLACE fails then (one system call, on Linux's local file
    systems), as does a hard link (two calls: link, unlink the partial), where a plain rename would
    replace it."""
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(partial), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        error = ctypes.get_errno()
        # Not offered by this file system (or refused by a seccomp policy): the hard link way below. A
        # genuine EPERM fails there too.
        if error not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
            raise OSError(error, os.strerror(error), str(target))
    try:
        os.link(partial, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from None
        os.rename(partial, target)
        return
    os.unlink(partial)


def _remove_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _reserve(descriptor: int, size: int) -> None:
    """Allocate ``size`` bytes of blocks to the file (Linux fallocate, which fails rather than emulate
    it where a file system cannot; then nothing is reserved). A disk too full for it is an error now."""
    if _FALLOCATE is None or _FALLOCATE(descriptor, 0, 0, size) == 0:
        return
    error = ctypes.get_errno()
    if error in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        raise OSError(error, os.strerror(error))


def _flush_file_system(root: int, paths: list[str]) -> None:
    """Make what was written to ``paths`` durable: one syncfs of the file system ``root`` is on (which
    also reports write-back errors since ``root`` was opened), else an fsync of each."""
    if _SYNCFS is not None:
        if _SYNCFS(root) == 0:
            return
        error = ctypes.get_errno()
        if error not in (errno.ENOSYS, errno.EPERM):  # EPERM: a container's seccomp policy refusing it
            raise OSError(error, os.strerror(error))
    for path in paths:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _fsync_directory(path: Path) -> None:
    """Make the rename itself durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
