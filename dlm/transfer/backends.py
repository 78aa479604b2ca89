"""Where a storage's bytes are, and the backend that reaches them.

A storage's interface says what kind of volume it is; its rclone config says how DLM reaches it. They
mostly agree, with two shapes SKA-DLM deployments use:
- a ``posix`` storage with an ``alias`` config is the local directory ``remote`` + ``root_directory``
  (rclone joins them so: the chart's ``local`` storage is root ``/`` with remote ``/data``);
- a ``posix`` storage with an ``sftp`` config is a POSIX file system on another host, reached over SFTP,
  exactly as an ``sftp`` storage is.
"""

from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from dlm.enums import StorageInterface
from dlm.errors import InvalidQueryParameters, UnmetPreconditionForOperation
from dlm.transfer.outbound import default_port, parse_endpoint
from dlm.transfer.posix import PosixBackend
from dlm.transfer.remotes import S3Settings, SftpSettings, split_root

if TYPE_CHECKING:
    from dlm.transfer.outbound import OutboundPolicy
    from dlm.transfer.s3 import S3Backend
    from dlm.transfer.sftp import SftpBackend


class Place(msgspec.Struct, frozen=True):
    """Where a storage's bytes are. Two storages share bytes only if they have the same kind and
    endpoint and one's root is, or is inside, the other's."""

    kind: Literal["local", "s3", "sftp"]
    # The S3 endpoint or SSH account; "" for this host's file system.
    endpoint: str
    # local: an absolute path on this host; sftp: a path on its host; s3: "bucket/prefix".
    root: str


def flat_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """The remote's settings in one dict, from either spelling (flat, or rclone's ``parameters``)."""
    config = config or {}
    flat = {key: value for key, value in config.items() if key not in ("parameters", "name")}
    if isinstance(config.get("parameters"), dict):
        flat.update(config["parameters"])
    return flat


# What reading a payload costs by where it is, cheapest first: a file system DLM mounts, an object
# store, a host reached over SSH. Downloads and copies read from the cheapest replica.
READING_COST = {"local": 0, "s3": 1, "sftp": 2}


def place_of(interface: StorageInterface, root_directory: str, config: dict[str, Any] | None) -> Place:
    flat = flat_config(config)
    remote_type = flat.get("type")
    if interface is StorageInterface.S3:
        bucket, prefix = split_root(root_directory)
        endpoint = flat.get("endpoint")
        return Place("s3", normalise_endpoint(str(endpoint)) if endpoint else AWS, f"{bucket}/{prefix}")
    if remote_type == "sftp" and interface in (StorageInterface.POSIX, StorageInterface.SFTP):
        settings = sftp_settings(flat)
        return Place("sftp", settings.endpoint, str(PurePosixPath(root_directory or ".")))
    if interface is StorageInterface.POSIX:
        return Place("local", "", local_root(root_directory, flat))
    if interface is StorageInterface.SFTP:
        raise UnmetPreconditionForOperation("an sftp storage is reached through a config of type sftp, and has none")
    raise UnmetPreconditionForOperation(
        f"DLM cannot reach payloads over {interface.value} yet (posix, s3 and sftp are supported)"
    )


AWS = "aws"


def normalise_endpoint(endpoint: str, field: str = "config.endpoint") -> str:
    """``https://S3.example.org/`` → ``https://s3.example.org:443``; "aws" stays "aws"."""
    if endpoint.strip().lower() == AWS:
        return AWS
    parts = parse_endpoint(endpoint, field)
    port = default_port(parts)
    # Credentials in an endpoint URL (user:pass@) are not part of where it points.
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{port}"


def local_root(root_directory: str, flat: dict[str, Any]) -> str:
    """The directory a local POSIX storage's payloads are under: an alias's ``remote``, then the root."""
    remote = flat.get("remote") if flat.get("type") == "alias" else None
    if not remote:
        return root_directory
    return str(PurePosixPath(str(remote)) / root_directory.lstrip("/"))


def sftp_settings(flat: dict[str, Any]) -> SftpSettings:
    try:
        return SftpSettings.from_rclone(flat)
    except msgspec.ValidationError as exc:
        raise InvalidQueryParameters(f"config: {exc}") from None


def make_backend(
    interface: StorageInterface,
    root_directory: str,
    config: dict[str, Any] | None,
    name: str = "",
    *,
    outbound: "OutboundPolicy | None" = None,
) -> "PosixBackend | S3Backend | SftpBackend":
    """The backend for a storage, as an async context manager (``async with make_backend(...) as b``).
    ``config`` is the storage's rclone-style config, already validated when it was stored. ``outbound``:
    where it may connect, for an endpoint a caller named rather than an admin's storage."""
    try:
        place = place_of(interface, root_directory, config)
    except UnmetPreconditionForOperation as exc:
        raise UnmetPreconditionForOperation(f"storage {name!r}: {exc}") from None
    if place.kind == "local":
        return PosixBackend(place.root)
    # Each library is imported when a storage first needs it: a DLM without such storages never loads it.
    if place.kind == "sftp":
        from dlm.transfer.sftp import SftpBackend

        return SftpBackend(place.root, sftp_settings(flat_config(config)))
    from dlm.transfer.s3 import S3Backend

    return S3Backend(root_directory, S3Settings.from_rclone(flat_config(config)), outbound=outbound)
