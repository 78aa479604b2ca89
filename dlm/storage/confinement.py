"""Where storages may be: defence in depth, enforced even when every caller is trusted (open mode).

- A POSIX storage is rooted inside one of the allowed directories (``DLM_STORAGE_ROOTS``, by default
  DLM's data directory, plus what the operator's seed files name) and never over DLM's own database.
- No two live storages share bytes: POSIX roots may not be equal or nested, S3 storages on one
  endpoint and bucket may not have overlapping prefixes. Otherwise deleting one storage's payload
  could delete another's.
- An S3 storage's endpoint is one of ``DLM_S3_ENDPOINTS``, an SFTP storage's host one of
  ``DLM_SFTP_HOSTS``, when those allowlists are set. What an SFTP storage may touch on its host is
  what its SSH account may: DLM cannot see that host's file system to confine it further.
"""

import os
from pathlib import Path, PurePosixPath

import msgspec

from dlm.config import Settings
from dlm.errors import InvalidQueryParameters
from dlm.transfer.backends import Place, normalise_endpoint


class Confinement(msgspec.Struct, frozen=True, kw_only=True):
    # Directories POSIX storages may be rooted in (resolved).
    posix_roots: tuple[Path, ...]
    # Directories no storage may reach into: DLM's own database files, where this host has them (with
    # an external database they are elsewhere, and a root such as SKA's "/" may hold the data directory).
    forbidden: tuple[Path, ...] = ()
    embedded: bool = True
    # Allowed S3 endpoints (normalised: scheme://host:port, or "aws"); None: any.
    s3_endpoints: frozenset[str] | None = None
    # Allowed SSH hosts (lower-case "host" or "host:port"); None: any.
    sftp_hosts: frozenset[str] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, extra_roots: list[str] = ()) -> "Confinement":  # type: ignore[assignment]
        """``DLM_STORAGE_ROOTS`` plus ``extra_roots`` (what the seed files allow)."""
        roots = [*settings.storage_root_paths, *(Path(root) for root in extra_roots)]
        endpoints = settings.s3_endpoint_list
        return cls(
            posix_roots=tuple(real_path(root) for root in roots),
            forbidden=(real_path(settings.pgdata_dir),),
            embedded=settings.embedded,
            s3_endpoints=frozenset(normalise_endpoint(endpoint) for endpoint in endpoints) if endpoints else None,
            sftp_hosts=frozenset(host.lower() for host in settings.sftp_host_list) if settings.sftp_host_list else None,
        )

    def allowing(self, roots: list[str]) -> "Confinement":
        return msgspec.structs.replace(self, posix_roots=(*self.posix_roots, *(real_path(Path(r)) for r in roots)))

    def _check_not_forbidden(self, root_directory: str) -> Path:
        root = real_path(Path(root_directory))
        for forbidden in self.forbidden:
            if nested(root, forbidden) and (self.embedded or forbidden.exists()):
                raise InvalidQueryParameters(
                    f"root_directory: {root_directory!r} overlaps DLM's own database directory {str(forbidden)!r}"
                )
        return root

    def check_posix_root(self, root_directory: str) -> Path:
        """The resolved root, if a POSIX storage may be rooted there."""
        if self.outside_posix_roots(root_directory):
            allowed = ", ".join(str(path) for path in self.posix_roots)
            raise InvalidQueryParameters(
                f"root_directory: {root_directory!r} is outside the directories storages may use ({allowed}); "
                "an operator adds one with DLM_STORAGE_ROOTS"
            )
        return real_path(Path(root_directory))

    def outside_posix_roots(self, root_directory: str) -> bool:
        """Whether a root lies outside the directories POSIX storages may use here (one over DLM's own
        database is refused outright)."""
        root = self._check_not_forbidden(root_directory)
        return not any(root == allowed or allowed in root.parents for allowed in self.posix_roots)

    def check_place(self, place: Place) -> None:
        """Refuse a storage whose bytes would be somewhere this DLM does not let storages be."""
        if place.kind == "local":
            self.check_posix_root(place.root)
        elif place.kind == "s3" and self.s3_endpoints is not None and place.endpoint not in self.s3_endpoints:
            raise InvalidQueryParameters(
                f"config.endpoint: {place.endpoint!r} is not an S3 endpoint storages may use (DLM_S3_ENDPOINTS)"
            )
        elif place.kind == "sftp" and self.sftp_hosts is not None:
            host_port = place.endpoint.rpartition("@")[2]
            if host_port not in self.sftp_hosts and host_port.rpartition(":")[0] not in self.sftp_hosts:
                raise InvalidQueryParameters(
                    f"config.host: {host_port!r} is not an SSH host storages may use (DLM_SFTP_HOSTS)"
                )


def real_path(path: Path) -> Path:
    return Path(os.path.realpath(path.expanduser()))


def nested(one: Path, other: Path) -> bool:
    return one == other or one in other.parents or other in one.parents


def overlaps(one: Place, other: Place) -> bool:
    """Whether two storages' bytes may be the same bytes (then deleting one's would delete the other's)."""
    if one.kind != other.kind or one.endpoint != other.endpoint:
        return False
    if one.kind == "local":
        return nested(real_path(Path(one.root)), real_path(Path(other.root)))
    if one.kind == "sftp":
        return nested(PurePosixPath(one.root), PurePosixPath(other.root))
    # S3: "bucket/prefix/" strings, one a prefix of the other.
    return one.root.startswith(other.root) or other.root.startswith(one.root)
