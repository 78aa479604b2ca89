"""Storage configs in rclone's remote format: validated when stored, secrets never shown.

Configs are stored sealed (encrypted with Fernet: AES-128-CBC + HMAC-SHA256) when DLM_SECRET_KEY is
set, and read back only inside DLM; what callers see is redacted by an allowlist of public fields.

Two spellings are accepted, as SKA-DLM clients send either: the flat remote
(``{"type": "s3", "endpoint": ..., "access_key_id": ...}``) and rclone's ``config/create`` call
(``{"name": "remote", "type": "s3", "parameters": {...}}``).
"""

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from dlm.config import comma_list
from dlm.enums import ConfigType, StorageInterface
from dlm.errors import InvalidQueryParameters, UnmetPreconditionForOperation
from dlm.transfer.backends import flat_config
from dlm.transfer.obscured import NotObscured, reveal
from dlm.transfer.outbound import parse_endpoint

REDACTED = "***"
# What get_storage_config shows of each remote type: fields known to hold no secret. Anything else (a
# key, a password, a token, a PEM, a field DLM does not know, any list or object) is shown as ***, so
# a secret under a name nobody thought of is hidden too.
_PUBLIC_FIELDS = {
    "local": {"nounc", "copy_links", "links", "skip_links", "one_file_system", "case_sensitive", "no_sparse"},
    "alias": {"remote"},
    "s3": {
        "provider",
        "access_key_id",
        "env_auth",
        "region",
        "endpoint",
        "location_constraint",
        "acl",
        "bucket_acl",
        "storage_class",
        "server_side_encryption",
        "upload_cutoff",
        "chunk_size",
        "part_size",
        "force_path_style",
        "v2_auth",
        "list_chunk",
        "no_check_bucket",
        "disable_checksum",
        "upload_concurrency",
    },
    "sftp": {
        "host",
        "user",
        "port",
        "key_file",
        "known_hosts_file",
        "key_use_agent",
        "shell_type",
        "md5sum_command",
        "sha1sum_command",
        "disable_hashcheck",
        "set_modtime",
        "path_override",
        "chunk_size",
        "concurrency",
    },
    "http": {"url", "no_slash", "no_head"},
    "webdav": {"url", "vendor", "user"},
}
# Parts of one upload in flight at most: each holds a part (8 MiB by default) in memory.
MAX_UPLOAD_CONCURRENCY = 32
RCLONE_TYPES = frozenset(
    {"local", "alias", "s3", "sftp", "http", "webdav", "swift", "azureblob", "gcs", "b2", "ftp", "crypt", "union"}
)
# Which rclone remote types can describe a storage of each interface.
_TYPES_FOR_INTERFACE = {
    # A posix storage with an sftp config is a POSIX file system on another host (SKA's archive).
    StorageInterface.POSIX: {"local", "alias", "sftp"},
    StorageInterface.S3: {"s3"},
    StorageInterface.SFTP: {"sftp"},
    StorageInterface.HTTPS: {"http", "webdav"},
}
# URL fields may carry credentials (http://user:pass@host): shown without them.
_URL_FIELDS = {"endpoint", "url"}


def redact(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` showing only what is known not to be secret (see _PUBLIC_FIELDS)."""
    public = _PUBLIC_FIELDS.get(str(flat_config(config).get("type")), set()) | {"type"}

    def shown(key: str, value: Any, top: bool) -> Any:
        if key == "parameters" and top and isinstance(value, dict):
            return {inner: shown(inner, item, False) for inner, item in value.items()}
        if value is None or value == "":
            return value
        if key == "name" and top and isinstance(value, str):
            return value  # the rclone remote's name: the storage's
        if key not in public or not isinstance(value, str | int | float | bool):
            return REDACTED
        if key in _URL_FIELDS and isinstance(value, str):
            return _without_credentials(value)
        return value

    return {key: shown(key, value, True) for key, value in config.items()}


def _without_credentials(url: str) -> str:
    """A URL as shown: credentials in its user part or its query string (``?X-Amz-Signature=``,
    ``?access_key=``) are not where it points, and are redacted."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return REDACTED  # never stored (validation refuses it), so nothing worth showing
    if parts.username is not None or parts.password is not None:
        netloc = f"{REDACTED}@{parts.hostname or ''}" + (f":{port}" if port else "")
        parts = parts._replace(netloc=netloc)
    if parts.query:
        parts = parts._replace(query=REDACTED)
    return urlunsplit(parts)


def validate(
    config: Any, *, config_type: ConfigType = ConfigType.RCLONE, interface: StorageInterface | None = None
) -> dict[str, Any]:
    """Check ``config`` (field name ``config`` in errors); returns it unchanged when it is valid."""
    if not isinstance(config, dict) or not config:
        raise InvalidQueryParameters("config: must be a non-empty JSON object")
    if config_type is not ConfigType.RCLONE:
        return config
    flat = flat_config(config)
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
    elif remote_type == "sftp":
        _validate_sftp(flat)
    elif remote_type == "alias":
        _validate_alias(flat)
    return config


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1", "yes")


def _validate_s3(flat: dict[str, Any]) -> None:
    endpoint = flat.get("endpoint")
    if endpoint not in (None, ""):
        parse_endpoint(str(endpoint), "config.endpoint")
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
    concurrency = flat.get("upload_concurrency")
    if concurrency is not None:
        try:
            valid = 1 <= int(concurrency) <= MAX_UPLOAD_CONCURRENCY
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise InvalidQueryParameters(
                f"config.upload_concurrency: must be a number of parts from 1 to {MAX_UPLOAD_CONCURRENCY}"
            )


def _validate_sftp(flat: dict[str, Any]) -> None:
    host = flat.get("host")
    if not isinstance(host, str) or not host.strip() or any(c in host for c in " /@\x00"):
        raise InvalidQueryParameters("config.host: required for an sftp remote, a host name or address")
    try:
        port = int(flat.get("port", 22))
    except (TypeError, ValueError):
        port = 0
    if not 1 <= port <= 65535:
        raise InvalidQueryParameters("config.port: must be a TCP port number, 1 to 65535")
    for key in ("pass", "key_file_pass"):
        if flat.get(key) not in (None, ""):
            try:
                reveal(str(flat[key]))
            except NotObscured:
                raise InvalidQueryParameters(
                    f"config.{key}: must be in rclone's obscured form (make it with `rclone obscure`)"
                ) from None
    for key in ("key_file", "known_hosts_file"):
        value = flat.get(key)
        if value not in (None, "") and not str(value).startswith(("/", "~")):
            raise InvalidQueryParameters(f"config.{key}: {value!r} must be an absolute path on the DLM host")


def _validate_alias(flat: dict[str, Any]) -> None:
    remote = flat.get("remote")
    if remote in (None, ""):
        return
    if not isinstance(remote, str) or not remote.startswith("/") or "\x00" in remote:
        raise InvalidQueryParameters(
            f"config.remote: {remote!r} must be an absolute directory on the DLM host "
            "(DLM follows an alias to a local directory, not to another remote)"
        )


# A sealed config, as stored: {"dlm_sealed": "<Fernet token of the config's JSON>"}.
SEALED = "dlm_sealed"


class Keyring:
    """DLM_SECRET_KEY's Fernet keys, newest first: the first seals, any of them opens."""

    def __init__(self, keys: list[str]) -> None:
        try:
            self._fernet = MultiFernet([Fernet(key.encode()) for key in keys]) if keys else None
        except ValueError:
            raise ValueError(
                "DLM_SECRET_KEY: each key must be 32 url-safe base64-encoded bytes "
                "(make one with `dlm db new-secret-key`)"
            ) from None

    @classmethod
    def from_text(cls, text: str | None) -> "Keyring":
        return cls(comma_list(text))

    @property
    def sealing(self) -> bool:
        return self._fernet is not None

    def seal(self, config: dict[str, Any]) -> dict[str, Any]:
        if self._fernet is None:
            return config
        return {SEALED: self._fernet.encrypt(json.dumps(config).encode()).decode()}

    def open(self, stored: dict[str, Any]) -> dict[str, Any]:
        if not is_sealed(stored):
            return stored
        if self._fernet is None:
            raise UnmetPreconditionForOperation("a storage config is encrypted and DLM_SECRET_KEY is not set")
        try:
            return json.loads(self._fernet.decrypt(str(stored[SEALED]).encode()))  # type: ignore[no-any-return]
        except InvalidToken:
            raise UnmetPreconditionForOperation(
                "a storage config is encrypted with a key that is not in DLM_SECRET_KEY"
            ) from None

    def reseal(self, stored: dict[str, Any]) -> dict[str, Any]:
        """``stored`` sealed with the newest key (plain ones get sealed); unchanged without keys."""
        if self._fernet is None:
            return stored
        if is_sealed(stored):
            return {SEALED: self._fernet.rotate(str(stored[SEALED]).encode()).decode()}
        return self.seal(stored)


def is_sealed(stored: dict[str, Any]) -> bool:
    return isinstance(stored, dict) and set(stored) == {SEALED}


NO_KEYS = Keyring([])


def new_key() -> str:
    return Fernet.generate_key().decode()
