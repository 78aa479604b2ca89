"""Settings: one struct, read from ``DLM_*`` environment variables and an optional TOML file, passed
explicitly to whatever needs it (``create_app(settings)``); nothing is configured at import time."""

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import msgspec
import platformdirs

ENV_PREFIX = "DLM_"


class InvalidSettings(Exception):
    """A setting has a value DLM cannot use; the message names the variable."""


def _default_data_dir() -> str:
    return platformdirs.user_data_dir("dlm", appauthor=False)


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    # PostgreSQL URL (postgresql://user@host:port/db). None: run an embedded PostgreSQL in data_dir.
    database_url: str | None = None
    # Where the embedded database and the default POSIX storage live.
    data_dir: str = msgspec.field(default_factory=_default_data_dir)
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8000
    db_pool_size: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10
    # Registration computes a payload's checksum only when it is this small (bytes); 0 turns it off.
    register_checksum_max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 64 * 1024 * 1024
    log_level: str = "INFO"
    # Files (JSON or TOML) listing locations and storages (with their configs) to create at startup
    # when missing; see docs/operations.md.
    location_config: str | None = None
    storage_config: str | None = None
    # The public key DLM's SFTP transfers present (GET /storage/get_ssh_public_key).
    ssh_public_key_file: str | None = None
    # Copies this process runs at once; 0 leaves the migration queue to other DLM processes.
    migration_workers: Annotated[int, msgspec.Meta(ge=0, le=64)] = 2
    # A claimed copy is another process's to take over when its lease runs out without a heartbeat.
    migration_lease_seconds: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    migration_poll_seconds: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    # Transient failures are retried after retry_base * 2**(attempt-1) seconds, at most this many attempts.
    migration_max_attempts: Annotated[int, msgspec.Meta(ge=1)] = 5
    migration_retry_base_seconds: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    # Per-copy bandwidth cap in bytes/s; 0 means as fast as the storages allow.
    transfer_max_bytes_per_second: Annotated[int, msgspec.Meta(ge=0)] = 0
    # How often this process runs each lifecycle engine's pass, in seconds; 0 leaves it to others.
    expiry_interval_seconds: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    replication_interval_seconds: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    audit_interval_seconds: Annotated[float, msgspec.Meta(ge=0)] = 600.0
    capacity_interval_seconds: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    # A storage fuller than the high watermark (fraction) is relieved down to the low one.
    capacity_high_watermark: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.9
    capacity_low_watermark: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.8
    # The audit reads payloads at most this fast (bytes/s), and checks a replica again after this long.
    audit_max_bytes_per_second: Annotated[int, msgspec.Meta(ge=0)] = 50 * 1024 * 1024
    audit_recheck_seconds: Annotated[float, msgspec.Meta(gt=0)] = 7 * 24 * 3600.0
    # Metadata plugins run at registration, comma-separated; unset: all installed; "none": none.
    metadata_plugins: str | None = None

    def __post_init__(self) -> None:
        if self.capacity_low_watermark >= self.capacity_high_watermark:
            # msgspec reports this as a validation error naming neither field; say which and why.
            raise ValueError(
                "DLM_CAPACITY_LOW_WATERMARK must be below DLM_CAPACITY_HIGH_WATERMARK "
                f"({self.capacity_low_watermark} >= {self.capacity_high_watermark})"
            )

    @property
    def metadata_plugin_names(self) -> list[str] | None:
        """The plugins chosen, or None for all installed."""
        if self.metadata_plugins is None:
            return None
        names = [name.strip() for name in self.metadata_plugins.split(",") if name.strip()]
        return [] if names == ["none"] else names

    @property
    def embedded(self) -> bool:
        return self.database_url is None

    @property
    def pgdata_dir(self) -> Path:
        return Path(self.data_dir) / "pgdata"

    @property
    def default_storage_dir(self) -> Path:
        return Path(self.data_dir) / "storage"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> "Settings":
        """Settings from ``DLM_CONFIG`` (a TOML file), then ``DLM_*`` variables, then ``overrides``."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        config_file = environ.get(f"{ENV_PREFIX}CONFIG")
        if config_file:
            try:
                values.update(tomllib.loads(Path(config_file).read_text()))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise InvalidSettings(f"{ENV_PREFIX}CONFIG={config_file}: {exc}") from None
        for field in msgspec.structs.fields(cls):
            raw = environ.get(f"{ENV_PREFIX}{field.name.upper()}")
            if raw is not None and raw != "":
                values[field.name] = raw
        values.update({key: value for key, value in overrides.items() if value is not None})
        try:
            return msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise InvalidSettings(_describe_settings_error(str(exc))) from None


def _describe_settings_error(error: str) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.port`"; name the variable the user actually set.
    message, _, where = error.partition(" - at `$.")
    if where:
        name = where.rstrip("`").split(".")[0].split("[")[0]
        return f"{ENV_PREFIX}{name.upper()}: {message}"
    return error
