"""Storage configs in rclone's remote format: validated when stored, secrets never shown.

Two spellings are accepted, as SKA-DLM clients send either: the flat remote
(``{"type": "s3", "endpoint": ..., "access_key_id": ...}``) and rclone's ``config/create`` call
(``{"name": "remote", "type": "s3", "parameters": {...}}``).
"""

import re
from typing import Any
from urllib.parse import urlparse

from dlm.enums import ConfigType, StorageInterface
from dlm.errors import InvalidQueryParameters

REDACTED = "***"
# rclone's own names for secrets (secret_access_key, pass, password, token, client_secret, key_file_pass,
# sse_customer_key, service_account_credentials, ...), matched on whole words of a key.
_SECRET = re.compile(r"(^|_)(secret|pass|password|passphrase|token|credentials|private|sse_customer_key)(_|$)")

RCLONE_TYPES = frozenset(
    {"local", "alias", "s3", "sftp", "http", "webdav", "swift", "azureblob", "gcs", "b2", "ftp", "crypt", "union"}
)
# Which rclone remote types can describe a storage of each interface.
_TYPES_FOR_INTERFACE = {
    StorageInterface.POSIX: {"local", "alias"},
    StorageInterface.S3: {"s3"},
    StorageInterface.SFTP: {"sftp"},
    StorageInterface.HTTPS: {"http", "webdav"},
}


def is_secret(key: str) -> bool:
    return bool(_SECRET.search(key.lower()))


def redact(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with every secret replaced, at any depth."""
    redacted: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            redacted[key] = redact(value)
        elif is_secret(key) and value not in (None, ""):
            redacted[key] = REDACTED
        else:
            redacted[key] = value
    return redacted


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    """The remote's settings in one flat dict, whichever spelling was stored."""
    parameters = config.get("parameters")
    flat = {key: value for key, value in config.items() if key not in ("parameters", "name")}
    if isinstance(parameters, dict):
        flat.update(parameters)
    return flat


def validate(
    config: Any, *, config_type: ConfigType = ConfigType.RCLONE, interface: StorageInterface | None = None
) -> dict[str, Any]:
    """Check ``config`` (field name ``config`` in errors); returns it unchanged when it is valid."""
    if not isinstance(config, dict) or not config:
        raise InvalidQueryParameters("config: must be a non-empty JSON object")
    if config_type is not ConfigType.RCLONE:
        return config
    flat = flatten(config)
    remote_type = flat.get("type")
    if not isinstance(remote_type, str) or remote_type not in RCLONE_TYPES:
        raise InvalidQueryParameters(f"config.type: must be one of {', '.join(sorted(RCLONE_TYPES))}")
    if "parameters" in config and not isinstance(config["parameters"], dict):
        raise InvalidQueryParameters("config.parameters: must be a JSON object")
    for key, value in flat.items():
        if not isinstance(value, str | int | float | bool) and value is not None:
            raise InvalidQueryParameters(f"config.{key}: must be a string, number or boolean")
    if interface is not None and interface in _TYPES_FOR_INTERFACE:
        allowed = _TYPES_FOR_INTERFACE[interface]
        if remote_type not in allowed:
            raise InvalidQueryParameters(
                f"config.type: {remote_type!r} cannot describe a {interface.value} storage "
                f"(use {' or '.join(sorted(allowed))})"
            )
    if remote_type == "s3":
        _validate_s3(flat)
    return config


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1", "yes")


def _validate_s3(flat: dict[str, Any]) -> None:
    endpoint = flat.get("endpoint")
    if endpoint not in (None, ""):
        parsed = urlparse(str(endpoint))
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InvalidQueryParameters(f"config.endpoint: {endpoint!r} must be an http:// or https:// URL")
    if not _truthy(flat.get("env_auth", False)):
        for key in ("access_key_id", "secret_access_key"):
            if not isinstance(flat.get(key), str) or not flat[key]:
                raise InvalidQueryParameters(f"config.{key}: required for an s3 remote unless env_auth is true")
    part_size = flat.get("part_size")
    if part_size is not None:
        try:
            valid = int(part_size) >= 5 * 1024 * 1024
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise InvalidQueryParameters("config.part_size: must be a number of bytes, at least 5 MiB")
