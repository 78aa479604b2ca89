"""Settings: one struct, read from ``DLM_*`` environment variables and an optional TOML file, passed
explicitly to whatever needs it (``create_app(settings)``); nothing is configured at import time."""

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec
import platformdirs

from dlm.enums import Role

ENV_PREFIX = "DLM_"


# SKA-DLM's environment variables for the same settings (its Helm chart sets them), read when the
# DLM_ name is not set.
SKA_ALIASES: dict[str, tuple[str, ...]] = {
    # SKA-DLM's services each named the one database (its migration, heuristic and outbox services).
    "database_url": (
        "DATABASE_URL",
        "DLM_MIGRATION_DATABASE_URL",
        "DLM_HEURISTIC_DATABASE_URL",
        "DLM_OUTBOX_DATABASE_URL",
    ),
    "location_config": ("LOCATION_CONFIG",),
    "storage_config": ("STORAGE_CONFIG",),
    "ssh_public_key_file": ("SSH_PUBLIC_KEY_PATH",),
    # SKA-DLM's outbox relay.
    "amqp_url": ("DLM_OUTBOX_RABBITMQ_URL",),
    "amqp_exchange": ("DLM_OUTBOX_EXCHANGE",),
    "events_interval_seconds": ("DLM_OUTBOX_POLL_INTERVAL",),
}


class InvalidSettings(Exception):
    """A setting has a value DLM cannot use; the message names the variable."""


def _default_data_dir() -> str:
    return platformdirs.user_data_dir("dlm", appauthor=False)


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    # PostgreSQL URL (postgresql://user@host:port/db). None: run an embedded PostgreSQL in data_dir.
    database_url: str | None = None
    # A read-only replica for GET and HEAD requests (same URL forms); unset: database_url. Reads there
    # may lag the primary by the replication delay: docs/scaling.md.
    database_read_url: str | None = None
    # Where the embedded database and the default POSIX storage live.
    data_dir: str = msgspec.field(default_factory=_default_data_dir)
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8000
    db_pool_size: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10
    # Registration computes a payload's checksum only when it is this small (bytes); 0 turns it off.
    register_checksum_max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 64 * 1024 * 1024
    log_level: str = "INFO"
    # "json": one JSON object per line (time, level, logger, message, request_id, actor, ids).
    log_format: Literal["text", "json"] = "text"
    # One line per HTTP request (method, route, status, duration, actor) on the dlm.access logger.
    access_log: bool = True
    # Files (JSON or TOML) listing locations and storages (with their configs) to create at startup
    # when missing; see docs/operations.md.
    location_config: str | None = None
    storage_config: str | None = None
    # The public key DLM's SFTP transfers present (GET /storage/get_ssh_public_key).
    ssh_public_key_file: str | None = None
    # Copies this process runs at once; 0 leaves the migration queue to other DLM processes.
    migration_workers: Annotated[int, msgspec.Meta(ge=0, le=64)] = 2
    # The location (by name) this process's copy workers run at: they take only the copies whose two
    # storages they reach from there, their own location's sources first. Unset: any copy (dlm.sites).
    worker_location: Annotated[str, msgspec.Meta(max_length=255)] | None = None
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

    # --- security (docs/security.md) ---
    # "required": every request but the health probes needs a bearer token. "none": a request without
    # one acts as an anonymous admin (a presented token is still verified). "auto": "required" once an
    # identity provider or an admin token is configured or the database holds API tokens, else "none",
    # which `dlm serve` accepts on a loopback address only.
    auth: Literal["auto", "required", "none"] = "auto"
    # OIDC/JWT bearer tokens: the identity provider's keys (a URL, or a file for air-gapped sites), the
    # issuer and audience every token must name, and how its claims become a DLM subject and role.
    auth_jwks_url: str | None = None
    auth_jwks_file: str | None = None
    auth_issuer: str | None = None
    auth_audience: str | None = None
    auth_subject_claim: str = "sub"
    # The claim listing the caller's roles or groups (a dotted path reaches into objects, as Keycloak's
    # realm_access.roles); a space-separated string (as `scope`) is split.
    auth_roles_claim: str = "roles"
    # The claim listing the caller's groups (a dotted path, as for roles; Keycloak's leading "/" is
    # dropped): an item whose item_group is one of them, or whose acl names "group:<it>", is theirs to read.
    auth_groups_claim: str = "groups"
    # "idp-value=dlm-role,…"; unset: claim values that are DLM role names count as themselves.
    auth_role_map: str | None = None
    auth_leeway_seconds: Annotated[float, msgspec.Meta(ge=0, le=600)] = 60.0
    # An API token (dlm_…) that DLM keeps as the `admin` token: how a deployment gets its first admin
    # from a secret store. Only its hash reaches the database.
    admin_token: str | None = None
    # Host names (comma-separated) requests may be addressed to; "*" for any. Default: the bind address
    # and localhost. Refusing others defeats DNS rebinding against a DLM on loopback.
    allowed_hosts: str | None = None
    # Directories (comma-separated) POSIX storages may be rooted in; default: the data directory.
    storage_roots: str | None = None
    # S3 endpoints (comma-separated URLs; "aws" for AWS's own) storages may use; unset: any.
    s3_endpoints: str | None = None
    # SSH hosts (comma-separated "host" or "host:port") SFTP storages may reach; unset: any.
    sftp_hosts: str | None = None
    # The group (item_group) of new items: a label for people and queries; an acl, not the group,
    # decides who reads an item (docs/security.md). SKA-DLM's default.
    default_group: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] = "SKA"
    # "unconditional": deleting a payload (delete_data_item_payload) and expiry remove a replica even
    # when its item, not itself expired, then falls below its target_phase, as SKA-DLM did. "safe"
    # (DLM's default) keeps it unless an admin forces it. docs/ska-dlm-migration.md#deletion.
    ska_deletion: Literal["safe", "unconditional"] = "safe"
    # The schema where SKA-DLM kept its tables and other systems write (SKA's ODA trigger inserts into
    # dlm.data_item): DLM keeps a view of each of those tables there. "": none. dlm.db.ska_views.
    ska_schema: Annotated[str, msgspec.Meta(pattern=r"^([A-Za-z_][A-Za-z0-9_]{0,62})?$")] = "dlm"
    # Private addresses (comma-separated: addresses, CIDR networks or host names, each optionally with
    # :port) that endpoints a caller names (a delivery's S3 endpoint) and webhooks may reach; public
    # addresses need no listing. docs/security.md#outbound-connections.
    outbound_allow: str | None = None
    # Fernet keys (comma-separated, newest first) that encrypt storage configs at rest.
    secret_key: str | None = None

    # --- notifications (docs/events.md) ---
    # RabbitMQ to publish events to (amqp://user:password@host:5672/vhost), on a durable topic exchange.
    amqp_url: str | None = None
    amqp_exchange: str = "dlm.outbox"
    # URLs (comma-separated) each event is POSTed to, signed with HMAC-SHA256 under webhook_secret.
    webhooks: str | None = None
    webhook_secret: str | None = None
    # How often this process relays due events (seconds; 0: leave it to other processes), and how long
    # delivered events stay in the outbox.
    events_interval_seconds: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    events_keep_seconds: Annotated[float, msgspec.Meta(ge=0)] = 7 * 24 * 3600.0
    # How often this process looks for delivery requests to ship (seconds; 0: leave them to others).
    deliveries_interval_seconds: Annotated[float, msgspec.Meta(ge=0)] = 2.0

    def __post_init__(self) -> None:
        if self.auth_jwks_url and self.auth_jwks_file:
            raise ValueError("set one of DLM_AUTH_JWKS_URL and DLM_AUTH_JWKS_FILE, not both")
        if (self.auth_jwks_url or self.auth_jwks_file) and not (self.auth_issuer and self.auth_audience):
            raise ValueError(
                "DLM_AUTH_ISSUER and DLM_AUTH_AUDIENCE are needed to accept tokens from an identity provider"
            )
        parse_role_map(self.auth_role_map)  # a malformed map stops DLM at start-up, not at the first login
        if self.admin_token is not None and (reason := weak_token(self.admin_token)):
            raise ValueError(f"DLM_ADMIN_TOKEN {reason}: make one with `dlm_$(openssl rand -hex 32)`")
        for url in self.webhook_urls:
            try:
                port = urlsplit(url).port
            except ValueError:
                port = -1
            if not url.startswith(("http://", "https://")) or port in (-1, 0):
                raise ValueError(f"DLM_WEBHOOKS: {url!r} must be an http:// or https:// URL with a valid port")
        if self.webhooks and not self.webhook_secret:
            raise ValueError("DLM_WEBHOOK_SECRET is needed to sign what DLM_WEBHOOKS receive")
        if self.amqp_url and not self.amqp_url.startswith(("amqp://", "amqps://")):
            raise ValueError("DLM_AMQP_URL must be an amqp:// or amqps:// URL")
        if self.capacity_low_watermark >= self.capacity_high_watermark:
            # msgspec reports this as a validation error naming neither field; say which and why.
            raise ValueError(
                "DLM_CAPACITY_LOW_WATERMARK must be below DLM_CAPACITY_HIGH_WATERMARK "
                f"({self.capacity_low_watermark} >= {self.capacity_high_watermark})"
            )

    @property
    def auth_configured(self) -> bool:
        """An identity provider or an admin token is set: DLM can tell callers apart without the database."""
        return bool(self.auth_jwks_url or self.auth_jwks_file or self.admin_token)

    @property
    def role_map(self) -> dict[str, Role] | None:
        """DLM_AUTH_ROLE_MAP as {claim value: role}; None when unset."""
        return parse_role_map(self.auth_role_map)

    @property
    def allowed_host_names(self) -> frozenset[str]:
        if self.allowed_hosts:
            return frozenset(name.lower() for name in comma_list(self.allowed_hosts))
        return frozenset({self.host.lower(), "localhost", "127.0.0.1", "::1"})

    @property
    def storage_root_paths(self) -> list[Path]:
        if self.storage_roots:
            return [Path(root) for root in comma_list(self.storage_roots)]
        return [Path(self.data_dir)]

    @property
    def s3_endpoint_list(self) -> list[str] | None:
        return comma_list(self.s3_endpoints) or None

    @property
    def webhook_urls(self) -> list[str]:
        return comma_list(self.webhooks)

    @property
    def event_sinks(self) -> tuple[str, ...]:
        """Where events go ("amqp", "webhook:<url>"): every event is written for each of these."""
        return (("amqp",) if self.amqp_url else ()) + tuple(f"webhook:{url}" for url in self.webhook_urls)

    @property
    def sftp_host_list(self) -> list[str] | None:
        return comma_list(self.sftp_hosts) or None

    @property
    def metadata_plugin_names(self) -> list[str] | None:
        """The plugins chosen, or None for all installed."""
        if self.metadata_plugins is None:
            return None
        names = comma_list(self.metadata_plugins)
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

    @property
    def secret_key_file(self) -> Path:
        """Where `dlm serve` keeps the key it made when DLM_SECRET_KEY was not set (docs/operations.md#backup)."""
        return Path(self.data_dir) / SECRET_KEY_FILE

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
            if raw is None or raw == "":
                raw = _from_ska_names(environ, field.name)
            if raw is not None and raw != "":
                values[field.name] = raw
        values.update({key: value for key, value in overrides.items() if value is not None})
        try:
            settings = msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise InvalidSettings(_describe_settings_error(str(exc))) from None
        if settings.secret_key is None and settings.secret_key_file.is_file():
            # The key `dlm serve` made on its first start: every command on this host opens configs with it.
            settings = msgspec.structs.replace(settings, secret_key=settings.secret_key_file.read_text().strip())
        return settings


def _from_ska_names(environ: Mapping[str, str], name: str) -> str | None:
    """The value SKA-DLM's variables give a setting; refused where they give it different values (one
    DLM process has one of each, where SKA-DLM's services each had their own)."""
    given = {alias: environ[alias] for alias in SKA_ALIASES.get(name, ()) if environ.get(alias)}
    if len(set(given.values())) > 1:
        raise InvalidSettings(
            f"{', '.join(given)} differ, and DLM has one {name}: set {ENV_PREFIX}{name.upper()}, or make them agree"
        )
    return next(iter(given.values()), None)


SECRET_KEY_FILE = "secret.key"
# What the deployment files' placeholder tokens say; a token holding one was never made by anyone.
_PLACEHOLDERS = ("replace", "change-me", "changeme", "example", "placeholder", "your-", "xxxx")


def weak_token(secret: str) -> str | None:
    """Why ``secret`` may not be a deployment's admin token (a placeholder left in, or too few random
    characters), or None."""
    body = secret.removeprefix("dlm_")
    if not secret.startswith("dlm_") or len(body) < 32:
        return "must be 'dlm_' and at least 32 random characters"
    if any(word in body.lower() for word in _PLACEHOLDERS):
        return "is the deployment files' placeholder, not a secret"
    if len(set(body)) < 12:
        return "is not random (too few different characters)"
    return None


def comma_list(text: str | None) -> list[str]:
    """The non-empty, stripped parts of a comma-separated setting."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def parse_role_map(text: str | None) -> dict[str, Role] | None:
    if text is None:
        return None
    mapping = {}
    for pair in comma_list(text):
        value, equals, role = pair.rpartition("=")
        if not equals or not value.strip() or role.strip() not in Role.__members__.values():
            raise ValueError(f"DLM_AUTH_ROLE_MAP: {pair!r} must be claim-value=role, the role one of {', '.join(Role)}")
        mapping[value.strip()] = Role(role.strip())
    return mapping


def _describe_settings_error(error: str) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.port`"; name the variable the user actually set.
    message, _, where = error.partition(" - at `$.")
    if where:
        name = where.rstrip("`").split(".")[0].split("[")[0]
        return f"{ENV_PREFIX}{name.upper()}: {message}"
    return error
