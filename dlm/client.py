"""Talk to a DLM server from Python: ``DLMClient`` (blocking) and ``AsyncDLMClient`` (asyncio).

    from dlm.client import DLMClient

    with DLMClient("http://127.0.0.1:8000") as dlm:
        uid = dlm.register("obs-42", "obs-42.ms", storage_name="local", item_type="container")
        copy = dlm.copy(uid=uid, destination_name="archive", wait=True)

Results are typed msgspec structs (``Item``, ``Storage``, ``Migration``, …) whose fields are the
server's columns. A refusal raises the exception the server named (``dlm.errors.NotFound``,
``dlm.errors.InvalidQueryParameters``, ``dlm.transfer.base.StorageUnreachable``, …), all of them
``ClientError``-compatible via their ``message`` attribute.
"""

import contextlib
import datetime
import enum
import http.client
import json
import os
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import msgspec

from dlm import errors
from dlm.enums import (
    ChecksumMethod,
    ItemState,
    ItemType,
    LocationCountry,
    LocationType,
    MigrationStatus,
    Phase,
    StorageInterface,
    StorageType,
)
from dlm.transfer import base as transfer_errors

DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
T = TypeVar("T")


# The server's rows, field by field (tests/test_client.py checks them against the tables).


class Item(msgspec.Struct, kw_only=True):
    """One replica (a row of data_item)."""

    uid: uuid.UUID | None = None
    oid: uuid.UUID | None = None
    item_version: int | None = None
    item_name: str | None = None
    item_tags: Any | None = None
    storage_id: uuid.UUID | None = None
    uri: str | None = None
    item_value: str | None = None
    item_type: ItemType | None = None
    item_format: str | None = None
    item_encoding: str | None = None
    item_mime_type: str | None = None
    item_level: int | None = None
    uid_phase: Phase | None = None
    oid_phase: Phase | None = None
    target_phase: Phase | None = None
    item_state: ItemState | None = None
    uid_creation: datetime.datetime | None = None
    oid_creation: datetime.datetime | None = None
    uid_expiration: datetime.datetime | None = None
    oid_expiration: datetime.datetime | None = None
    uid_deletion: datetime.datetime | None = None
    oid_deletion: datetime.datetime | None = None
    expired: bool | None = None
    deleted: bool | None = None
    last_access: datetime.datetime | None = None
    item_checksum: str | None = None
    checksum_method: ChecksumMethod | None = None
    last_check: datetime.datetime | None = None
    item_owner: str | None = None
    item_group: str | None = None
    acl: Any | None = None
    activate_method: str | None = None
    item_size: int | None = None
    decompressed_size: int | None = None
    compression_method: str | None = None
    parents: uuid.UUID | None = None
    children: uuid.UUID | None = None
    metadata: Any | None = None
    extracted_metadata: Any | None = None
    payload_modified: datetime.datetime | None = None


class Storage(msgspec.Struct, kw_only=True):
    """A storage volume."""

    storage_id: uuid.UUID | None = None
    location_id: uuid.UUID | None = None
    storage_name: str | None = None
    root_directory: str | None = None
    storage_type: StorageType | None = None
    storage_interface: StorageInterface | None = None
    storage_phase: Phase | None = None
    storage_capacity: int | None = None
    storage_use_pct: float | None = None
    storage_permissions: str | None = None
    storage_checked: bool | None = None
    storage_check_url: str | None = None
    storage_last_checked: datetime.datetime | None = None
    storage_num_objects: int | None = None
    storage_available: bool | None = None
    storage_retired: bool | None = None
    storage_retire_date: datetime.datetime | None = None
    storage_date: datetime.datetime | None = None
    reachable_from: list[str] | None = None
    max_transfers: int | None = None


class LocationLink(msgspec.Struct, kw_only=True):
    """Limits on the copies from one location to another, and its traffic now."""

    source_location: str
    destination_location: str
    max_transfers: int | None = None
    max_bytes_per_second: int | None = None
    running: int = 0
    queued: int = 0


class Location(msgspec.Struct, kw_only=True):
    """A site that holds storages."""

    location_id: uuid.UUID | None = None
    location_name: str | None = None
    location_type: LocationType | None = None
    location_country: LocationCountry | None = None
    location_city: str | None = None
    location_facility: str | None = None
    location_check_url: str | None = None
    location_last_check: datetime.datetime | None = None
    location_date: datetime.datetime | None = None


class Migration(msgspec.Struct, kw_only=True):
    """A copy between storages, as a job."""

    migration_id: int | None = None
    job_id: int | None = None
    oid: uuid.UUID | None = None
    source_uid: uuid.UUID | None = None
    destination_uid: uuid.UUID | None = None
    source_storage_id: uuid.UUID | None = None
    destination_storage_id: uuid.UUID | None = None
    user: str | None = None
    group: str | None = None
    job_status: Any | None = None
    job_stats: Any | None = None
    complete: bool | None = None
    date: datetime.datetime | None = None
    completion_date: datetime.datetime | None = None
    status: MigrationStatus | None = None
    bytes_total: int | None = None
    bytes_done: int | None = None
    attempts: int | None = None
    last_error: str | None = None
    next_attempt_at: datetime.datetime | None = None
    lease_owner: str | None = None
    lease_expires: datetime.datetime | None = None
    move: bool | None = None
    move_force: bool | None = None
    url: str | None = None
    command: str | None = None


class Event(msgspec.Struct, kw_only=True):
    """One entry of an item's history (a ``created`` event's other initial values in ``detail``)."""

    event_id: int | None = None
    event_time: datetime.datetime | None = None
    uid: uuid.UUID | None = None
    oid: uuid.UUID | None = None
    event: str | None = None
    old_value: str | None = None
    new_value: str | None = None
    actor: str | None = None
    detail: dict[str, Any] | None = None


class StorageEvent(msgspec.Struct, kw_only=True):
    """One entry of a storage's history."""

    event_id: int | None = None
    event_time: datetime.datetime | None = None
    storage_id: uuid.UUID | None = None
    event: str | None = None
    detail: str | None = None
    actor: str | None = None
    storage_name: str | None = None


# A READY replica and the storage holding it (GET /request/query_item_storage): an Item with its
# Storage's fields (storage_id is already the Item's).
_ITEM_FIELDS = {field.name for field in msgspec.structs.fields(Item)}
Replica = msgspec.defstruct(
    "Replica",
    [(field.name, field.type, None) for field in msgspec.structs.fields(Storage) if field.name not in _ITEM_FIELDS],
    bases=(Item,),
    kw_only=True,
    module=__name__,
)


class StorageUsage(msgspec.Struct, kw_only=True):
    storage_id: uuid.UUID
    storage_name: str
    capacity_bytes: int | None
    used_bytes: int
    objects: int
    use_pct: float | None
    filesystem_total_bytes: int | None
    filesystem_free_bytes: int | None


class Identity(msgspec.Struct, kw_only=True):
    """Who DLM takes the caller for (GET /auth/whoami)."""

    subject: str
    role: str | None
    via: str
    expires: datetime.datetime | None = None


class Token(msgspec.Struct, kw_only=True):
    """An API token as listed (its secret is shown once, when created, and never again)."""

    name: str
    role: str
    created: datetime.datetime
    created_by: str
    expires: datetime.datetime | None = None
    revoked: datetime.datetime | None = None
    revoked_by: str | None = None
    last_used: datetime.datetime | None = None


class ClientError(errors.DLMError):
    """A refusal whose name this client does not know (a newer server), or a transport failure."""


_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        errors.InvalidQueryParameters,
        errors.ValueAlreadyInDB,
        errors.UnmetPreconditionForOperation,
        errors.NotFound,
        errors.Conflict,
        errors.Unauthorized,
        errors.Forbidden,
        errors.ServiceUnavailable,
        errors.ServiceBusy,
        errors.SchemaOutOfDate,
        transfer_errors.PayloadMissing,
        transfer_errors.StorageUnreachable,
        transfer_errors.StorageRefused,
        transfer_errors.ChecksumMismatch,
    )
}


class Answer(msgspec.Struct, frozen=True):
    """What a call needs of an HTTP response, whichever transport made it."""

    status_code: int
    content_type: str
    content: bytes
    # The URL asked, without its query (for messages).
    url: str


def _not_dlm(response: Answer) -> ClientError:
    kind = response.content_type.split(";")[0] or "no content type"
    return ClientError(
        f"{response.url} answered HTTP {response.status_code} with {kind}, "
        "not DLM's JSON: is --url (DLM_URL) a DLM server?"
    )


def _raise_for(response: Answer) -> None:
    if response.status_code < 400:
        return
    try:
        body = msgspec.json.decode(response.content)
        name, message = body["exec"], body["message"]
    except (msgspec.DecodeError, KeyError, TypeError):
        raise _not_dlm(response) from None
    error = _ERRORS.get(name)
    if error is None:
        raise ClientError(f"{name}: {message}")
    raise error(message)


def _params(values: Mapping[str, Any]) -> dict[str, Any]:
    """Query parameters as the server reads them: None left out, booleans lower-case, enums by value."""
    cleaned = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, enum.Enum):
            value = value.value
        cleaned[key] = str(value) if not isinstance(value, str) else value
    return cleaned


class _Call(msgspec.Struct, frozen=True):
    """One request and how to read its answer; both clients run the same calls."""

    method: str
    path: str
    params: dict[str, Any]
    body: Any = None
    result: Any = Any
    # For a route that answers a list of at most one row: what to call it when the list is empty.
    single: str = ""

    def decode(self, response: Answer) -> Any:
        _raise_for(response)
        try:
            document = msgspec.json.decode(response.content)
            if not self.single:
                return msgspec.convert(document, self.result, strict=False)
            if document == []:
                raise errors.NotFound(f"{self.single} does not exist")
            if not isinstance(document, list):
                raise _not_dlm(response)
            return msgspec.convert(document[0], self.result, strict=False)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise _not_dlm(response) from None


def _call(method: str, path: str, result: Any = Any, body: Any = None, /, **params: Any) -> _Call:
    return _Call(method, path, _params(params), body, result)


class _Operations:
    """Every operation, as the call it makes. ``_run`` is the sync or async way of making it."""

    def _run(self, call: _Call) -> Any:
        raise NotImplementedError

    # --- ingest
    def register(
        self,
        item_name: str,
        uri: str,
        *,
        storage_name: str = "",
        storage_id: str = "",
        item_type: str = "file",
        parents: str | None = None,
        metadata: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Register a payload that is already on a storage; returns the new uid."""
        return self._run(
            _call(
                "POST",
                "/ingest/register_data_item",
                str,
                metadata,
                item_name=item_name,
                uri=uri,
                storage_name=storage_name or None,
                storage_id=storage_id or None,
                item_type=item_type,
                parents=parents,
                **options,
            )
        )

    def register_many(self, entries: list[dict[str, Any]]) -> Any:
        """Register many payloads in one all-or-nothing call; returns their uids in order."""
        return self._run(_call("POST", "/ingest/register_data_items", list[str], entries))

    # --- request
    def query(
        self, *, item_name: str = "", oid: str = "", uid: str = "", storage_id: str = "", params: str | None = None
    ) -> Any:
        """Items matching all the criteria (``params``: the PostgREST-style filter language)."""
        return self._run(
            _call(
                "GET",
                "/request/query_data_item",
                list[Item],
                item_name=item_name or None,
                oid=oid or None,
                uid=uid or None,
                storage_id=storage_id or None,
                params=params,
            )
        )

    def history(self, *, item_name: str = "", oid: str = "", uid: str = "", after_event_id: int = 0) -> Any:
        return self._run(
            _call(
                "GET",
                "/request/query_item_history",
                list[Event],
                item_name=item_name or None,
                oid=oid or None,
                uid=uid or None,
                after_event_id=after_event_id or None,
            )
        )

    def item_storage(self, *, item_name: str = "", oid: str = "", uid: str = "") -> Any:
        """The item's READY replicas with their storage."""
        return self._run(
            _call(
                "GET",
                "/request/query_item_storage",
                list[Replica],
                item_name=item_name or None,
                oid=oid or None,
                uid=uid or None,
            )
        )

    def set_state(self, uid: str, state: str) -> Any:
        return self._run(_call("PATCH", "/request/set_state", Item, uid=uid, state=state))

    def set_phase(self, uid: str, phase: str) -> Any:
        """Set the item's target_phase (all replicas)."""
        return self._run(_call("PATCH", "/request/set_phase", Item, uid=uid, phase=phase))

    def set_uid_expiration(self, uid: str, expiration: str) -> Any:
        return self._run(_call("PATCH", "/request/set_uid_expiration", Item, uid=uid, expiration=expiration))

    def set_oid_expiration(self, oid: str, expiration: str) -> Any:
        return self._run(_call("PATCH", "/request/set_oid_expiration", Item, oid=oid, expiration=expiration))

    def init_item(self, item_name: str | None = None, *, columns: dict[str, Any] | None = None) -> Any:
        """A new INITIALISED replica (``columns={"oid": …}`` adds one to an existing item); returns its uid."""
        return self._run(_call("POST", "/ingest/init_data_item", str, columns, item_name=item_name))

    def update_item(self, changes: dict[str, Any], *, item_name: str = "", oid: str = "", uid: str = "") -> Any:
        return self._run(
            _call(
                "PATCH",
                "/request/update_data_item",
                list[Item],
                changes,
                item_name=item_name or None,
                oid=oid or None,
                uid=uid or None,
            )
        )

    def set_uri(self, uid: str, uri: str, storage_id: str) -> Any:
        return self._run(_call("PATCH", "/request/set_uri", Item, uid=uid, uri=uri, storage_id=storage_id))

    def set_metadata(self, uid: str, metadata: dict[str, Any]) -> Any:
        return self._run(_call("PATCH", "/request/set_metadata", Item, metadata, uid=uid))

    def set_user(self, user: str, *, oid: str = "", uid: str = "") -> Any:
        """The owner of a replica (uid) or of all replicas of an item (oid)."""
        return self._run(_call("PATCH", "/request/set_user", Item, oid=oid or None, uid=uid or None, user=user))

    def set_group(self, group: str, *, oid: str = "", uid: str = "") -> Any:
        return self._run(_call("PATCH", "/request/set_group", Item, oid=oid or None, uid=uid or None, group=group))

    def set_acl(self, acl: dict[str, Any], *, oid: str = "", uid: str = "") -> Any:
        return self._run(
            _call("PATCH", "/request/set_acl", Item, oid=oid or None, uid=uid or None, acl=json.dumps(acl))
        )

    def update_tags(self, tags: dict[str, Any], *, item_name: str = "", oid: str = "") -> Any:
        """Merge tags into the item's; a None value removes that tag."""
        return self._run(
            _call(
                "PATCH",
                "/request/update_item_tags",
                Any,
                tags,
                item_name=item_name or None,
                oid=oid or None,
            )
        )

    def expired(self, *, offset: str | None = None) -> Any:
        """Live replicas whose uid_expiration is before now (+ ``offset``, e.g. ``PT1H``)."""
        return self._run(_call("GET", "/request/query_expired", list[Item], offset=offset))

    def deleted(self, *, uid: str = "") -> Any:
        return self._run(_call("GET", "/request/query_deleted", list[Item], uid=uid or None))

    def new(self, check_date: str, *, uid: str = "") -> Any:
        """Replicas created after ``check_date``."""
        return self._run(_call("GET", "/request/query_new", list[Item], check_date=check_date, uid=uid or None))

    def exists(self, *, item_name: str = "", oid: str = "", uid: str = "", ready: bool = False) -> Any:
        return self._run(
            _call(
                "GET",
                "/request/query_exists",
                bool,
                item_name=item_name or None,
                oid=oid or None,
                uid=uid or None,
                ready=ready,
            )
        )

    # --- storage
    def add_location(self, location_name: str, location_type: str, **options: Any) -> Any:
        """Create a location; returns its id."""
        return self._run(
            _call(
                "POST",
                "/storage/init_location",
                str,
                location_name=location_name,
                location_type=location_type,
                **options,
            )
        )

    def facilities(self) -> Any:
        return self._run(_call("GET", "/storage/query_location_facility", list[str]))

    def locations(self, *, location_name: str = "") -> Any:
        return self._run(_call("GET", "/storage/query_location", list[Location], location_name=location_name or None))

    def add_storage(
        self,
        storage_name: str,
        *,
        root_directory: str,
        location_name: str,
        storage_interface: str = "posix",
        storage_type: str | None = None,
        storage_phase: str = "GAS",
        storage_capacity: int | None = None,
        config: dict[str, Any] | None = None,
        check: bool = True,
    ) -> Any:
        """Create a storage; returns its id. ``config``: its connection settings (rclone format);
        ``check=False`` skips checking that DLM can reach it now."""
        kind = storage_type or ("filesystem" if storage_interface == "posix" else "objectstore")
        return self._run(
            _call(
                "POST",
                "/storage/init_storage",
                str,
                config,
                storage_name=storage_name,
                storage_type=kind,
                storage_interface=storage_interface,
                root_directory=root_directory,
                location_name=location_name,
                storage_phase=storage_phase,
                storage_capacity=storage_capacity,
                check=None if check else False,
            )
        )

    def update_storage(
        self,
        storage_name: str,
        *,
        available: bool | None = None,
        phase: str | None = None,
        capacity: int | None = None,
        permissions: str | None = None,
        retire: bool | None = None,
        reachable_from: list[str] | None = None,
        max_transfers: int | None = None,
    ) -> Any:
        """(admin) Change a storage; ``retire=True`` starts retiring it (``False`` calls that off);
        ``reachable_from``: the locations whose workers reach it (``["*"]``: all; ``[]``: the default);
        ``max_transfers``: the copies it carries at once (0: no limit)."""
        return self._run(
            _call(
                "PATCH",
                "/storage/update_storage",
                Storage,
                storage_name=storage_name,
                storage_available=available,
                storage_phase=phase,
                storage_capacity=capacity,
                storage_permissions=permissions,
                retire=retire,
                reachable_from=None if reachable_from is None else ",".join(reachable_from),
                max_transfers=max_transfers,
            )
        )

    def set_location_link(
        self,
        source_location: str,
        destination_location: str,
        *,
        max_transfers: int | None = None,
        max_bytes_per_second: int | None = None,
    ) -> Any:
        """(admin) Limit the copies from one location to another; neither limit removes the link's."""
        return self._run(
            _call(
                "POST",
                "/storage/set_location_link",
                LocationLink,
                source_location=source_location,
                destination_location=destination_location,
                max_transfers=max_transfers,
                max_bytes_per_second=max_bytes_per_second,
            )
        )

    def location_links(self) -> Any:
        return self._run(_call("GET", "/storage/query_location_links", list[LocationLink]))

    def workers(self) -> Any:
        """The DLM processes running copy workers now, by location."""
        return self._run(_call("GET", "/storage/query_workers", list[dict[str, Any]]))

    def storages(self, *, storage_name: str = "") -> Any:
        return self._run(_call("GET", "/storage/query_storage", list[Storage], storage_name=storage_name or None))

    def set_storage_config(self, storage_name: str, config: dict[str, Any]) -> Any:
        """Store a new config for the storage (it supersedes the earlier ones); returns the config_id."""
        return self._run(_call("POST", "/storage/create_storage_config", str, config, storage_name=storage_name))

    def storage_configs(self, storage_name: str) -> Any:
        """The storage's configs, newest first, secrets shown as ``***``."""
        return self._run(_call("GET", "/storage/get_storage_config", list[dict[str, Any]], storage_name=storage_name))

    def ssh_public_key(self) -> Any:
        return self._run(_call("GET", "/storage/get_ssh_public_key", str))

    def usage(self, *, storage_name: str = "") -> Any:
        return self._run(_call("GET", "/storage/storage_usage", list[StorageUsage], storage_name=storage_name or None))

    def storage_events(self, *, storage_name: str = "", after_event_id: int = 0) -> Any:
        """What the engines reported about storages (capacity warnings), oldest first."""
        return self._run(
            _call(
                "GET",
                "/storage/query_storage_events",
                list[StorageEvent],
                storage_name=storage_name or None,
                after_event_id=after_event_id or None,
            )
        )

    def delete_payload(self, uid: str, *, force: bool = False) -> Any:
        """Delete a replica's payload (its row stays, DELETED); returns the replicas deleted."""
        return self._run(_call("POST", "/storage/delete_data_item_payload", list[Item], uid=uid, force=force))

    # --- migration
    def queue_copy(
        self,
        *,
        item_name: str = "",
        oid: str = "",
        uid: str = "",
        destination_name: str = "",
        destination_id: str = "",
        path: str = "",
        move: bool = False,
        force: bool = False,
    ) -> Any:
        """Queue a verified copy (with ``move``, a move: the source replica goes once the copy is
        READY; ``force``, an admin's, even below the item's target phase); returns ``{"uid": new
        replica, "migration_id": …}`` at once."""
        return self._run(
            _call(
                "POST",
                "/migration/move_data_item" if move else "/migration/copy_data_item",
                dict[str, Any],
                item_name=item_name or None,
                oid=oid or None,
                uid=uid or None,
                destination_name=destination_name or None,
                destination_id=destination_id or None,
                path=path or None,
                force=force or None,
            )
        )

    def deliver(
        self,
        destination: dict[str, Any],
        *,
        items: list[str] | None = None,
        params: str | None = None,
        packaging: str = "none",
    ) -> Any:
        """Ask DLM to ship items (names, oids or uids; or a ``params`` filter) to ``destination``
        ({"s3": {...}}, {"posix": dir}, {"storage_name", "path"}); returns ``{"delivery_id", …}`` at once."""
        body = {"destination": destination, "packaging": packaging}
        body.update({"items": items} if items is not None else {"params": params})
        return self._run(_call("POST", "/request/deliver", dict[str, Any], body))

    def delivery(self, delivery_id: int) -> Any:
        """A delivery: status, bytes_done of bytes_total, and at the end its manifest."""
        return self._run(_call("GET", "/request/get_delivery", dict[str, Any], delivery_id=delivery_id))

    def deliveries(self, *, status: str | None = None, offset: int = 0, limit: int | None = None) -> Any:
        """Deliveries, newest first (below operator, the caller's own), without items or manifests."""
        return self._run(
            _call(
                "GET",
                "/request/query_deliveries",
                list[dict[str, Any]],
                status=status,
                offset=offset or None,
                limit=limit,
            )
        )

    def cancel_delivery(self, delivery_id: int) -> Any:
        """Cancel a PENDING or RUNNING delivery; what it wrote is removed."""
        return self._run(_call("POST", "/request/cancel_delivery", dict[str, Any], delivery_id=delivery_id))

    def migration(self, migration_id: int) -> Any:
        """One migration; NotFound if there is none."""
        call = _call("GET", "/migration/get_migration", Migration, migration_id=migration_id)
        return self._run(msgspec.structs.replace(call, single=f"migration_id {migration_id}"))

    def migrations(
        self, *, start_date: str | None = None, end_date: str | None = None, storage_id: str | None = None
    ) -> Any:
        return self._run(
            _call(
                "GET",
                "/migration/query_migrations",
                list[Migration],
                start_date=start_date,
                end_date=end_date,
                storage_id=storage_id,
            )
        )

    def cancel(self, migration_id: int) -> Any:
        return self._run(_call("POST", "/migration/cancel_migration", Migration, migration_id=migration_id))

    def retry(self, migration_id: int) -> Any:
        return self._run(_call("POST", "/migration/retry_migration", dict[str, Any], migration_id=migration_id))

    # --- auth
    def whoami(self) -> Any:
        """Who DLM takes you for: the subject recorded as the actor of your changes, and your role."""
        return self._run(_call("GET", "/auth/whoami", Identity))

    def create_token(self, name: str, role: str, *, expires: str | None = None) -> Any:
        """(admin) A new API token for ``name``; returns its secret, shown only this once."""
        return self._run(_call("POST", "/auth/create_token", str, name=name, role=role, expires=expires))

    def tokens(self, *, include_revoked: bool = False) -> Any:
        """(admin) The API tokens, never their secrets."""
        return self._run(_call("GET", "/auth/list_tokens", list[Token], include_revoked=include_revoked))

    def revoke_token(self, name: str) -> Any:
        """(admin) Revoke the live token named ``name``."""
        return self._run(_call("POST", "/auth/revoke_token", Token, name=name))


class _Connection:
    """One kept-alive HTTP/1.1 connection from the standard library: the blocking client needs no more,
    and the CLI starts faster without an HTTP library to import."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientError(f"{url!r} is not an http:// or https:// URL")
        self.url, self.headers, self.timeout = url, headers, timeout
        self._base_path = parts.path.rstrip("/")
        self._parts = parts
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        parts = self._parts
        if parts.scheme == "https":
            import ssl

            return http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.timeout)  # type: ignore[arg-type]

    def request(self, call: _Call) -> Answer:
        target = self._base_path + call.path + (f"?{urllib.parse.urlencode(call.params)}" if call.params else "")
        headers = {"accept": "application/json", **self.headers}
        body = None
        if call.body is not None:
            body = msgspec.json.encode(call.body)
            headers["content-type"] = "application/json"
        for attempt in (1, 2):
            reused = self._connection is not None
            connection = self._connection = self._connection or self._connect()
            try:
                connection.request(call.method, target, body=body, headers=headers)
                response = connection.getresponse()
                content = response.read()
            except (http.client.HTTPException, OSError) as exc:
                self.close()
                # A kept-alive connection the server has since closed: ask again on a new one (once).
                stale = isinstance(exc, http.client.RemoteDisconnected | BrokenPipeError | ConnectionResetError)
                if reused and stale and attempt == 1:
                    continue
                raise ClientError(f"cannot reach DLM at {self.url}: {exc or type(exc).__name__}") from None
            if response.will_close:
                self.close()
            return Answer(
                status_code=response.status,
                content_type=response.getheader("content-type", ""),
                content=content,
                url=self.url + call.path,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def open(self, method: str, path: str, params: dict[str, Any], headers: dict[str, str]) -> Any:
        """A response whose body the caller reads (and closes), on a connection of its own."""
        target = self._base_path + path + f"?{urllib.parse.urlencode(params)}"
        connection = self._connect()
        try:
            connection.request(method, target, headers={**self.headers, **headers})
            return connection.getresponse()
        except (http.client.HTTPException, OSError) as exc:
            connection.close()
            raise ClientError(f"cannot reach DLM at {self.url}: {exc or type(exc).__name__}") from None


class ChecksumMismatch(ClientError):
    """What arrived does not have the checksum DLM recorded; the file was kept aside."""


DownloadProgress = Callable[[int, int | None], None]
# Beside the file being downloaded: the part received so far, and which version of the payload it is of.
PART_SUFFIX = ".dlm-part"


def _selector(item_name: str, uid: str, oid: str) -> dict[str, Any]:
    if not (item_name or uid or oid):
        raise errors.InvalidQueryParameters("one of item_name, oid, uid is required")
    return _params({"item_name": item_name or None, "uid": uid or None, "oid": oid or None})


def _attachment_name(disposition: str | None, fallback: str) -> str:
    """The file name a download's Content-Disposition gives (RFC 6266: ``filename*`` before
    ``filename``), if it is a plain name; else ``fallback``."""
    candidates = []
    if disposition and "filename*=UTF-8''" in disposition:
        candidates.append(urllib.parse.unquote(disposition.split("filename*=UTF-8''", 1)[1].split(";", 1)[0].strip()))
    if disposition and 'filename="' in disposition:
        candidates.append(disposition.split('filename="', 1)[1].split('"', 1)[0])
    for name in candidates:
        if name and "/" not in name and "\\" not in name and name not in (".", "..") and name.isprintable():
            return name
    return fallback


def _verify(path: Any, checksum_header: str | None) -> None:
    """Compare the file with the checksum DLM sent (``method=value``); keep it aside if they differ."""
    if not checksum_header or "=" not in checksum_header:
        return
    from dlm.checksum import new_hasher

    method, expected = checksum_header.split("=", 1)
    try:
        hasher = new_hasher(ChecksumMethod(method))
    except ValueError:
        return  # a method this client does not know: nothing to compare
    with open(path, "rb") as stream:
        while chunk := stream.read(4 * 1024 * 1024):
            hasher.update(chunk)
    if hasher.hexdigest() != expected:
        kept = f"{path}.corrupt"
        import os

        os.replace(path, kept)
        raise ChecksumMismatch(
            f"{path}: {method} {hasher.hexdigest()} on arrival, DLM recorded {expected}; kept aside as {kept}"
        )


class _Download(msgspec.Struct):
    """One download's files and state, the same for both clients: the part received so far beside the
    target, and a stamp saying which version of the payload (its ETag) that part is of."""

    target: Any
    etag: str
    checksum: str | None
    have: int = 0
    done: int = 0
    total: int | None = None

    @classmethod
    def plan(cls, to: Any, headers: Mapping[str, str], fallback: str, resume: bool) -> "_Download":
        from pathlib import Path

        headers = {key.lower(): value for key, value in headers.items()}
        target = Path(to)
        if str(to).endswith(("/", os.sep)):  # a directory, as a trailing slash says: made if missing
            try:
                target.mkdir(exist_ok=True)
            except FileNotFoundError:
                raise ClientError(f"{to}: its parent directory {str(target.parent)!r} does not exist") from None
            except (FileExistsError, NotADirectoryError):
                raise ClientError(f"{to}: not a directory") from None
        elif not target.is_dir() and not target.parent.is_dir():
            raise ClientError(f"{to}: directory {str(target.parent)!r} does not exist")
        if target.is_dir():
            target = target / _attachment_name(headers.get("content-disposition"), fallback.rsplit("/", 1)[-1])
        plan = cls(target=target, etag=headers.get("etag", ""), checksum=headers.get("x-dlm-checksum"))
        if resume and plan.part.exists() and plan.stamp.exists() and plan.stamp.read_text() == plan.etag:
            plan.have = plan.part.stat().st_size
        return plan

    @property
    def part(self) -> Any:
        return self.target.with_name(self.target.name + PART_SUFFIX)

    @property
    def stamp(self) -> Any:
        return self.target.with_name(self.target.name + PART_SUFFIX + ".etag")

    def request_headers(self) -> dict[str, str]:
        return {"range": f"bytes={self.have}-", "if-range": self.etag} if self.have else {}

    @contextlib.contextmanager
    def writing(self, status: int, content_length: str | None) -> Iterator[Callable[[bytes, Any], None]]:
        """A writer for the body of the GET answered ``status`` (416: the part was whole already)."""
        if status == 416:
            self.done = self.total = self.have
            yield lambda chunk, on_progress: None
            return
        if status != 206:
            self.have = 0  # the server sends all of it: the part is not of this payload
        self.stamp.write_text(self.etag)
        self.total = self.have + int(content_length) if content_length is not None else None
        self.done = self.have
        with open(self.part, "ab" if self.have else "wb") as stream:

            def write(chunk: bytes, on_progress: Any) -> None:
                stream.write(chunk)
                self.done += len(chunk)
                if on_progress:
                    on_progress(self.done, self.total)

            yield write
        if self.total is not None and self.done != self.total:
            raise ClientError(f"the download stopped at {self.done} of {self.total} bytes; run it again to resume")

    def finish(self) -> Any:
        self.part.replace(self.target)
        self.stamp.unlink(missing_ok=True)
        _verify(self.target, self.checksum)
        return self.target


class DLMClient(_Operations):
    """Blocking client. Use as a context manager, or call ``close()``."""

    def __init__(self, url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = 60) -> None:
        self.url = url.rstrip("/")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = _Connection(self.url, headers, timeout)

    def __enter__(self) -> "DLMClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, call: _Call) -> Any:
        return call.decode(self._http.request(call))

    def download(
        self,
        *,
        to: Any,
        item_name: str = "",
        uid: str = "",
        oid: str = "",
        resume: bool = True,
        on_progress: DownloadProgress | None = None,
    ) -> Any:
        """Fetch an item's payload (a container as a tar) to ``to`` (a file, or a directory to put it in);
        returns the file's path. An interrupted download resumes where it stopped (if the payload is
        unchanged); what arrives is checked against DLM's checksum (ChecksumMismatch, the file kept
        aside as ``.corrupt``, if it differs)."""
        params = _selector(item_name, uid, oid)
        head = self._http.open("HEAD", "/request/retrieve", params, {})
        head.read()
        head.close()
        if head.status >= 400:  # HEAD has no body to say why: GET says it
            self._run(_Call("GET", "/request/retrieve", params, result=Any))
        plan = _Download.plan(to, dict(head.getheaders()), item_name or uid or oid, resume)
        response = self._http.open("GET", "/request/retrieve", params, plan.request_headers())
        try:
            if response.status >= 400 and response.status != 416:
                self._run(_Call("GET", "/request/retrieve", params, result=Any))
            with plan.writing(response.status, response.getheader("content-length")) as write:
                while chunk := response.read(1024 * 1024):
                    write(chunk, on_progress)
        finally:
            response.close()
        return plan.finish()

    def open(self, *, item_name: str = "", uid: str = "", oid: str = "") -> Any:
        """The payload as a readable binary stream (``read(n)``; close it, or use ``with``)."""
        params = _selector(item_name, uid, oid)
        response = self._http.open("GET", "/request/retrieve", params, {})
        if response.status >= 400:
            response.close()
            self._run(_Call("GET", "/request/retrieve", params, result=Any))
        return response

    def copy(self, *, wait: bool = False, on_progress: Callable[[Any], None] | None = None, **target: Any) -> Any:
        """Queue a copy (see ``queue_copy``); with ``wait``, return the finished Migration, calling
        ``on_progress(migration)`` as it runs."""
        queued = self.queue_copy(**target)
        if not wait:
            return queued
        return self.wait(queued["migration_id"], on_progress=on_progress)

    def wait(self, migration_id: int, *, on_progress: Callable[[Any], None] | None = None, poll: float = 0.5) -> Any:
        """Poll until the migration SUCCEEDED, FAILED or was CANCELLED; return it."""
        while True:
            migration = self.migration(migration_id)
            if on_progress:
                on_progress(migration)
            if migration.status in FINISHED:
                return migration
            time.sleep(poll)


class AsyncDLMClient(_Operations):
    """asyncio client: every operation is awaited. Use as an async context manager, or ``await aclose()``."""

    def __init__(self, url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = 60) -> None:
        import httpx

        self.url = url.rstrip("/")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)

    async def __aenter__(self) -> "AsyncDLMClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, call: _Call) -> Any:  # type: ignore[override]
        import httpx

        try:
            response = await self._http.request(
                call.method, call.path, params=call.params, json=call.body if call.body is not None else None
            )
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach DLM at {self.url}: {exc}") from None
        answer = Answer(
            status_code=response.status_code,
            content_type=response.headers.get("content-type", ""),
            content=response.content,
            url=self.url + call.path,
        )
        return call.decode(answer)

    async def download(
        self,
        *,
        to: Any,
        item_name: str = "",
        uid: str = "",
        oid: str = "",
        resume: bool = True,
        on_progress: DownloadProgress | None = None,
    ) -> Any:
        """As DLMClient.download."""
        params = _selector(item_name, uid, oid)
        head = await self._http.head("/request/retrieve", params=params)
        if head.status_code >= 400:
            await self._run(_Call("GET", "/request/retrieve", params, result=Any))
        plan = _Download.plan(to, head.headers, item_name or uid or oid, resume)
        async with self._http.stream("GET", "/request/retrieve", params=params, headers=plan.request_headers()) as got:
            if got.status_code >= 400 and got.status_code != 416:
                await got.aread()
                await self._run(_Call("GET", "/request/retrieve", params, result=Any))
            with plan.writing(got.status_code, got.headers.get("content-length")) as write:
                async for chunk in got.aiter_bytes(1024 * 1024):
                    write(chunk, on_progress)
        return plan.finish()

    async def copy(self, *, wait: bool = False, on_progress: Callable[[Any], None] | None = None, **target: Any) -> Any:
        queued = await self.queue_copy(**target)
        if not wait:
            return queued
        return await self.wait(queued["migration_id"], on_progress=on_progress)

    async def wait(
        self, migration_id: int, *, on_progress: Callable[[Any], None] | None = None, poll: float = 0.5
    ) -> Any:
        while True:
            migration = await self.migration(migration_id)
            if on_progress:
                on_progress(migration)
            if migration.status in FINISHED:
                return migration
            await _sleep(poll)


async def _sleep(seconds: float) -> None:
    import asyncio  # only the async client needs it; the CLI starts faster without

    await asyncio.sleep(seconds)
