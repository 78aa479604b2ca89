"""A rolling upgrade under load: the running DLM keeps serving while a newer DLM's revisions apply,
the newer DLM then serves beside it on the same database, and the old one is drained and stopped, with
clients registering, querying and copying throughout. No request may fail beyond a client's retry
of a 503.

The newer DLM is this DLM with one more revision, an expand revision such as a later release brings
(a column with a default, a table, an index), built as a copy of the package beside the checkout."""

import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

import dlm
from dlm.db import schema
from tests.conftest import Registry, Server, admin_connection, dlm_environment

CLIENTS = 4
PROBE = '''"""rolling upgrade probe: an expand revision, as a later release would bring

Revision ID: {revision}
Revises: {head}
"""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{head}"
branch_labels = None
depends_on = None
serves_from = "{head}"


def upgrade() -> None:
    op.add_column("data_item", sa.Column("probe_note", sa.String(), server_default="", nullable=False))
    op.create_table("probe", sa.Column("probe_id", sa.Integer(), primary_key=True))
    op.create_index("ix_data_item_probe_note", "data_item", ["probe_note"])


def downgrade() -> None:
    op.drop_index("ix_data_item_probe_note", table_name="data_item")
    op.drop_table("probe")
    op.drop_column("data_item", "probe_note")
'''


def newer_dlm(root: Path) -> tuple[Path, str]:
    """A copy of this DLM with one more (expand) revision: where it is (run it from there: ``python -m``
    puts the working directory first on the path), and that revision."""
    source = Path(dlm.__file__).parent
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(source, root / "dlm", ignore=ignore)
    shutil.copytree(schema.migrations_dir(), root / "migrations", ignore=ignore)
    head = schema.head_revision()
    revision = f"{int(head) + 1:04d}"
    (root / "migrations" / "versions" / f"{revision}_rolling_upgrade_probe.py").write_text(
        PROBE.format(revision=revision, head=head)
    )
    return root, revision


class Load:
    """Clients registering items, reading them back and queueing a copy of every fourth, over whichever
    DLM processes the load balancer (``bases``) currently sends to. A 503 or a refused connection is
    retried, as DLM's clients do; anything else that is not a 200 is a failure."""

    def __init__(self, bases: list[str], root: Path) -> None:
        self.bases, self.root = bases, root
        self.acknowledged: list[str] = []
        self.copies: list[int] = []
        self.failures: list[str] = []
        self.retries = 0
        self.stop = asyncio.Event()
        self.next = 0

    async def request(self, http: httpx.AsyncClient, method: str, path: str, **params: object) -> httpx.Response:
        for _ in range(50):
            base = self.bases[self.next % len(self.bases)]
            try:
                response = await http.request(method, f"{base}{path}", params=params)
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code != 503:
                return response
            self.retries += 1
            await asyncio.sleep(0.2)
        raise AssertionError(f"{method} {path}: no answer after 50 tries")

    async def client(self) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            while not self.stop.is_set():
                index, self.next = self.next, self.next + 1
                name = f"load/{index:06d}"
                (self.root / name).parent.mkdir(parents=True, exist_ok=True)
                (self.root / name).write_bytes(b"r" * (10 + index))
                registered = await self.request(
                    http, "POST", "/ingest/register_data_item", item_name=name, uri=name, storage_name="disk"
                )
                if registered.status_code != 200:
                    self.failures.append(f"register {name}: {registered.status_code} {registered.text}")
                    continue
                self.acknowledged.append(name)
                found = await self.request(http, "GET", "/request/query_data_item", item_name=name)
                if found.status_code != 200 or len(found.json()) != 1:
                    self.failures.append(f"query {name}: {found.status_code} {found.text}")
                if index % 4 == 0:
                    queued = await self.request(
                        http, "POST", "/migration/copy_data_item", uid=registered.json(), destination_name="archive"
                    )
                    if queued.status_code == 200:
                        self.copies.append(queued.json()["migration_id"])
                    else:
                        self.failures.append(f"copy {name}: {queued.status_code} {queued.text}")


async def test_old_and_new_dlm_serve_side_by_side_while_the_new_revisions_apply(
    database_url: str, tmp_path: Path
) -> None:
    await schema.upgrade(database_url)
    newer, revision = newer_dlm(tmp_path / "newer")
    disk, archive = tmp_path / "disk", tmp_path / "archive"
    old = await Server(database_url, tmp_path / "old", migration_lease_seconds=10).ready()
    new: Server | None = None
    try:
        async with httpx.AsyncClient(base_url=old.base, timeout=30) as http:
            registry = Registry(http, disk)  # type: ignore[arg-type]  # httpx speaks the same
            for name, root in (("disk", disk), ("archive", archive)):
                await registry.storage(name, root=root)

        bases = [old.base]
        load = Load(bases, disk)
        clients = [asyncio.create_task(load.client()) for _ in range(CLIENTS)]
        readiness: list[int] = []

        async def watch_old_readiness() -> None:
            async with httpx.AsyncClient(base_url=old.base, timeout=10) as probe:
                while not load.stop.is_set():
                    readiness.append((await probe.get("/health/ready")).status_code)
                    await asyncio.sleep(0.2)

        watcher = asyncio.create_task(watch_old_readiness())
        try:
            await asyncio.sleep(2)
            # The newer DLM's schema goes in while the old DLM serves the load.
            environment = dlm_environment(database_url, tmp_path / "newer-cli")
            environment["PYTHONPATH"] = str(newer)
            upgraded = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "dlm", "db", "upgrade"],
                env=environment, cwd=newer, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert upgraded.returncode == 0, upgraded.stderr
            await asyncio.sleep(1)
            # The newer DLM joins: both serve.
            new = await Server(
                database_url,
                tmp_path / "new",
                environ={"PYTHONPATH": str(newer)},
                cwd=newer,
                migration_lease_seconds=10,
            ).ready()
            bases.append(new.base)
            await asyncio.sleep(3)
            # The old one is drained (the balancer stops sending to it) and stopped.
            bases.remove(old.base)
            await asyncio.sleep(0.5)
            load.stop.set()
            await asyncio.gather(*clients, watcher)
            old.stop()
            load.stop.clear()
            clients = [asyncio.create_task(load.client()) for _ in range(CLIENTS)]
            await asyncio.sleep(2)
        finally:
            load.stop.set()
            await asyncio.gather(*clients, return_exceptions=True)
            watcher.cancel()

        print(f"{len(load.acknowledged)} registrations, {len(load.copies)} copies, {load.retries} retried requests")
        async with admin_connection(database_url) as connection:
            blank = await connection.fetchval("SELECT count(*) FROM data_item WHERE probe_note = ''")
            assert blank == await connection.fetchval("SELECT count(*) FROM data_item"), "the old DLM's rows too"
        assert load.failures == [], load.failures[:5]
        assert len(load.acknowledged) > 40 and load.copies, "the load ran"
        assert readiness and set(readiness) == {200}, f"the old DLM stayed ready: {readiness}"
        async with httpx.AsyncClient(base_url=new.base, timeout=30) as http:
            ready = (await http.get("/health/ready")).json()
            assert ready == {"status": "ok", "schema": revision}, ready
            deadline = time.monotonic() + 60
            while True:
                statuses = [
                    (await http.get("/migration/get_migration", params={"migration_id": m})).json()[0]["status"]
                    for m in load.copies
                ]
                if set(statuses) == {"SUCCEEDED"}:
                    break
                assert time.monotonic() < deadline, statuses
                await asyncio.sleep(0.5)
            for name in load.acknowledged:
                rows = (await http.get("/request/query_data_item", params={"item_name": name})).json()
                assert len([row for row in rows if row["storage_id"] and row["item_state"] == "READY"]) >= 1, name
    finally:
        old.stop()
        if new is not None:
            new.stop()


def test_each_revision_from_0021_says_which_dlm_can_serve_it() -> None:
    """An author states whether a revision expands (older DLM serves on: its predecessor's value) or
    contracts (only DLM from some revision on, at most itself)."""
    from alembic.script import ScriptDirectory

    from dlm.db.schema import alembic_config

    for script in ScriptDirectory.from_config(alembic_config("postgresql://unused")).walk_revisions():
        if int(script.revision) < 21:
            continue
        serves_from = getattr(script.module, "serves_from", None)
        assert isinstance(serves_from, str) and serves_from.isdigit(), f"{script.revision}: no serves_from"
        assert int(serves_from) <= int(script.revision), f"{script.revision}: serves_from {serves_from} is later"
