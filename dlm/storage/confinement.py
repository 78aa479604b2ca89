"""Where storages may be: defence in depth, enforced even when every caller is trusted (open mode).

- A POSIX storage is rooted inside one of the allowed directories (``DLM_STORAGE_ROOTS``, by default
  DLM's data directory, plus what the operator's seed files name) and never over DLM's own database.
- No two live storages share bytes: POSIX roots may not be equal or nested, S3 storages on one
  endpoint and bucket may not have overlapping prefixes. Otherwise deleting one storage's payload
  could delete another's.
- An S3 storage's endpoint is one of ``DLM_S3_ENDPOINTS``, when that allowlist is set.
"""

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from dlm.config import Settings
from dlm.errors import InvalidQueryParameters
from dlm.storage import configs

AWS = "aws"


class Confinement(msgspec.Struct, frozen=True, kw_only=True):
    # Directories POSIX storages may be rooted in (resolved).
    posix_roots: tuple[Path, ...]
    # Directories no storage may reach into: DLM's own database files.
    forbidden: tuple[Path, ...] = ()
    # Allowed S3 endpoints (normalised: scheme://host:port, or "aws"); None: any.
    s3_endpoints: frozenset[str] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, extra_roots: list[str] = ()) -> "Confinement":  # type: ignore[assignment]
        """``DLM_STORAGE_ROOTS`` plus ``extra_roots`` (what the seed files allow)."""
        roots = [*settings.storage_root_paths, *(Path(root) for root in extra_roots)]
        endpoints = settings.s3_endpoint_list
        return cls(
            posix_roots=tuple(real_path(root) for root in roots),
            forbidden=(real_path(settings.pgdata_dir),),
            s3_endpoints=frozenset(normalise_endpoint(endpoint) for endpoint in endpoints) if endpoints else None,
        )

    def allowing(self, roots: list[str]) -> "Confinement":
        return msgspec.structs.replace(self, posix_roots=(*self.posix_roots, *(real_path(Path(r)) for r in roots)))

    def check_posix_root(self, root_directory: str) -> Path:
        """The resolved root, if a POSIX storage may be rooted there."""
        root = real_path(Path(root_directory))
        for forbidden in self.forbidden:
            if nested(root, forbidden):
                raise InvalidQueryParameters(
                    f"root_directory: {root_directory!r} overlaps DLM's own database directory {str(forbidden)!r}"
                )
        if not any(root == allowed or allowed in root.parents for allowed in self.posix_roots):
            allowed = ", ".join(str(path) for path in self.posix_roots)
            raise InvalidQueryParameters(
                f"root_directory: {root_directory!r} is outside the directories storages may use ({allowed}); "
                "an operator adds one with DLM_STORAGE_ROOTS"
            )
        return root

    def check_s3_endpoint(self, config: dict[str, Any] | None) -> None:
        if self.s3_endpoints is None:
            return
        endpoint = s3_endpoint(config)
        if endpoint not in self.s3_endpoints:
            raise InvalidQueryParameters(
                f"config.endpoint: {endpoint!r} is not an S3 endpoint storages may use (DLM_S3_ENDPOINTS)"
            )


def real_path(path: Path) -> Path:
    return Path(os.path.realpath(path.expanduser()))


def nested(one: Path, other: Path) -> bool:
    return one == other or one in other.parents or other in one.parents


def normalise_endpoint(endpoint: str) -> str:
    """``https://S3.example.org/`` → ``https://s3.example.org:443``; "aws" stays "aws"."""
    if endpoint.strip().lower() == AWS:
        return AWS
    parts = urlsplit(endpoint.strip())
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower(), 0)
    # Credentials in an endpoint URL (user:pass@) are not part of where it points.
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{port}"


def s3_endpoint(config: dict[str, Any] | None) -> str:
    endpoint = configs.flatten(config or {}).get("endpoint")
    return normalise_endpoint(str(endpoint)) if endpoint else AWS
