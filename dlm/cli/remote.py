"""`dlm ingest|request|storage|migration …`: use a running DLM over its REST API (``--url``, DLM_URL).

Tables for people by default, ``--json`` for scripts; a refusal is one line naming what was wrong,
and exit status 1.
"""

import datetime
import enum
import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import msgspec

from dlm.cli.common import CLIError
from dlm.client import DEFAULT_URL, DLMClient
from dlm.errors import DLMError
from dlm.parsing import parse_duration, parse_expiry
from dlm.transfer.base import TransferError

ITEM_COLUMNS = ("uid", "item_name", "item_version", "item_type", "item_state", "uid_phase", "oid_phase", "uri")
MIGRATION_COLUMNS = ("migration_id", "status", "bytes_done", "bytes_total", "attempts", "date", "last_error")
# Columns holding a number of bytes: shown as 1.5 GiB in tables unless --bytes.
BYTE_COLUMNS = frozenset(
    {
        "item_size",
        "decompressed_size",
        "bytes_done",
        "bytes_total",
        "storage_capacity",
        "capacity_bytes",
        "used_bytes",
        "filesystem_total_bytes",
        "filesystem_free_bytes",
    }
)
# What the server returns at most per call; a full page means there may be more.
PAGE_SIZE = 1000


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def _as_dict(row: Any) -> dict[str, Any]:
    return msgspec.structs.asdict(row) if isinstance(row, msgspec.Struct) else dict(row)


def human_size(value: Any) -> str:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return _text(value)
    size, unit = float(value), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if size < 1024 or unit == "EiB":
            break
        size /= 1024
    return f"{value} B" if unit == "B" else f"{size:.1f} {unit}"


def _cell(name: str, value: Any, raw_bytes: bool) -> str:
    return human_size(value) if name in BYTE_COLUMNS and not raw_bytes else _text(value)


def show(
    result: Any, columns: Sequence[str] = (), *, as_json: bool = False, raw_bytes: bool = False, next_page: str = ""
) -> None:
    """Print a result: JSON for scripts; for people a table (rows), ``key: value`` lines (one record)
    or the bare value (an id). Sizes read as 1.5 GiB unless ``raw_bytes``; a full page says so, and
    how to get the next one (``next_page``)."""
    if as_json:
        click.echo(msgspec.json.encode(result).decode())
        return
    if isinstance(result, list):
        if not result:
            click.echo("(none)", err=True)
            return
        if not isinstance(result[0], msgspec.Struct | dict):  # uids, names: one per line
            for value in result:
                click.echo(_text(value))
            return
        rows = [_as_dict(row) for row in result]
        names = list(columns) or list(rows[0])
        cells = [[_cell(name, row.get(name), raw_bytes) for name in names] for row in rows]
        widths = [max(len(name), *(len(line[index]) for line in cells)) for index, name in enumerate(names)]
        click.echo("  ".join(name.ljust(width) for name, width in zip(names, widths, strict=True)).rstrip())
        for line in cells:
            click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        if len(result) >= PAGE_SIZE:
            more = f"; the next page: {next_page}" if next_page else "; narrow the query to see the rest"
            click.echo(f"dlm: the server returns {PAGE_SIZE} rows at most, and this is a full page{more}", err=True)
    elif isinstance(result, msgspec.Struct | dict):
        record = _as_dict(result)
        width = max(len(key) for key in record)
        for key, value in record.items():
            click.echo(f"{key.ljust(width)}  {_cell(key, value, raw_bytes)}")
    else:
        click.echo(_text(result))


def remote(columns: Sequence[str] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command ``--url``, ``--token``, ``--json`` and ``--bytes``, a client, one-line errors, and
    printing of its result. A command may return ``Page(rows, next_page)`` to say how to page on."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        @click.option(
            "--url", envvar="DLM_URL", default=DEFAULT_URL, show_default=True, help="The DLM server (DLM_URL)."
        )
        @click.option(
            "--token",
            envvar="DLM_TOKEN",
            help="Bearer token: a DLM API token or your identity provider's JWT (DLM_TOKEN).",
        )
        @click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")
        @click.option("--bytes", "raw_bytes", is_flag=True, help="Sizes in bytes rather than KiB, MiB, GiB.")
        @functools.wraps(function)
        def command(url: str, token: str | None, as_json: bool, raw_bytes: bool, **options: Any) -> None:
            click.get_current_context().meta["as_json"] = as_json
            try:
                with DLMClient(url, token=token or None) as client:
                    result = function(client, **options)
            except (DLMError, TransferError) as exc:
                raise CLIError(f"{type(exc).__name__}: {exc.message}") from None
            next_page = ""
            if isinstance(result, Page):
                result, next_page = result.rows, result.next_page
            if result is not None:
                show(result, columns, as_json=as_json, raw_bytes=raw_bytes, next_page=next_page)

        return command

    return decorate


class Page(msgspec.Struct):
    rows: list[Any]
    # The command line that shows the next page.
    next_page: str = ""


def _storage_names(client: DLMClient) -> dict[str, str]:
    return {str(storage.storage_id): storage.storage_name for storage in client.storages()}


def _json_object(value: str | None, name: str) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(Path(value[1:]).read_text() if value.startswith("@") else value)
    except (OSError, ValueError) as exc:
        raise CLIError(f"{name}: not a JSON object ({exc})") from None
    if not isinstance(parsed, dict):
        raise CLIError(f"{name}: must be a JSON object")
    return parsed


# --- ingest -------------------------------------------------------------------------------------


@click.group()
def ingest() -> None:
    """Register payloads as data items."""


@ingest.command("register")
@click.argument("name")
@click.argument("uri")
@click.option("--storage", "storage_name", required=True, help="Storage the payload is on.")
@click.option("--container", is_flag=True, help="The URI is a directory or S3 prefix, registered as a whole.")
@click.option("--with-members", is_flag=True, help="With --container: register each file inside as an item too.")
@click.option("--parents", help="oid (or uid) of the container this item belongs to.")
@click.option("--target-phase", type=click.Choice(["GAS", "LIQUID", "SOLID"]), default="SOLID", show_default=True)
@click.option("--metadata", help='JSON object, or @file with one: {"scan": 7}.')
@click.option(
    "--expires",
    help="When this replica expires (uid_expiration): a date-time, or a duration from now: 90d, 12h, P1Y. "
    "Default: 24 hours, after which the expiry engine may remove it once other copies keep the item safe.",
)
@remote()
def ingest_register(
    client: DLMClient,
    name: str,
    uri: str,
    storage_name: str,
    container: bool,
    with_members: bool,
    parents: str | None,
    target_phase: str,
    metadata: str | None,
    expires: str | None,
) -> str:
    """Register the payload at URI on a storage as a READY item NAME; prints its uid.

    \b
    Examples:
      dlm ingest register obs-42 raw/obs-42.ms --storage local --container --with-members
      dlm ingest register cal.h5 cal/cal.h5 --storage local --metadata '{"scan": 7}' --expires 2099-12-31
    """
    expiration = parse_expiry(expires, "--expires").isoformat() if expires else None
    return client.register(
        name,
        uri,
        storage_name=storage_name,
        item_type="container" if container else "file",
        parents=parents,
        target_phase=target_phase,
        metadata=_json_object(metadata, "--metadata"),
        register_members=with_members or None,
        uid_expiration=expiration,
    )


@ingest.command("register-many")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@remote()
def ingest_register_many(client: DLMClient, file: str) -> list[str]:
    """Register the payloads listed in FILE (a JSON list of register parameters, - for stdin) in one
    all-or-nothing call; prints the new uids in order.

    \b
    Example:
      echo '[{"item_name": "a", "uri": "a.dat", "storage_name": "local"}]' | dlm ingest register-many -
    """
    with click.open_file(file) as stream:
        try:
            entries = json.load(stream)
        except ValueError as exc:
            raise CLIError(f"{file}: not JSON ({exc})") from None
    if not isinstance(entries, list):
        raise CLIError(f"{file}: must be a JSON list of registrations")
    return client.register_many(entries)


@ingest.command("init")
@click.argument("name", required=False)
@click.option("--columns", help='Columns of the new replica, JSON: {"oid": …} adds a replica to an item.')
@remote()
def ingest_init(client: DLMClient, name: str | None, columns: str | None) -> str:
    """Create an INITIALISED item (the classic three-step ingest: init, set-uri, set-state READY).

    \b
    Example:
      uid=$(dlm ingest init obs-43) && dlm request set-uri $uid obs-43.ms STORAGE_ID && dlm request set-state $uid READY
    """
    return client.init_item(name, columns=_json_object(columns, "--columns"))


# --- request ------------------------------------------------------------------------------------


@click.group()
def request() -> None:
    """Find items, follow their history, change their lifecycle."""


@request.command("query")
@click.option("--name", "item_name", default="", help="item_name.")
@click.option("--oid", default="", help="All replicas of this item.")
@click.option("--uid", default="", help="One replica.")
@click.option("--state", help="item_state, e.g. READY.")
@click.option("--where", "params", help="A filter in the params language: item_name=like.obs-*&limit=10.")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many rows (paging).")
@remote(("uid", "item_name", "item_version", "item_type", "item_state", "uid_phase", "storage", "uri", "item_size"))
def request_query(
    client: DLMClient, item_name: str, oid: str, uid: str, state: str | None, params: str | None, offset: int
) -> Any:
    """List items (1000 at a time; --offset pages on); every criterion must hold.

    \b
    Examples:
      dlm request query --state READY
      dlm request query --name obs-42 --json
      dlm request query --where 'uid_expiration=lt.2027-01-01&order=uid_creation.desc'
      dlm request query --state READY --offset 1000      # the second page
    """
    filters = [f"item_state=eq.{state.upper()}"] if state else []
    if params:
        filters.append(params)
    if offset:
        filters.append(f"offset={offset}")
    items = client.query(item_name=item_name, oid=oid, uid=uid, params="&".join(filters) or None)
    if click.get_current_context().meta.get("as_json"):
        return items
    names = _storage_names(client) if items else {}
    rows = [{**_as_dict(item), "storage": names.get(str(item.storage_id), item.storage_id)} for item in items]
    return Page(rows, f"the same command with --offset {offset + len(items)}")


@request.command("get")
@click.argument("name", required=False, default="")
@click.option("--uid", default="", help="One replica's payload (instead of NAME).")
@click.option("--oid", default="", help="The item's payload (instead of NAME).")
@click.option(
    "-o",
    "--output",
    default=".",
    show_default=True,
    help="Where to write: a file, or a directory to put it in (a trailing / makes the directory if missing).",
)
@click.option("--no-resume", is_flag=True, help="Start again even if an interrupted download is there.")
@remote()
def request_get(client: DLMClient, name: str, uid: str, oid: str, output: str, no_resume: bool) -> str:
    """Download an item's payload (a container as a tar), checking it on arrival.

    An interrupted download resumes where it stopped when run again (if the payload has not changed).
    If what arrived does not have the checksum DLM recorded, the command fails and keeps the file
    aside as FILE.corrupt. Needs the reader role and leave to read the item (its owner, or its acl).

    \b
    Examples:
      dlm request get obs-42 -o ~/data/
      dlm request get --uid 3f0c… -o obs-42.ms.tar
    """
    show_progress = sys.stderr.isatty()

    def progress(done: int, total: int | None) -> None:
        if show_progress:
            of = f" of {human_size(total)} ({100 * done // total}%)" if total else ""
            click.echo(f"\r{human_size(done)}{of}   ", err=True, nl=False)

    written = client.download(to=output, item_name=name, uid=uid, oid=oid, resume=not no_resume, on_progress=progress)
    if show_progress:
        click.echo(err=True)
    return str(written)


@request.command("deliver")
@click.argument("names", nargs=-1)
@click.option("--where", "params", help="Instead of NAMES: a filter in the params language.")
@click.option(
    "--to",
    "destination",
    required=True,
    help='Where, as JSON (or @file): {"s3": {"bucket": …, "prefix": …, "endpoint": …, "access_key_id": …, '
    '"secret_access_key": …}}, or for operators {"posix": "/dir"} or {"storage_name": …, "path": …}.',
)
@click.option("--packaging", type=click.Choice(["none", "tar-per-container", "tar"]), default="none", show_default=True)
@click.option("--wait", is_flag=True, help="Follow the delivery to its end and print its manifest.")
@remote()
def request_deliver(
    client: DLMClient, names: tuple[str, ...], params: str | None, destination: str, packaging: str, wait: bool
) -> Any:
    """Ship items (names, oids or uids) to a bucket or directory, with a manifest at the end.

    \b
    Examples:
      dlm request deliver obs-41 obs-42 --to @alice-bucket.json --packaging tar --wait
      dlm request deliver --where 'item_name=like.eb-7*' --to '{"posix": "/srv/outbox/eb-7"}'
    """
    if bool(names) == bool(params):
        raise CLIError("give NAMES or --where, not both (nor neither)")
    target = _json_object(destination, "--to")
    assert target is not None
    queued = client.deliver(target, items=list(names) if names else None, params=params, packaging=packaging)
    if not wait:
        return queued
    while (current := client.delivery(queued["delivery_id"]))["status"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
        time.sleep(0.5)
    if current["status"] != "SUCCEEDED":
        raise CLIError(f"delivery {current['delivery_id']} {current['status']}: {current['last_error']}")
    return current["manifest"]


@request.command("cancel-delivery")
@click.argument("delivery_id", type=click.IntRange(min=1))
@remote(("delivery_id", "status", "last_error"))
def request_cancel_delivery(client: DLMClient, delivery_id: int) -> Any:
    """Cancel a delivery that has not finished; a running one removes what it wrote.

    \b
    Example:
      dlm request cancel-delivery 7
    """
    return client.cancel_delivery(delivery_id)


@request.command("deliveries")
@click.option("--status", type=click.Choice(["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]))
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many (newest first).")
@click.option("--limit", type=click.IntRange(1, 1000), help="At most this many (default 1000).")
@remote(("delivery_id", "user", "status", "item_count", "bytes_done", "bytes_total", "created", "last_error"))
def request_deliveries(client: DLMClient, status: str | None, offset: int, limit: int | None) -> Any:
    """Deliveries, newest first (below operator, your own).

    \b
    Example:
      dlm request deliveries --status FAILED
    """
    return client.deliveries(status=status, offset=offset, limit=limit)


@request.command("delivery")
@click.argument("delivery_id", type=click.IntRange(min=1))
@remote()
def request_delivery(client: DLMClient, delivery_id: int) -> Any:
    """A delivery's status, progress and (at the end) manifest."""
    return client.delivery(delivery_id)


@request.command("history")
@click.option("--name", "item_name", default="")
@click.option("--oid", default="")
@click.option("--uid", default="")
@remote(("event_id", "event_time", "uid", "event", "old_value", "new_value", "actor", "detail"))
def request_history(client: DLMClient, item_name: str, oid: str, uid: str) -> list[Any]:
    """The trace of an item: every change, with who made it and when, oldest first.

    \b
    Example:
      dlm request history --name obs-42
    """
    return client.history(item_name=item_name, oid=oid, uid=uid)


@request.command("set-phase")
@click.argument("uid")
@click.argument("phase", type=click.Choice(["GAS", "LIQUID", "SOLID"]))
@remote(ITEM_COLUMNS + ("target_phase",))
def request_set_phase(client: DLMClient, uid: str, phase: str) -> Any:
    """Set the phase the item (all its replicas) must reach.

    \b
    Example:
      dlm request set-phase 3f0c… SOLID
    """
    return client.set_phase(uid, phase)


@request.command("set-state")
@click.argument("uid")
@click.argument("state", type=click.Choice(["INITIALISED", "READY", "EXPIRED", "CORRUPTED", "DELETED"]))
@remote(ITEM_COLUMNS)
def request_set_state(client: DLMClient, uid: str, state: str) -> Any:
    """Move a replica to another state (legal transitions only).

    \b
    Example:
      dlm request set-state 3f0c… READY
    """
    return client.set_state(uid, state)


@request.command("set-uri")
@click.argument("uid")
@click.argument("uri")
@click.argument("storage_id")
@remote(ITEM_COLUMNS)
def request_set_uri(client: DLMClient, uid: str, uri: str, storage_id: str) -> Any:
    """Say where a replica's payload is.

    \b
    Example:
      dlm request set-uri 3f0c… obs-43.ms 7ff8a451-…
    """
    return client.set_uri(uid, uri, storage_id)


@request.command("set-expiration")
@click.option("--uid", default="", help="This replica's uid_expiration.")
@click.option("--oid", default="", help="The item's oid_expiration (all replicas).")
@click.argument("expiration")
@remote(ITEM_COLUMNS + ("uid_expiration", "oid_expiration"))
def request_set_expiration(client: DLMClient, uid: str, oid: str, expiration: str) -> Any:
    """Set when a replica (--uid) or an item (--oid) expires; ISO 8601, UTC unless an offset is given.

    \b
    Examples:
      dlm request set-expiration --uid 3f0c… 2027-01-01
      dlm request set-expiration --oid 3f0c… 2030-06-30T12:00:00+08:00
    """
    if bool(uid) == bool(oid):
        raise CLIError("give exactly one of --uid, --oid")
    return client.set_uid_expiration(uid, expiration) if uid else client.set_oid_expiration(oid, expiration)


@request.command("set-metadata")
@click.argument("uid")
@click.argument("metadata")
@remote()
def request_set_metadata(client: DLMClient, uid: str, metadata: str) -> Any:
    """Replace a replica's metadata (a JSON object, or @file).

    \b
    Example:
      dlm request set-metadata 3f0c… '{"scan": 8}'
    """
    return client.set_metadata(uid, _json_object(metadata, "METADATA") or {})


@request.command("update")
@click.option("--name", "item_name", default="")
@click.option("--oid", default="")
@click.option("--uid", default="")
@click.argument("changes")
@remote(ITEM_COLUMNS)
def request_update(client: DLMClient, item_name: str, oid: str, uid: str, changes: str) -> Any:
    """Change columns of items (a JSON object of column: value).

    \b
    Example:
      dlm request update --uid 3f0c… '{"item_format": "ms"}'
    """
    return client.update_item(_json_object(changes, "CHANGES") or {}, item_name=item_name, oid=oid, uid=uid)


@request.command("set-owner")
@click.option("--oid", default="")
@click.option("--uid", default="")
@click.option("--user")
@click.option("--group")
@click.option("--acl", help="A JSON object.")
@remote(ITEM_COLUMNS + ("item_owner", "item_group"))
def request_set_owner(
    client: DLMClient, oid: str, uid: str, user: str | None, group: str | None, acl: str | None
) -> Any:
    """Set the user, group and/or ACL of a replica (--uid) or of all replicas of an item (--oid).

    \b
    Example:
      dlm request set-owner --oid 3f0c… --user alice --group low-sw
    """
    if user is None and group is None and acl is None:
        raise CLIError("give at least one of --user, --group, --acl")
    result = None
    if user is not None:
        result = client.set_user(user, oid=oid, uid=uid)
    if group is not None:
        result = client.set_group(group, oid=oid, uid=uid)
    if acl is not None:
        result = client.set_acl(_json_object(acl, "--acl") or {}, oid=oid, uid=uid)
    return result


@request.command("tag")
@click.option("--name", "item_name", default="")
@click.option("--oid", default="")
@click.argument("tags")
@remote()
def request_tag(client: DLMClient, item_name: str, oid: str, tags: str) -> Any:
    """Merge tags into an item's (a JSON object; a null value removes a tag).

    \b
    Example:
      dlm request tag --name obs-42 '{"campaign": "AA0.5", "draft": null}'
    """
    return client.update_tags(_json_object(tags, "TAGS") or {}, item_name=item_name, oid=oid)


@request.command("expired")
@click.option("--within", "offset", help="Also those expiring within this (ISO 8601 duration, e.g. PT1H).")
@remote(ITEM_COLUMNS + ("uid_expiration",))
def request_expired(client: DLMClient, offset: str | None) -> list[Any]:
    """Live replicas past their uid_expiration.

    \b
    Example:
      dlm request expired --within P1D
    """
    if offset is not None:
        parse_duration(offset, "--within")  # refused here, named as the command line names it
    return client.expired(offset=offset)


@request.command("deleted")
@click.option("--uid", default="")
@remote(ITEM_COLUMNS)
def request_deleted(client: DLMClient, uid: str) -> list[Any]:
    """Deleted replicas (their rows are kept as the trace)."""
    return client.deleted(uid=uid)


@request.command("new")
@click.argument("since")
@remote(ITEM_COLUMNS + ("uid_creation",))
def request_new(client: DLMClient, since: str) -> list[Any]:
    """Replicas created after SINCE (ISO 8601).

    \b
    Example:
      dlm request new 2026-11-24
    """
    return client.new(since)


@request.command("exists")
@click.option("--name", "item_name", default="")
@click.option("--oid", default="")
@click.option("--uid", default="")
@click.option("--ready", is_flag=True, help="Only READY replicas count.")
@remote()
def request_exists(client: DLMClient, item_name: str, oid: str, uid: str, ready: bool) -> bool:
    """Print true or false; exit status 0 either way (use --json in scripts)."""
    return client.exists(item_name=item_name, oid=oid, uid=uid, ready=ready)


@request.command("where")
@click.option("--name", "item_name", default="")
@click.option("--oid", default="")
@click.option("--uid", default="")
@remote(("uid", "item_name", "storage_name", "uri", "uid_phase"))
def request_where(client: DLMClient, item_name: str, oid: str, uid: str) -> list[Any]:
    """The READY replicas of an item and the storages holding them (none: the item has no READY replica;
    an item that does not exist is an error, as for `history`).

    \b
    Example:
      dlm request where --name obs-42
    """
    replicas = client.item_storage(item_name=item_name, oid=oid, uid=uid)
    if not replicas and not client.exists(item_name=item_name, oid=oid, uid=uid):
        named = f"uid {uid}" if uid else f"oid {oid}" if oid else f"item_name {item_name!r}"
        raise CLIError(f"no item has {named}")
    return replicas


# --- storage ------------------------------------------------------------------------------------


@click.group()
def storage() -> None:
    """Locations, storages, their configs and usage."""


@storage.command("add-location")
@click.argument("name")
@click.option("--type", "location_type", required=True, help="e.g. local-dev, low-operations.")
@click.option("--country", help="AU, ZA or UK.")
@click.option("--city")
@click.option("--facility", help="One of `dlm storage facilities`.")
@remote()
def storage_add_location(
    client: DLMClient, name: str, location_type: str, country: str | None, city: str | None, facility: str | None
) -> str:
    """Create a location; prints its id.

    \b
    Example:
      dlm storage add-location pawsey --type low-operations --city Perth --facility 'Pawsey Centre'
    """
    return client.add_location(
        name, location_type, location_country=country, location_city=city, location_facility=facility
    )


@storage.command("facilities")
@remote()
def storage_facilities(client: DLMClient) -> list[str]:
    """The facility names a location may name."""
    return client.facilities()


@storage.command("locations")
@remote(("location_id", "location_name", "location_type", "location_country", "location_city", "location_facility"))
def storage_locations(client: DLMClient) -> list[Any]:
    """List locations."""
    return client.locations()


@storage.command("add-storage")
@click.argument("name")
@click.option("--location", "location_name", required=True)
@click.option("--interface", type=click.Choice(["posix", "s3"]), default="posix", show_default=True)
@click.option("--root", "root_directory", required=True, help="Absolute directory (posix) or bucket[/prefix] (s3).")
@click.option("--phase", type=click.Choice(["GAS", "LIQUID", "SOLID"]), default="GAS", show_default=True)
@click.option("--capacity", type=int, help="Bytes DLM may use there.")
@click.option("--config", help="Its config in rclone's format: a JSON object, or @file.")
@click.option("--no-check", is_flag=True, help="Create it even if DLM cannot reach it now.")
@remote()
def storage_add_storage(
    client: DLMClient,
    name: str,
    location_name: str,
    interface: str,
    root_directory: str,
    phase: str,
    capacity: int | None,
    config: str | None,
    no_check: bool,
) -> str:
    """Create a storage; prints its id.

    \b
    Examples:
      dlm storage add-storage scratch --location local --root /data/scratch --phase LIQUID
      dlm storage add-storage archive --location local --interface s3 --root my-bucket --phase SOLID \\
          --config '{"type": "s3", "endpoint": "http://minio:9000", "access_key_id": "…", "secret_access_key": "…"}'
    """
    return client.add_storage(
        name,
        root_directory=root_directory,
        location_name=location_name,
        storage_interface=interface,
        storage_phase=phase,
        storage_capacity=capacity,
        config=_json_object(config, "--config"),
        check=not no_check,
    )


@storage.command("update")
@click.argument("name")
@click.option("--available/--unavailable", default=None, help="Whether DLM may use it.")
@click.option("--phase", type=click.Choice(["GAS", "LIQUID", "SOLID"]), help="Its phase (its replicas' follows).")
@click.option("--capacity", type=int, help="Bytes DLM may use there (-1: no limit).")
@click.option("--permissions", type=click.Choice(["R", "RW"]), help="R: DLM neither writes nor deletes there.")
@click.option("--retire/--keep", default=None, help="Start retiring it (move everything off), or call that off.")
@click.option(
    "--reachable-from",
    help="Locations whose workers reach it directly (comma-separated; '*' for all; '' for the default: "
    "a POSIX storage its own location, S3 and SFTP any).",
)
@click.option(
    "--max-transfers", type=click.IntRange(min=0), help="Copies reading from or writing to it at once (0: no limit)."
)
@remote(
    (
        "storage_name",
        "storage_phase",
        "storage_capacity",
        "storage_permissions",
        "storage_available",
        "reachable_from",
        "max_transfers",
    )
)
def storage_update(
    client: DLMClient,
    name: str,
    available: bool | None,
    phase: str | None,
    capacity: int | None,
    permissions: str | None,
    retire: bool | None,
    reachable_from: str | None,
    max_transfers: int | None,
) -> Any:
    """Change a storage (admins). --retire empties it: it takes no new replicas, phase enforcement
    copies what it holds elsewhere and removes it there, and then it is retired for good.

    \b
    Examples:
      dlm storage update scratch --capacity 10000000000000
      dlm storage update old-disk --retire          # then watch: dlm storage events --name old-disk
      dlm storage update lustre --reachable-from perth,pawsey
      dlm storage update tape-cache --max-transfers 2
    """
    return client.update_storage(
        name,
        available=available,
        phase=phase,
        capacity=capacity,
        permissions=permissions,
        retire=retire,
        reachable_from=None if reachable_from is None else [part for part in reachable_from.split(",") if part.strip()],
        max_transfers=max_transfers,
    )


@storage.command("list")
@remote(("storage_id", "storage_name", "storage_interface", "storage_phase", "root_directory", "storage_available"))
def storage_list(client: DLMClient) -> list[Any]:
    """List storages."""
    return client.storages()


@storage.command("config")
@click.argument("name")
@click.option("--set", "new_config", help="Store this config (JSON object or @file) as the newest.")
@remote()
def storage_config(client: DLMClient, name: str, new_config: str | None) -> Any:
    """Show a storage's configs, newest first (secrets as ***), or store a new one with --set.

    \b
    Examples:
      dlm storage config archive
      dlm storage config archive --set @archive-rotated.json
    """
    if new_config is not None:
        return client.set_storage_config(name, _json_object(new_config, "--set") or {})
    return client.storage_configs(name)


@storage.command("ssh-key")
@remote()
def storage_ssh_key(client: DLMClient) -> str:
    """The SSH public key DLM presents to SFTP storages (to put in their authorized_keys)."""
    return client.ssh_public_key()


@storage.command("usage")
@click.option("--name", "storage_name", default="")
@remote(("storage_name", "capacity_bytes", "used_bytes", "objects", "use_pct", "filesystem_free_bytes"))
def storage_usage(client: DLMClient, storage_name: str) -> list[Any]:
    """What DLM holds on each storage, and what is free."""
    return client.usage(storage_name=storage_name)


@storage.command("events")
@click.option("--name", "storage_name", default="", help="One storage's events (default: every storage's).")
@click.option("--after", "after_event_id", type=int, default=0, help="Only events after this event_id.")
@remote(("event_id", "event_time", "storage_name", "event", "detail", "actor"))
def storage_events(client: DLMClient, storage_name: str, after_event_id: int) -> list[Any]:
    """What the lifecycle engines reported about storages, oldest first: capacity_exceeded when a
    storage stays above its high watermark, capacity_relieved when it is below it again.

    \b
    Example:
      dlm storage events --name scratch
    """
    return client.storage_events(storage_name=storage_name, after_event_id=after_event_id)


@storage.command("delete-payload")
@click.argument("uid")
@click.option("--force", is_flag=True, help="Even if the item would fall below its target phase.")
@remote(ITEM_COLUMNS)
def storage_delete_payload(client: DLMClient, uid: str, force: bool) -> list[Any]:
    """Delete one replica's payload; its row stays, DELETED."""
    return client.delete_payload(uid, force=force)


# --- location -----------------------------------------------------------------------------------


@click.group()
def location() -> None:
    """Sites: the links between locations and the workers at each."""


@location.command("link")
@click.argument("source")
@click.argument("destination")
@click.option("--max-transfers", type=click.IntRange(1, 10_000), help="Copies at once from SOURCE to DESTINATION.")
@click.option("--max-bandwidth", "bandwidth", help="Bytes a second in all, e.g. 100M, 1G (binary units).")
@remote(("source_location", "destination_location", "max_transfers", "max_bytes_per_second", "running", "queued"))
def location_link(
    client: DLMClient, source: str, destination: str, max_transfers: int | None, bandwidth: str | None
) -> Any:
    """Limit the copies from location SOURCE to location DESTINATION (admins); with neither option,
    remove the link's limits.

    \b
    Examples:
      dlm location link perth cape-town --max-transfers 4 --max-bandwidth 1G
      dlm location link perth cape-town              # no limits any more
    """
    return client.set_location_link(
        source, destination, max_transfers=max_transfers, max_bytes_per_second=parse_rate(bandwidth)
    )


@location.command("links")
@remote(("source_location", "destination_location", "max_transfers", "max_bytes_per_second", "running", "queued"))
def location_links(client: DLMClient) -> list[Any]:
    """The links with limits or copies under way: their limits, running transfers and queued copies."""
    return client.location_links()


@location.command("workers")
@remote(("location", "processes", "copies", "last_seen"))
def location_workers(client: DLMClient) -> list[Any]:
    """The DLM processes running copy workers now, by location (none: anywhere)."""
    return client.workers()


def parse_rate(text: str | None) -> int | None:
    """``100M``, ``1.5G``, ``500000``: bytes a second (binary units); None for None."""
    if text is None:
        return None
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    cleaned = text.strip().upper().removesuffix("/S").removesuffix("B").removesuffix("I")
    number, unit = (cleaned[:-1], cleaned[-1]) if cleaned and cleaned[-1] in units else (cleaned, "")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise CLIError(f"--max-bandwidth: {text!r} is not a rate such as 100M or 1G") from None
    if value < 1:
        raise CLIError(f"--max-bandwidth: {text!r} must be at least one byte a second")
    return int(value)


# --- migration ----------------------------------------------------------------------------------


@click.group()
def migration() -> None:
    """Copy items between storages and follow the copies."""


@migration.command("copy")
@click.option("--name", "item_name", default="", help="The item (its newest version).")
@click.option("--oid", default="")
@click.option("--uid", default="", help="Copy from this replica.")
@click.option("--to", "destination_name", required=True, help="Destination storage.")
@click.option("--path", default="", help="Destination path (default: the source's uri).")
@click.option("--wait", is_flag=True, help="Follow the copy to its end, with a progress bar.")
@remote()
def migration_copy(
    client: DLMClient, item_name: str, oid: str, uid: str, destination_name: str, path: str, wait: bool
) -> Any:
    """Queue a verified copy of an item to another storage.

    Without --wait, prints the new replica's uid and the migration_id at once. With --wait, shows the
    progress and exits 1 if the copy fails.

    \b
    Examples:
      dlm migration copy --name obs-42 --to archive --wait
      dlm migration copy --uid 3f0c… --to scratch --path staging/obs-42.ms
    """
    return _queue(client, item_name, oid, uid, destination_name, path, wait, move=False)


@migration.command("move")
@click.option("--name", "item_name", default="", help="The item (its newest version).")
@click.option("--oid", default="")
@click.option("--uid", default="", help="Move this replica.")
@click.option("--to", "destination_name", required=True, help="Destination storage.")
@click.option("--path", default="", help="Destination path (default: the source's uri).")
@click.option("--wait", is_flag=True, help="Follow the move to its end, with a progress bar.")
@click.option("--force", is_flag=True, help="(admins) Move even if the item is left below its target phase.")
@remote()
def migration_move(
    client: DLMClient, item_name: str, oid: str, uid: str, destination_name: str, path: str, wait: bool, force: bool
) -> Any:
    """Move a replica to another storage: a verified copy, then the source replica goes.

    The item is never without a READY replica: the source is deleted only once the copy is READY, and
    only as a deletion may. A move that would leave the item below its target phase, or whose source
    is on a read-only storage, is refused before anything is copied.

    \b
    Examples:
      dlm migration move --name obs-42 --to archive --wait
    """
    return _queue(client, item_name, oid, uid, destination_name, path, wait, move=True, force=force)


def _queue(
    client: DLMClient,
    item_name: str,
    oid: str,
    uid: str,
    destination_name: str,
    path: str,
    wait: bool,
    *,
    move: bool,
    force: bool = False,
) -> Any:
    queued = client.queue_copy(
        item_name=item_name, oid=oid, uid=uid, destination_name=destination_name, path=path, move=move, force=force
    )
    if not wait:
        return queued
    as_json = click.get_current_context().meta["as_json"]
    if as_json or not sys.stderr.isatty():
        finished = client.wait(queued["migration_id"])
    else:
        finished = _wait_with_bar(client, queued["migration_id"])
    if finished.status != "SUCCEEDED":
        raise CLIError(f"migration {finished.migration_id} {finished.status}: {finished.last_error}")
    return finished


def _wait_with_bar(client: DLMClient, migration_id: int) -> Any:
    first = client.migration(migration_id)
    with click.progressbar(
        length=max(first.bytes_total or 0, 1), label=f"migration {migration_id}", file=sys.stderr
    ) as bar:
        shown = 0

        def advance(current: Any) -> None:
            nonlocal shown
            if current.bytes_total and current.bytes_total != bar.length:
                bar.length = current.bytes_total
            bar.update(max(current.bytes_done - shown, 0))
            shown = max(shown, current.bytes_done)

        return client.wait(migration_id, on_progress=advance)


@migration.command("list")
@click.option("--since", "start_date", help="Created on or after (YYYY-MM-DD).")
@click.option("--until", "end_date", help="Completed on or before (YYYY-MM-DD).")
@click.option("--storage-id", help="From or to this storage.")
@remote(("migration_id", "status", "item", "source", "destination", "bytes_done", "bytes_total", "date", "last_error"))
def migration_list(client: DLMClient, start_date: str | None, end_date: str | None, storage_id: str | None) -> Any:
    """List migrations, newest first (the latest 1000; --since and --until narrow them down).

    \b
    Examples:
      dlm migration list
      dlm migration list --since 2026-11-01 --json
    """
    migrations = client.migrations(start_date=start_date, end_date=end_date, storage_id=storage_id)
    if click.get_current_context().meta.get("as_json") or not migrations:
        return migrations
    storages = _storage_names(client)
    items = _item_names(client, sorted({str(row.oid) for row in migrations}))
    rows = [
        {
            **_as_dict(row),
            "item": items.get(str(row.oid), row.oid),
            "source": storages.get(str(row.source_storage_id), row.source_storage_id),
            "destination": storages.get(str(row.destination_storage_id), row.destination_storage_id),
        }
        for row in migrations
    ]
    return Page(rows, "an earlier --until")


def _item_names(client: DLMClient, oids: list[str]) -> dict[str, str]:
    """item_name by oid, a hundred oids per request (a URL must stay short)."""
    names = {}
    for start in range(0, len(oids), 100):
        chunk = ",".join(oids[start : start + 100])
        for item in client.query(params=f"oid=in.({chunk})&select=oid,item_name"):
            names[str(item.oid)] = item.item_name
    return names


@migration.command("show")
@click.argument("migration_id", type=int)
@remote()
def migration_show(client: DLMClient, migration_id: int) -> Any:
    """One migration: status, progress, attempts, last error."""
    return client.migration(migration_id)


@migration.command("cancel")
@click.argument("migration_id", type=int)
@remote(MIGRATION_COLUMNS)
def migration_cancel(client: DLMClient, migration_id: int) -> Any:
    """Stop a queued or running copy; what it wrote is removed."""
    return client.cancel(migration_id)


@migration.command("retry")
@click.argument("migration_id", type=int)
@remote()
def migration_retry(client: DLMClient, migration_id: int) -> Any:
    """Run a FAILED or CANCELLED copy again."""
    return client.retry(migration_id)


# --- who am I -----------------------------------------------------------------------------------


@click.command("whoami")
@remote()
def whoami(client: DLMClient) -> Any:
    """Who the server takes you for: the subject it records as the actor of your changes, your role,
    and whether a token (`token`), your identity provider (`oidc`) or nothing (`open`) told it.

    \b
    Example:
      DLM_TOKEN=dlm_... dlm whoami
    """
    return client.whoami()
