"""Payloads on a file system reached over SFTP (an archive host, a watcher's disk), with asyncssh.

The storage's ``root_directory`` is a path on that host (relative paths start at the login directory);
a payload's URI is a path under it. Connection settings come from the storage's config in rclone's
``sftp`` remote format (``host``, ``port``, ``user``, ``key_file``, ``key_pem``, ``key_file_pass``,
``pass``, ``known_hosts_file``, ``key_use_agent``), passwords in rclone's obscured form.

The host's key is always checked: against ``known_hosts_file``, else the DLM user's
``~/.ssh/known_hosts``. A host that is in neither is refused, never trusted on first use.

Writes go to a partial file beside the target and are published with SFTP's plain rename, which never
replaces an existing file, so a copy never overwrites what someone else put there.
"""

import asyncio
import contextlib
import stat
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import PurePosixPath
from typing import Any

import asyncssh

from dlm.checksum import new_hasher
from dlm.enums import ChecksumMethod
from dlm.transfer.base import (
    CHUNK_SIZE,
    Entry,
    PayloadExists,
    PayloadInfo,
    PayloadMissing,
    StorageRefused,
    StorageUnreachable,
    TransferError,
    translated,
)
from dlm.transfer.batches import OneAtATime, side_by_side
from dlm.transfer.paths import check_relative_uri
from dlm.transfer.posix import PARTIAL_SUFFIX
from dlm.transfer.remotes import SftpSettings
from dlm.transfer.window import Window

_MISSING = (asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath)
_LOST = (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection)


class SftpBackend(OneAtATime):
    def __init__(self, root_directory: str, settings: SftpSettings) -> None:
        self.root = PurePosixPath(root_directory or ".")
        self.settings = settings
        self._connection: Any = None
        self._sftp: Any = None

    @property
    def where(self) -> str:
        return f"{self.settings.endpoint}{'' if self.root.is_absolute() else '/~/'}{self.root}"

    async def __aenter__(self) -> "SftpBackend":
        try:
            self._connection = await asyncssh.connect(self.settings.host, **self.settings.connect_options())
            self._sftp = await self._connection.start_sftp_client()
        except BaseException as exc:
            await self.__aexit__()
            if isinstance(exc, Exception):
                raise self._connect_error(exc) from None
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._sftp is not None:
            self._sftp.exit()
        if self._connection is not None:
            self._connection.close()
            with contextlib.suppress(Exception):
                await self._connection.wait_closed()
        self._sftp = self._connection = None

    def _connect_error(self, exc: Exception) -> TransferError:
        where = self.settings.endpoint
        if isinstance(exc, asyncssh.HostKeyNotVerifiable):
            return StorageRefused(
                f"{where}: the host's key is not trusted; add it to the config's known_hosts_file "
                "(or the DLM user's ~/.ssh/known_hosts)"
            )
        if isinstance(exc, asyncssh.PermissionDenied):
            return StorageRefused(f"{where}: the SSH server refused the config's credentials")
        if isinstance(exc, asyncssh.KeyImportError | asyncssh.KeyEncryptionError):
            return StorageRefused(f"{where}: the config's private key cannot be used: {exc}")
        if isinstance(exc, FileNotFoundError | PermissionError):
            return StorageRefused(f"{where}: {exc.strerror}: {exc.filename}")
        if isinstance(exc, asyncssh.ChannelOpenError):
            return StorageRefused(f"{where}: the SSH server offers no SFTP: {exc}")
        return StorageUnreachable(f"{where}: {exc or type(exc).__name__}")

    def _error(self, exc: Exception, uri: str) -> TransferError:
        if isinstance(exc, _MISSING):
            return PayloadMissing(f"no payload at {uri!r}")
        if isinstance(exc, asyncssh.SFTPFileAlreadyExists):
            return PayloadExists(f"{uri!r} exists already; DLM never overwrites a payload")
        if isinstance(exc, _LOST) or not isinstance(exc, asyncssh.SFTPError):
            return StorageUnreachable(f"{self.where}: {uri!r}: {exc or type(exc).__name__}")
        # Permission denied, no space, not a directory...: the server answered, and will again.
        return StorageRefused(f"{self.where}: {uri!r}: {exc.reason or type(exc).__name__}")

    def _translated(self, uri: str) -> Any:
        return translated((asyncssh.Error, OSError), self._error, uri)

    def path(self, uri: str) -> str:
        return str(self.root / check_relative_uri(uri))

    async def _stat(self, path: str) -> Any:
        try:
            return await self._sftp.stat(path)
        except _MISSING:
            return None

    async def stat(self, uri: str) -> PayloadInfo | None:
        with self._translated(uri):
            attrs = await self._stat(self.path(uri))
        if attrs is None:
            return None
        if stat.S_ISDIR(attrs.permissions or 0):
            return PayloadInfo(size=None, is_container=True, modified=attrs.mtime)
        return PayloadInfo(size=attrs.size, is_container=False, modified=attrs.mtime)

    async def stat_many(self, uris: list[str]) -> list[PayloadInfo | None]:
        """Several requests in flight on the one SFTP channel, as asyncssh pipelines them."""
        return await side_by_side(self.stat, uris)

    async def read(
        self, uri: str, chunk_size: int = CHUNK_SIZE, *, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        with self._translated(uri):
            info = await self.stat(uri)
            if info is None:
                raise PayloadMissing(f"no payload at {uri!r}")
            if info.is_container:
                raise StorageRefused(f"{uri!r} is a directory, not a file")
            left = length
            # asyncssh keeps several read requests in flight for a large read: one chunk in memory.
            async with self._sftp.open(self.path(uri), "rb") as stream:
                position = offset
                while left is None or left > 0:
                    chunk = await stream.read(chunk_size if left is None else min(chunk_size, left), position)
                    if not chunk:
                        break
                    position += len(chunk)
                    if left is not None:
                        left -= len(chunk)
                    yield chunk

    async def write(
        self, uri: str, chunks: AsyncIterable[bytes], *, size_hint: int | None = None, mode: int | None = None
    ) -> int:
        """Write a partial file beside the target (created exclusively), fsync it where the server
        can, then rename it to the target: SFTP's rename fails rather than replace a file."""
        target = PurePosixPath(self.path(uri))
        partial = str(target.with_name(f".{target.name}{PARTIAL_SUFFIX}"))
        written = 0
        with self._translated(uri):
            try:
                await self._sftp.makedirs(str(target.parent), exist_ok=True)
                with contextlib.suppress(*_MISSING):
                    await self._sftp.remove(partial)  # left by a write cut short: ours to replace
                async with self._sftp.open(partial, "xb") as stream:
                    written = await _write_pipelined(stream, chunks)
                    with contextlib.suppress(asyncssh.SFTPOpUnsupported):
                        await stream.fsync()
                if mode is not None:
                    await self._sftp.chmod(partial, stat.S_IMODE(mode))
                try:
                    await self._sftp.rename(partial, str(target))
                except asyncssh.SFTPError:
                    if await self._sftp.lexists(str(target)):
                        raise PayloadExists(f"{uri!r} exists already; DLM never overwrites a payload") from None
                    raise
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._sftp.remove(partial)
                raise
        return written

    async def delete(self, uri: str) -> bool:
        path = PurePosixPath(self.path(uri))
        with self._translated(uri):
            with contextlib.suppress(*_MISSING):
                await self._sftp.remove(str(path.with_name(f".{path.name}{PARTIAL_SUFFIX}")))
            try:
                attrs = await self._sftp.lstat(str(path))
            except _MISSING:
                return False
            if stat.S_ISDIR(attrs.permissions or 0):
                await self._sftp.rmtree(str(path))
            else:
                await self._sftp.remove(str(path))
        return True

    async def walk(self, uri: str = "") -> AsyncIterator[Entry]:
        start = self.path(uri) if uri else str(self.root)
        with self._translated(uri):
            attrs = await self._stat(start)
            if attrs is None:
                raise PayloadMissing(f"no payload at {uri!r}")
            if not stat.S_ISDIR(attrs.permissions or 0):
                yield Entry(path="", size=attrs.size or 0, mode=attrs.permissions)
                return
            pending = [""]
            while pending:
                relative = pending.pop()
                directory = f"{start}/{relative}" if relative else start
                names = sorted(
                    (name for name in await self._sftp.readdir(directory) if name.filename not in (".", "..")),
                    key=lambda name: name.filename,
                )
                for name in names:
                    path = f"{relative}/{name.filename}" if relative else name.filename
                    attrs = name.attrs
                    if stat.S_ISLNK(attrs.permissions or 0):
                        attrs = await self._stat(f"{start}/{path}")
                        if attrs is None or stat.S_ISDIR(attrs.permissions or 0):
                            raise StorageRefused(
                                f"{uri}/{path}: a symlink to a directory (or to nothing); "
                                "DLM does not follow those over SFTP"
                            )
                    if stat.S_ISDIR(attrs.permissions or 0):
                        pending.append(path)
                    elif not name.filename.endswith(PARTIAL_SUFFIX):
                        yield Entry(path=path, size=attrs.size or 0, mode=attrs.permissions)

    def stored_as_sent(self, uri: str) -> bool:
        return False  # SFTP confirms nothing: a copy reads its files back

    async def checksum(self, uri: str, method: ChecksumMethod) -> str:
        hasher = new_hasher(method)
        async for chunk in self.read(uri):
            hasher.update(chunk)
        return hasher.hexdigest()

    async def check(self) -> None:
        with self._translated(""):
            attrs = await self._stat(str(self.root))
        if attrs is None or not stat.S_ISDIR(attrs.permissions or 0):
            raise StorageRefused(f"{self.where}: the storage root is not a directory on that host")


# Chunks of one file written at once, at most: asyncssh already keeps many requests in flight within
# a chunk; between chunks the pipe would drain for a round trip, so over a link with latency several
# chunks go out together, as many as raise the rate (dlm.transfer.window).
CHUNKS_IN_FLIGHT = 8


async def _write_pipelined(stream: Any, chunks: AsyncIterable[bytes]) -> int:
    """Write ``chunks`` to an open SFTP file, each at its own offset, several at once; returns the
    bytes written. A chunk that fails stops the rest."""
    window = Window(CHUNKS_IN_FLIGHT)
    writing: set[asyncio.Task[None]] = set()
    written = 0

    async def put(data: bytes, offset: int) -> None:
        moved = 0
        try:
            await stream.write(data, offset)
            moved = len(data)
        finally:
            window.release(moved)

    try:
        async for chunk in chunks:
            # Held until sent: a chunk the reader might reuse is copied first.
            data = chunk if isinstance(chunk, bytes) else bytes(chunk)
            await window.acquire()
            for task in [task for task in writing if task.done()]:
                writing.discard(task)
                task.result()
            writing.add(asyncio.ensure_future(put(data, written)))
            written += len(data)
        await asyncio.gather(*writing)
    except BaseException:
        for task in writing:
            task.cancel()
        await asyncio.gather(*writing, return_exceptions=True)
        raise
    return written
