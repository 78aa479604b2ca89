"""The backend for a storage, chosen by its interface."""

from typing import Any

from dlm.enums import StorageInterface
from dlm.errors import UnmetPreconditionForOperation
from dlm.transfer.posix import PosixBackend
from dlm.transfer.s3 import S3Backend, S3Settings


def make_backend(
    interface: StorageInterface, root_directory: str, config: dict[str, Any] | None, name: str = ""
) -> PosixBackend | S3Backend:
    """The backend for a storage, as an async context manager (``async with make_backend(...) as b``).
    ``config`` is the storage's rclone-style config, already validated when it was stored."""
    if interface is StorageInterface.POSIX:
        return PosixBackend(root_directory)
    if interface is StorageInterface.S3:
        return S3Backend(root_directory, S3Settings.from_rclone(config or {}))
    raise UnmetPreconditionForOperation(
        f"storage {name!r}: DLM cannot reach payloads over {interface.value} yet (posix and s3 are supported)"
    )
