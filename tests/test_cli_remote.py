"""The `dlm` CLI and the Python clients, end to end against a live `dlm serve` process."""

import datetime
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlm.client import AsyncDLMClient, DLMClient, Item, Migration
from dlm.errors import InvalidQueryParameters, NotFound, ValueAlreadyInDB
from tests.conftest import Server, free_port, scratch_database


class Live:
    def __init__(self, url: str, root: Path) -> None:
        self.url, self.root = url, root


@pytest.fixture(scope="module")
async def live(
    postgres_url: str, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Live]:
    """One server for the module: starting one takes seconds, and each test uses names of its own."""
    async with scratch_database(postgres_url, "dlm_cli", template=template_database) as url:
        root = tmp_path_factory.mktemp("live")
        server = await Server(url, root / "data").ready()
        try:
            yield Live(server.base, root)
        finally:
            server.stop()


def dlm(live: Live, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DLM_")}
    result = subprocess.run(
        [sys.executable, "-m", "dlm", *args],
        env={**environment, "DLM_URL": live.url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == expect, (args, result.stdout, result.stderr)
    return result


def dlm_json(live: Live, *args: str) -> Any:
    return json.loads(dlm(live, *args, "--json").stdout)


def test_a_newcomer_registers_a_container_and_copies_it_from_the_cli(live: Live) -> None:
    disk, scratch = live.root / "cli-disk", live.root / "cli-scratch"
    site = disk
    scratch.mkdir()
    for member in ("run/a.ms", "run/sub/b.ms"):
        (site / member).parent.mkdir(parents=True, exist_ok=True)
        (site / member).write_bytes(os.urandom(2048))

    dlm(live, "storage", "add-location", "cli-site", "--type", "local-dev")
    dlm(live, "storage", "add-storage", "cli-disk", "--location", "cli-site", "--root", str(disk))
    dlm(
        live,
        "storage",
        "add-storage",
        "cli-scratch",
        "--location",
        "cli-site",
        "--root",
        str(scratch),
        "--phase",
        "LIQUID",
    )
    listed = dlm(live, "storage", "list").stdout
    assert "cli-disk" in listed and "cli-scratch" in listed and listed.splitlines()[0].startswith("storage_id")

    container = dlm(
        live, "ingest", "register", "cli-run", "run", "--storage", "cli-disk", "--container", "--with-members"
    ).stdout.strip()
    [row] = dlm_json(live, "request", "query", "--uid", container)
    assert row["item_type"] == "container"
    table = dlm(live, "request", "query", "--where", "item_name=like.cli-run*", "--state", "READY").stdout
    assert "cli-run/a.ms" in table and "container" in table

    finished = dlm_json(live, "migration", "copy", "--name", "cli-run", "--to", "cli-scratch", "--wait")
    assert finished["status"] == "SUCCEEDED" and finished["bytes_done"] == 4096
    assert (scratch / "run/sub/b.ms").read_bytes() == (site / "run/sub/b.ms").read_bytes()
    shown = dlm(live, "migration", "show", str(finished["migration_id"])).stdout
    assert "SUCCEEDED" in shown and "bytes_done" in shown
    assert any(m["migration_id"] == finished["migration_id"] for m in dlm_json(live, "migration", "list"))
    usage = {row["storage_name"]: row for row in dlm_json(live, "storage", "usage")}
    assert usage["cli-scratch"]["objects"] == 3, "the container and its two registered members"
    history = dlm_json(live, "request", "history", "--name", "cli-run")
    assert {event["event"] for event in history} >= {"created", "item_state"}


def test_a_download_resumes_and_is_checked_on_arrival(live: Live, tmp_path: Path) -> None:
    disk = live.root / "get-disk"
    disk.mkdir()
    payload = os.urandom(3 * 1024 * 1024 + 5)
    (disk / "obs.dat").write_bytes(payload)
    dlm(live, "storage", "add-location", "get-site", "--type", "local-dev")
    dlm(live, "storage", "add-storage", "get-disk", "--location", "get-site", "--root", str(disk))
    uid = dlm(live, "ingest", "register", "get-obs", "obs.dat", "--storage", "get-disk").stdout.strip()

    out = tmp_path / "downloads"
    out.mkdir()
    written = dlm(live, "request", "get", "get-obs", "-o", str(out)).stdout.strip()
    assert Path(written) == out / "get-obs" and Path(written).read_bytes() == payload

    # An interrupted download: the part received so far, and which version of the payload it is of.
    with DLMClient(live.url) as client:
        assert client.download(to=tmp_path / "whole", uid=uid).read_bytes() == payload
    etag = _etag(live.url, uid)
    (tmp_path / "again.dlm-part").write_bytes(payload[:1000])
    (tmp_path / "again.dlm-part.etag").write_text(etag)
    dlm(live, "request", "get", "--uid", uid, "-o", str(tmp_path / "again"))
    assert (tmp_path / "again").read_bytes() == payload
    assert not (tmp_path / "again.dlm-part").exists()
    retrieved = [e for e in dlm_json(live, "request", "history", "--uid", uid) if e["event"] == "retrieved"]
    assert any(event["new_value"].startswith(f"bytes 1000-{len(payload) - 1} of") for event in retrieved)

    # The payload rots on its storage (same size, other bytes): what arrives is refused and kept aside.
    (disk / "obs.dat").write_bytes(payload[:-1] + bytes([payload[-1] ^ 0xFF]))
    failed = dlm(live, "request", "get", "get-obs", "-o", str(tmp_path / "rotten"), expect=1)
    [line] = failed.stderr.strip().splitlines()
    assert "ChecksumMismatch" in line and "kept aside" in line
    assert (tmp_path / "rotten.corrupt").exists() and not (tmp_path / "rotten").exists()
    missing = dlm(live, "request", "get", "no-such-item", "-o", str(tmp_path), expect=1)
    assert "NotFound" in missing.stderr


async def test_the_python_clients_download_and_stream(live: Live, tmp_path: Path) -> None:
    disk = live.root / "py-get"
    disk.mkdir()
    payload = os.urandom(2 * 1024 * 1024 + 3)
    (disk / "x.dat").write_bytes(payload)
    with DLMClient(live.url) as client:
        client.add_location("py-get-site", "local-dev")
        client.add_storage("py-get", root_directory=str(disk), location_name="py-get-site")
        uid = client.register("py-get-x", "x.dat", storage_name="py-get")
        with client.open(uid=uid) as stream:
            assert stream.read() == payload
        with pytest.raises(NotFound):
            client.open(item_name="py-get-missing")
    seen: list[tuple[int, int | None]] = []
    async with AsyncDLMClient(live.url) as client:
        written = await client.download(
            to=tmp_path, uid=uid, on_progress=lambda done, total: seen.append((done, total))
        )
    assert written.read_bytes() == payload and seen[-1] == (len(payload), len(payload))


def test_a_delivery_from_the_command_line(live: Live) -> None:
    disk, outbox = live.root / "deliver-disk", live.root / "outbox"
    disk.mkdir()
    outbox.mkdir()
    (disk / "a.dat").write_bytes(b"for the outbox")
    dlm(live, "storage", "add-location", "deliver-site", "--type", "local-dev")
    dlm(live, "storage", "add-storage", "deliver-disk", "--location", "deliver-site", "--root", str(disk))
    dlm(live, "ingest", "register", "deliver-a", "a.dat", "--storage", "deliver-disk")
    manifest = dlm_json(live, "request", "deliver", "deliver-a", "--to", json.dumps({"posix": str(outbox)}), "--wait")
    assert [entry["item_name"] for entry in manifest] == ["deliver-a"]
    assert (outbox / "deliver-a").read_bytes() == b"for the outbox"
    both = dlm(live, "request", "deliver", "deliver-a", "--where", "x", "--to", "{}", expect=1)
    assert "not both" in both.stderr


def _etag(url: str, uid: str) -> str:
    response = httpx.head(f"{url}/request/retrieve", params={"uid": uid})
    return response.headers["etag"]


def test_tables_are_for_people(live: Live) -> None:
    root = live.root / "people"
    for directory in ("in", "out"):
        (root / directory).mkdir(parents=True)
    (root / "in" / "big.dat").write_bytes(b"x" * 3 * 1024 * 1024)
    dlm(live, "storage", "add-location", "people-site", "--type", "local-dev")
    dlm(live, "storage", "add-storage", "people", "--location", "people-site", "--root", str(root / "in"))
    dlm(live, "storage", "add-storage", "people-out", "--location", "people-site", "--root", str(root / "out"))
    dlm(live, "ingest", "register", "people-big", "big.dat", "--storage", "people")
    table = dlm(live, "request", "query", "--name", "people-big").stdout
    assert "3.0 MiB" in table and " people " in table, "sizes for people, the storage by name"
    assert "3145728" in dlm(live, "request", "query", "--name", "people-big", "--bytes").stdout
    assert dlm(live, "request", "exists", "--name", "people-big").stdout.strip() == "true"
    assert dlm(live, "request", "exists", "--name", "nobody-at-all").stdout.strip() == "false"
    dlm(live, "migration", "copy", "--name", "people-big", "--to", "people-out", "--wait")
    migrations = dlm(live, "migration", "list").stdout
    assert "people-big" in migrations and "people-out" in migrations, migrations

    entries = [
        {
            "item_name": f"page-{index}",
            "uri": f"page-{index}",
            "storage_name": "people",
            "do_storage_access_check": False,
        }
        for index in range(1000)
    ]
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DLM_")}
    subprocess.run(
        [sys.executable, "-m", "dlm", "ingest", "register-many", "-"],
        input=json.dumps(entries),
        env={**environment, "DLM_URL": live.url},
        capture_output=True,
        text=True,
        check=True,
    )
    full = dlm(live, "request", "query", "--where", "item_name=like.page-*")
    assert "full page" in full.stderr and "--offset 1000" in full.stderr
    rest = dlm(live, "request", "query", "--where", "item_name=like.page-*", "--offset", "1000")
    assert rest.stderr.strip() == "(none)"


def test_a_url_that_is_not_dlm_is_one_line(live: Live, tmp_path: Path) -> None:
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = dlm(live, "request", "query", "--url", url, expect=1)
    finally:
        server.shutdown()
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("dlm: error:") and "not DLM's JSON" in line and "<html" not in line.lower()


def test_cli_errors_are_one_line_naming_the_problem(live: Live) -> None:
    cases = [
        (("ingest", "register", "x", "x", "--storage", "no-such-storage"), "InvalidQueryParameters", "no-such-storage"),
        (("ingest", "register", "x", "x", "--storage", "s", "--metadata", "{oops"), "--metadata", "JSON"),
        (("migration", "show", "987654"), "NotFound", "987654"),
        (
            ("migration", "copy", "--name", "nothing-by-this-name", "--to", "nowhere"),
            "InvalidQueryParameters",
            "nothing-by",
        ),
        (("storage", "config", "no-such-storage"), "InvalidQueryParameters", "no-such-storage"),
    ]
    for args, name, fragment in cases:
        result = dlm(live, *args, expect=1)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dlm: error:"), result.stderr
        assert name in lines[0] and fragment in lines[0], lines[0]
    unreachable = subprocess.run(
        [sys.executable, "-m", "dlm", "storage", "list", "--url", f"http://127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unreachable.returncode == 1 and "cannot reach DLM" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


def test_the_first_hours_rough_edges_are_one_line_or_do_what_they_say(live: Live, tmp_path: Path) -> None:
    """Issue 27's CLI defects: each answers as a reader would expect."""
    root = live.root / "edges"
    root.mkdir()
    (root / "e.dat").write_text("edge\n")
    dlm(live, "storage", "add-location", "edge-site", "--type", "local-dev")
    dlm(live, "storage", "add-storage", "edges", "--location", "edge-site", "--root", str(root))
    uid = dlm(
        live, "ingest", "register", "edge", "e.dat", "--storage", "edges", "--expires", "2099-12-31"
    ).stdout.strip()
    [item] = dlm_json(live, "request", "query", "--uid", uid)
    assert item["uid_expiration"].startswith("2099-12-31"), "register takes an expiry, as the README's curl does"

    def one_line(*args: str, fragment: str) -> None:
        result = dlm(live, *args, expect=1)
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("dlm: error:") and fragment in line and "Traceback" not in result.stderr, line

    one_line("request", "get", "edge", "-o", "/nonexistent/dir/", fragment="'/nonexistent' does not exist")
    one_line("request", "get", "edge", "-o", "/nonexistent/dir/file", fragment="'/nonexistent/dir' does not exist")
    new_directory = tmp_path / "newdir"
    dlm(live, "request", "get", "edge", "-o", f"{new_directory}/")
    assert (new_directory / "edge").read_text() == "edge\n", "a trailing slash means a directory, made if missing"
    one_line("request", "where", "--name", "no-such-item", fragment="no item has item_name 'no-such-item'")
    one_line("request", "history", "--name", "no-such-item", fragment="no-such-item")
    one_line("request", "expired", "--within", "2days", fragment="--within: '2days'")
    one_line("migration", "move", "--name", "edge", "--to", "edges", fragment="already lives")
    outbox = live.root / "outbox-made-for-you" / "inbox"
    delivered = dlm_json(live, "request", "deliver", "edge", "--to", json.dumps({"posix": str(outbox)}), "--wait")
    assert delivered[0]["item_name"] == "edge" and (outbox / "edge").read_text() == "edge\n"


def test_every_command_has_help_with_examples(live: Live) -> None:
    for args in (
        ("ingest", "register"),
        ("request", "query"),
        ("storage", "add-storage"),
        ("storage", "config"),
        ("migration", "copy"),
    ):
        text = dlm(live, *args, "--help").stdout
        assert "Example" in text and "--json" in text and "--url" in text, args


def test_the_python_client_in_a_few_lines(live: Live) -> None:
    (live.root / "py-disk").mkdir()
    (live.root / "py-disk" / "obs.dat").write_bytes(b"observation\n")
    with DLMClient(live.url) as client:
        client.add_location("py-site", "local-dev")
        client.add_storage("py-disk", root_directory=str(live.root / "py-disk"), location_name="py-site")
        (live.root / "py-copy").mkdir()
        client.add_storage("py-copy", root_directory=str(live.root / "py-copy"), location_name="py-site")
        uid = client.register("py-obs", "obs.dat", storage_name="py-disk", metadata={"scan": 1})
        [item] = client.query(uid=uid)
        assert isinstance(item, Item) and item.item_size == 12 and item.metadata["scan"] == 1
        done = client.copy(uid=uid, destination_name="py-copy", wait=True)
        assert isinstance(done, Migration) and done.status == "SUCCEEDED"
        with pytest.raises(ValueAlreadyInDB):
            client.register("py-obs", "obs.dat", storage_name="py-disk")
        with pytest.raises(NotFound):
            client.migration(123456)
        with pytest.raises(InvalidQueryParameters, match="params"):
            client.query(params="colour=eq.red")


async def test_the_async_client(live: Live) -> None:
    # Its own storage: under xdist no other test of the module need have run on this worker first.
    dlm(live, "storage", "add-location", "async-site", "--type", "local-dev")
    (live.root / "async-disk").mkdir()
    dlm(
        live,
        "storage",
        "add-storage",
        "async-disk",
        "--location",
        "async-site",
        "--root",
        str(live.root / "async-disk"),
    )
    async with AsyncDLMClient(live.url) as client:
        storages = await client.storages(storage_name="async-disk")
        assert [storage.storage_name for storage in storages] == ["async-disk"] and storages[0].storage_id
        assert await client.query(item_name="no-such-item") == []
        with pytest.raises(NotFound, match="migration_id 424242"):
            await client.migration(424242)


# Every operation the server offers, and the command that offers it on the command line.
CLI_FOR_OPERATION = {
    "/request/retrieve": "request get",
    "/request/deliver": "request deliver",
    "/request/get_delivery": "request delivery",
    "/request/query_deliveries": "request deliveries",
    "/request/cancel_delivery": "request cancel-delivery",
    "/migration/move_data_item": "migration move",
    "/ingest/init_data_item": "ingest init",
    "/ingest/register_data_item": "ingest register",
    "/ingest/register_data_items": "ingest register-many",
    "/request/query_data_item": "request query",
    "/request/update_data_item": "request update",
    "/request/set_uri": "request set-uri",
    "/request/set_metadata": "request set-metadata",
    "/request/set_state": "request set-state",
    "/request/set_oid_expiration": "request set-expiration",
    "/request/set_uid_expiration": "request set-expiration",
    "/request/set_user": "request set-owner",
    "/request/set_group": "request set-owner",
    "/request/set_acl": "request set-owner",
    "/request/set_phase": "request set-phase",
    "/request/update_item_tags": "request tag",
    "/request/query_expired": "request expired",
    "/request/query_deleted": "request deleted",
    "/request/query_new": "request new",
    "/request/query_exists": "request exists",
    "/request/query_exist_and_ready": "request exists",
    "/request/query_item_storage": "request where",
    "/request/query_item_history": "request history",
    "/storage/query_location_facility": "storage facilities",
    "/storage/init_location": "storage add-location",
    "/storage/query_location": "storage locations",
    "/storage/init_storage": "storage add-storage",
    "/storage/update_storage": "storage update",
    "/storage/query_storage": "storage list",
    "/storage/create_storage_config": "storage config",
    "/storage/get_storage_config": "storage config",
    "/storage/rclone_config": "storage config",
    "/storage/get_ssh_public_key": "storage ssh-key",
    "/storage/storage_usage": "storage usage",
    "/storage/query_storage_events": "storage events",
    "/storage/delete_data_item_payload": "storage delete-payload",
    "/storage/set_location_link": "location link",
    "/storage/query_location_links": "location links",
    "/storage/query_workers": "location workers",
    "/migration/copy_data_item": "migration copy",
    "/migration/query_migrations": "migration list",
    "/migration/get_migration": "migration show",
    "/migration/cancel_migration": "migration cancel",
    "/migration/retry_migration": "migration retry",
    "/auth/whoami": "whoami",
    "/auth/create_token": "token create",
    "/auth/list_tokens": "token list",
    "/auth/revoke_token": "token revoke",
}


def test_register_many_prints_the_uids_one_per_line(live: Live) -> None:
    root = live.root / "many"
    root.mkdir()
    for name in ("a.dat", "b.dat"):
        (root / name).write_text(name)
    dlm(live, "storage", "add-location", "many-site", "--type", "local-dev")
    dlm(live, "storage", "add-storage", "many", "--location", "many-site", "--root", str(root))
    entries = [{"item_name": f"many-{name}", "uri": name, "storage_name": "many"} for name in ("a.dat", "b.dat")]
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DLM_")}
    result = subprocess.run(
        [sys.executable, "-m", "dlm", "ingest", "register-many", "-"],
        input=json.dumps(entries),
        env={**environment, "DLM_URL": live.url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    uids = result.stdout.split()
    assert len(uids) == 2 and all(len(uid) == 36 for uid in uids), result.stdout
    assert [row["item_name"] for row in dlm_json(live, "request", "query", "--uid", uids[1])] == ["many-b.dat"]


def test_every_rest_operation_has_a_cli_command() -> None:
    from click.testing import CliRunner

    from dlm.app import create_app
    from dlm.cli import main
    from dlm.config import Settings

    app = create_app(Settings(database_url="postgresql://unused@127.0.0.1/unused"))
    served = {
        route.path
        for route in app.routes
        if route.path.split("/")[1] in ("ingest", "request", "storage", "migration", "auth")
    }
    assert served == set(CLI_FOR_OPERATION), served ^ set(CLI_FOR_OPERATION)
    for command in set(CLI_FOR_OPERATION.values()):
        result = CliRunner().invoke(main, [*command.split(), "--help"])
        assert result.exit_code == 0, (command, result.output)


def test_the_classic_three_step_ingest_and_lifecycle_commands(live: Live) -> None:
    (live.root / "classic").mkdir()
    (live.root / "classic" / "c.dat").write_text("classic\n")
    dlm(live, "storage", "add-location", "classic-site", "--type", "local-dev")
    storage_id = dlm(
        live, "storage", "add-storage", "classic", "--location", "classic-site", "--root", str(live.root / "classic")
    ).stdout.strip()
    before = datetime.datetime.now(datetime.UTC).isoformat()
    uid = dlm(live, "ingest", "init", "classic-item").stdout.strip()
    assert dlm_json(live, "request", "exists", "--uid", uid, "--ready") is False
    dlm(live, "request", "set-uri", uid, "c.dat", storage_id)
    assert dlm_json(live, "request", "set-state", uid, "READY")["item_state"] == "READY"
    assert dlm_json(live, "request", "exists", "--uid", uid, "--ready") is True
    [where] = dlm_json(live, "request", "where", "--uid", uid)
    assert where["uri"] == "c.dat"
    oid = dlm_json(live, "request", "query", "--uid", uid)[0]["oid"]
    dlm(live, "request", "set-expiration", "--oid", oid, "2031-01-01")
    item = dlm_json(live, "request", "set-owner", "--oid", oid, "--user", "alice", "--group", "low-sw")
    assert (item["item_owner"], item["item_group"]) == ("oidc:alice", "low-sw")
    dlm(live, "request", "tag", "--oid", oid, '{"campaign": "AA0.5"}')
    assert dlm_json(live, "request", "query", "--uid", uid)[0]["item_tags"] == {"campaign": "AA0.5"}
    dlm(live, "request", "set-expiration", "--uid", uid, "2000-01-01")
    assert uid in {row["uid"] for row in dlm_json(live, "request", "expired")}
    assert uid in {row["uid"] for row in dlm_json(live, "request", "new", before)}
    refused = dlm(live, "request", "set-state", uid, "INITIALISED", expect=1)
    assert "UnmetPreconditionForOperation" in refused.stderr and "READY" in refused.stderr
    both = dlm(live, "request", "set-expiration", "--uid", uid, "--oid", oid, "2030-01-01", expect=1)
    assert "exactly one of --uid, --oid" in both.stderr


def test_sites_and_deliveries_from_the_command_line(live: Live) -> None:
    for name in ("perth-cli", "cape-cli"):
        dlm(live, "storage", "add-location", name, "--type", "local-dev")
    link = dlm_json(
        live, "location", "link", "perth-cli", "cape-cli", "--max-transfers", "3", "--max-bandwidth", "100M"
    )
    assert (link["max_transfers"], link["max_bytes_per_second"]) == (3, 100 * 1024 * 1024)
    assert link in dlm_json(live, "location", "links")
    slow = dlm(live, "location", "link", "perth-cli", "cape-cli", "--max-bandwidth", "fast", expect=1)
    assert slow.stderr.strip().count("\n") == 0 and "--max-bandwidth" in slow.stderr, slow.stderr
    nowhere = dlm(live, "location", "link", "perth-cli", "moon", "--max-transfers", "1", expect=1)
    assert "moon" in nowhere.stderr and nowhere.stderr.strip().count("\n") == 0, nowhere.stderr
    dlm(live, "location", "link", "perth-cli", "cape-cli")  # no limits: the link's row goes
    assert [row for row in dlm_json(live, "location", "links") if row["source_location"] == "perth-cli"] == []
    workers = dlm_json(live, "location", "workers")
    assert [row["location"] for row in workers if row["processes"]] == [None], "the live server's run anywhere"
    assert isinstance(dlm_json(live, "request", "deliveries", "--status", "FAILED"), list)
