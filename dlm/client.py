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

import asyncio
import datetime
import enum
import json
import time
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import msgspec
from sqlalchemy import Table

from dlm import errors
from dlm.db import models
from dlm.transfer import base as transfer_errors

DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
T = TypeVar("T")


def _row_struct(name: str, *tables: Table, extra: tuple[tuple[str, type], ...] = ()) -> type[msgspec.Struct]:
    """A struct with one optional field per column of ``tables`` (the first table's wins a shared
    name), typed as the column is, and per ``extra`` (name, type) a column the server joins in."""
    fields: dict[str, tuple[str, Any, None]] = {field: (field, kind | None, None) for field, kind in extra}
    for table in tables:
        for column in table.columns:
            try:
                python_type = column.type.python_type
            except NotImplementedError:
                python_type = Any
            if python_type is Decimal:
                python_type = float
            if python_type in (dict, list):
                python_type = Any
            fields.setdefault(str(column.name), (str(column.name), python_type | None, None))
    return msgspec.defstruct(name, list(fields.values()), kw_only=True, module=__name__)


# The server's rows, typed from the one place the schema lives (dlm.db.models).
Item = _row_struct("Item", models.DataItem.__table__)
Storage = _row_struct("Storage", models.Storage.__table__)
Location = _row_struct("Location", models.Location.__table__)
Migration = _row_struct("Migration", models.Migration.__table__)
Event = _row_struct("Event", models.DataItemEvent.__table__)
StorageEvent = _row_struct("StorageEvent", models.StorageEvent.__table__, extra=(("storage_name", str),))
# A READY replica and the storage holding it (GET /request/query_item_storage).
Replica = _row_struct("Replica", models.DataItem.__table__, models.Storage.__table__)


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


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        name, message = body["exec"], body["message"]
    except (ValueError, KeyError, TypeError):
        raise ClientError(f"HTTP {response.status_code}: {response.text[:200]}") from None
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

    def decode(self, response: httpx.Response) -> Any:
        _raise_for(response)
        if not self.single:
            return msgspec.convert(response.json(), self.result, strict=False)
        rows = response.json()
        if not rows:
            raise errors.NotFound(f"{self.single} does not exist")
        return msgspec.convert(rows[0], self.result, strict=False)


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
    ) -> Any:
        """Create a storage; returns its id. ``config``: its connection settings (rclone format)."""
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
            )
        )

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
    ) -> Any:
        """Queue a verified copy; returns ``{"uid": new replica, "migration_id": …}`` at once."""
        return self._run(
            _call(
                "POST",
                "/migration/copy_data_item",
                dict[str, Any],
                item_name=item_name or None,
                oid=oid or None,
                uid=uid or None,
                destination_name=destination_name or None,
                destination_id=destination_id or None,
                path=path or None,
            )
        )

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


def _transport_error(url: str, exc: httpx.TransportError) -> ClientError:
    return ClientError(f"cannot reach DLM at {url}: {exc}")


class DLMClient(_Operations):
    """Blocking client. Use as a context manager, or call ``close()``."""

    def __init__(self, url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = 60) -> None:
        self.url = url.rstrip("/")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> "DLMClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, call: _Call) -> Any:
        try:
            response = self._http.request(
                call.method, call.path, params=call.params, json=call.body if call.body is not None else None
            )
        except httpx.TransportError as exc:
            raise _transport_error(self.url, exc) from None
        return call.decode(response)

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
        try:
            response = await self._http.request(
                call.method, call.path, params=call.params, json=call.body if call.body is not None else None
            )
        except httpx.TransportError as exc:
            raise _transport_error(self.url, exc) from None
        return call.decode(response)

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
            await asyncio.sleep(poll)
