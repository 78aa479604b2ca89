"""Batch operations for backends that have none of their own: each file on its own, several at once.

A module apart from ``base``: the client imports ``base`` for its errors, and must not load asyncio.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from dlm.enums import ChecksumMethod
from dlm.errors import DLMError
from dlm.transfer.base import Backend, PayloadChanged, SmallFile, TransferError

# Files a backend without batch operations handles side by side in one batch.
FILES_AT_ONCE = 8


class OneAtATime:
    """A backend's batch operations, by its per-file ones."""

    async def read_small(self: Backend, uris: list[str], limit: int) -> list[bytes]:
        async def whole(uri: str) -> bytes:
            chunks, size = [], 0
            async for chunk in self.read(uri):
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:  # read no further, however much the file grew
                    raise PayloadChanged(f"{uri!r} grew to over {limit} bytes while it was being copied")
            return b"".join(chunks)

        return await side_by_side(whole, uris)

    async def write_small(self: Backend, files: list[SmallFile]) -> None:
        async def write(file: SmallFile) -> None:
            await self.write(file.uri, _one_chunk(file.content), size_hint=len(file.content), mode=file.mode)

        await write_all_or_none(self, files, write)

    async def checksum_many(self: Backend, uris: list[str], method: ChecksumMethod) -> list[str]:
        return await side_by_side(lambda uri: self.checksum(uri, method), uris)

    async def delete_many(self: Backend, uris: list[str]) -> dict[str, str]:
        failed: dict[str, str] = {}

        async def delete(uri: str) -> None:
            try:
                await self.delete(uri)
            except (TransferError, DLMError) as exc:
                failed[uri] = exc.message

        await side_by_side(delete, uris)
        return failed


Item = TypeVar("Item")
Result = TypeVar("Result")


async def write_all_or_none(
    backend: Backend, files: list[SmallFile], write: Callable[[SmallFile], Awaitable[None]]
) -> None:
    """``write`` each file, several at once. One refused lets the others finish (none is cut short
    mid-publish, where it could be left behind); then every file written is deleted, and the first
    refusal raised."""
    written: list[str] = []
    refused: list[TransferError | DLMError] = []

    async def write_one(file: SmallFile) -> None:
        try:
            await write(file)
        except (TransferError, DLMError) as exc:
            refused.append(exc)
            return
        written.append(file.uri)

    try:
        await side_by_side(write_one, files)
    finally:
        if refused or len(written) < len(files):
            for uri in written:
                with contextlib.suppress(Exception):
                    await backend.delete(uri)
    if refused:
        raise refused[0]


async def side_by_side(
    function: Callable[[Item], Awaitable[Result]], items: list[Item], at_once: int = FILES_AT_ONCE
) -> list[Result]:
    """``function`` of each item, at most ``at_once`` running; results in the items' order. The first
    failure is raised as itself, not as a group."""
    results: list[Result] = [None] * len(items)  # type: ignore[list-item]
    pending = iter(enumerate(items))

    async def work() -> None:
        for index, item in pending:
            results[index] = await function(item)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(at_once, len(items))):
                group.create_task(work())
    except BaseExceptionGroup as exc:
        raise exc.exceptions[0] from None
    return results


async def _one_chunk(content: bytes) -> AsyncIterator[bytes]:
    yield content
