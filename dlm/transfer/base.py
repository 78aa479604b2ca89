"""What every transfer backend offers, and the errors they raise.

A backend reaches the payloads of one storage. URIs are relative to the storage's root and can never
leave it. Reads and writes are streams of chunks, so memory stays bounded whatever the payload size,
and a write is atomic: until it returns, nothing is visible at the URI.
"""

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from typing import Any, Protocol, TypeVar

import msgspec

from dlm.enums import ChecksumMethod

CHUNK_SIZE = 8 * 1024 * 1024


class PayloadInfo(msgspec.Struct, frozen=True):
    # Bytes of a file; None for a container (adding up its members would mean walking it).
    size: int | None
    is_container: bool
    # Last modification, seconds since the epoch, where the storage says (not for S3 prefixes).
    modified: float | None = None


class Entry(msgspec.Struct, frozen=True):
    """A file found by ``walk``: its path relative to the walked URI ('' for the URI itself)."""

    path: str
    size: int
    # POSIX permission bits, kept when copying to another POSIX storage; None on object stores.
    mode: int | None = None


class SmallFile(msgspec.Struct, frozen=True):
    """A whole file held in memory, to be written with others in one batch."""

    uri: str
    content: bytes
    mode: int | None = None


class TransferError(Exception):
    """A storage operation failed. ``transient`` errors (a network hiccup, a busy server) are worth
    retrying; the others (missing payload, wrong credentials, bad checksum) will fail again."""

    transient = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PayloadMissing(TransferError):
    pass


class StorageUnreachable(TransferError):
    transient = True


class StorageRefused(TransferError):
    """The storage answered but will not do it: access denied, no such bucket, disk full."""


class PayloadExists(StorageRefused):
    """Something is already at the destination path (put there by someone else): it is not DLM's to
    replace, nor to remove."""


class ChecksumMismatch(TransferError):
    pass


class PayloadChanged(TransferError):
    """The payload changed while it was being copied (a file grew past what was listed): worth trying
    again once it is still."""

    transient = True


class Backend(Protocol):
    async def stat(self, uri: str) -> PayloadInfo | None:
        """Size and kind of the payload at ``uri``; None when there is none."""
        ...

    async def stat_many(self, uris: list[str]) -> list[PayloadInfo | None]: ...

    def read(
        self, uri: str, chunk_size: int = CHUNK_SIZE, *, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """The bytes of the file at ``uri``, chunk by chunk: from ``offset``, ``length`` of them (or to
        the end)."""
        ...

    async def write(
        self, uri: str, chunks: AsyncIterable[bytes], *, size_hint: int | None = None, mode: int | None = None
    ) -> int:
        """Store ``chunks`` as the file at ``uri``, atomically; returns the bytes written."""
        ...

    async def delete(self, uri: str) -> bool:
        """Remove the file or container at ``uri`` (recursively); False when there was nothing."""
        ...

    def walk(self, uri: str = "") -> AsyncIterator[Entry]:
        """Every file at or under ``uri`` (the whole storage by default)."""
        ...

    async def checksum(self, uri: str, method: ChecksumMethod) -> str: ...

    async def check(self) -> None:
        """Raise the TransferError that says why the storage cannot be used; return if it can."""
        ...

    # Many small files at once: a container of thousands of small files is bound by per-file costs
    # (round trips, thread hops, fsyncs), which a backend may pay once per batch instead.

    async def read_small(self, uris: list[str], limit: int) -> list[bytes]:
        """The whole content of each file; a file over ``limit`` bytes is PayloadChanged (it grew)."""
        ...

    async def write_small(self, files: list[SmallFile]) -> None:
        """Write each file as ``write`` would, atomically and never over an existing one; on failure,
        none of them is left."""
        ...

    def stored_as_sent(self, uri: str) -> bool:
        """Whether the storage itself confirmed that what this backend's last write of ``uri`` stored
        is the bytes sent (a digest it computed over what it stored, equal to one of the bytes sent):
        then a copy need not read it back."""
        ...

    async def checksum_many(self, uris: list[str], method: ChecksumMethod) -> list[str]: ...

    async def delete_many(self, uris: list[str]) -> dict[str, str]:
        """Delete each payload as ``delete`` does; those that could not be deleted, uri → why (one that
        was not there is no failure)."""
        ...


@contextlib.contextmanager
def translated(
    errors: tuple[type[BaseException], ...], translate: Callable[[Exception, str], TransferError], uri: str
) -> Iterator[None]:
    """Inside the block, a library's ``errors`` become the TransferError ``translate`` says."""
    try:
        yield
    except TransferError:
        raise
    except errors as exc:
        raise translate(exc, uri) from None  # type: ignore[arg-type]


RemoteSettings = TypeVar("RemoteSettings", bound=msgspec.Struct)


def from_rclone(settings_type: type[RemoteSettings], config: dict[str, Any]) -> RemoteSettings:
    """The fields of an rclone remote's (flat) config that ``settings_type`` knows; empty ones unset."""
    known = {field.encode_name for field in msgspec.structs.fields(settings_type)}
    values = {key: value for key, value in config.items() if key in known and value not in ("", None)}
    # rclone writes numbers and booleans as strings in its config files.
    return msgspec.convert(values, settings_type, strict=False)
