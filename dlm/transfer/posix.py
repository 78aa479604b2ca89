"""Payloads on a local (POSIX) file system."""

import asyncio
import os
import stat
from pathlib import Path

import msgspec

from dlm.checksum import file_checksum
from dlm.enums import ChecksumMethod
from dlm.errors import UnmetPreconditionForOperation
from dlm.transfer.paths import resolve_inside


class PayloadInfo(msgspec.Struct, frozen=True):
    size: int
    is_container: bool


class PosixBackend:
    def __init__(self, root_directory: str) -> None:
        self.root = Path(root_directory)

    def local_path(self, uri: str) -> Path:
        return resolve_inside(self.root, uri)

    def _stat(self, uri: str) -> PayloadInfo | None:
        path = self.local_path(uri)
        try:
            info = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise UnmetPreconditionForOperation(f"uri: cannot access {uri!r}: {exc.strerror}") from None
        return PayloadInfo(size=info.st_size, is_container=stat.S_ISDIR(info.st_mode))

    async def stat_many(self, uris: list[str]) -> list[PayloadInfo | None]:
        """Size and kind of each payload (None where there is none), in one thread hop for the whole
        batch: bulk registration stats thousands of small files."""
        return await asyncio.to_thread(lambda: [self._stat(uri) for uri in uris])

    async def checksum(self, uri: str, method: ChecksumMethod) -> str:
        return await asyncio.to_thread(file_checksum, self.local_path(uri), method)
