import json
import uuid
from typing import Any

import pytest
import sqlalchemy.exc
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dlm.app import create_app
from dlm.config import Settings
from dlm.db import schema, ska_views
from dlm.db.engine import create_engine
from dlm.db.models import Base
from dlm.errors import SchemaOutOfDate
from dlm.serve import prepare


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
        return {row[0] for row in rows}


async def test_migrations_match_the_models(engine: AsyncEngine) -> None:
    def differences(connection: object) -> list[object]:
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)  # type: ignore[arg-type]

    async with engine.connect() as connection:
        assert await connection.run_sync(differences) == []


async def test_downgrade_to_base_then_upgrade_restores_the_schema(database_url: str, engine: AsyncEngine) -> None:
    expected = {
        "alembic_version",
        "location_facility",
        "location",
        "storage",
        "storage_config",
        "data_item",
        "data_item_event",
        "storage_event",
        "migration",
        "phase_change",
        "api_token",
        "outbox_event",
        "delivery",
        "replica_tally",
        "migration_tally",
        "ska_import_row",
        "schema_compatibility",
        "location_link",
        "worker_presence",
    }
    assert await _tables(engine) == expected
    await engine.dispose()
    await schema.downgrade(database_url, "0001")
    assert await _tables(engine) == expected - {
        "storage_event",
        "api_token",
        "outbox_event",
        "delivery",
        "replica_tally",
        "migration_tally",
        "ska_import_row",
        "schema_compatibility",
        "location_link",
        "worker_presence",
    }, "each revision takes back its own"
    await engine.dispose()
    await schema.downgrade(database_url, "base")
    assert await _tables(engine) == {"alembic_version"}
    await engine.dispose()
    await schema.upgrade(database_url)
    assert await _tables(engine) == expected
    async with engine.begin() as connection:
        await connection.execute(text("INSERT INTO data_item (item_name) VALUES ('after-round-trip')"))
        events = await connection.scalar(text("SELECT count(*) FROM data_item_event"))
    assert events > 0, "the history triggers came back with the schema"


async def test_server_refuses_a_database_without_schema(empty_database_url: str, tmp_path: object) -> None:
    settings = Settings(database_url=empty_database_url)
    with pytest.raises(SchemaOutOfDate, match="dlm db upgrade"):
        await prepare(settings)
    with pytest.raises(BaseException) as caught:  # the lifespan wraps it in an exception group
        async with create_app(settings).lifespan():
            pass
    assert "run `dlm db upgrade`" in repr(
        caught.value.exceptions if hasattr(caught.value, "exceptions") else caught.value
    )


async def test_server_refuses_a_schema_that_is_behind(database_url: str, engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    with pytest.raises(SchemaOutOfDate, match="not know"):
        await schema.check_schema(engine)
    async with engine.begin() as connection:
        await connection.execute(text(f"UPDATE alembic_version SET version_num = '{schema.head_revision()}'"))
    await schema.check_schema(engine)


async def test_a_newer_schema_is_served_while_it_says_this_dlm_may(engine: AsyncEngine) -> None:
    """Expand-then-contract: a later DLM's revision records the oldest DLM that can serve on it."""
    head = schema.head_revision()
    later = f"{int(head) + 5:04d}"
    async with engine.begin() as connection:
        await connection.execute(text(f"UPDATE alembic_version SET version_num = '{later}'"))
        await connection.execute(text(f"UPDATE schema_compatibility SET serves_from = '{head}'"))
    await schema.check_schema(engine)  # expanded only: this DLM serves on
    async with engine.begin() as connection:
        await connection.execute(text(f"UPDATE schema_compatibility SET serves_from = '{later}'"))
    with pytest.raises(
        SchemaOutOfDate, match=rf"at {later}, which this DLM \({head}\) does not know: it needs DLM {later}"
    ):
        await schema.check_schema(engine)


async def test_upgrades_record_which_dlm_can_serve(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        recorded = (await connection.execute(text("SELECT serves_from FROM schema_compatibility"))).scalars().all()
    assert recorded == ["0020"], "revision 0021 only adds a table"


async def test_history_is_append_only(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(text("INSERT INTO data_item (item_name) VALUES ('x')"))
    for statement in (
        "DELETE FROM data_item_event",
        "UPDATE data_item_event SET actor = 'me'",
        "TRUNCATE data_item_event",
    ):
        with pytest.raises(sqlalchemy.exc.DBAPIError, match="append-only"):
            async with engine.begin() as connection:
                await connection.execute(text(statement))


async def test_an_oid_naming_a_uid_resolves_to_that_items_oid(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        first = await connection.scalar(text("INSERT INTO data_item (item_name) VALUES ('a') RETURNING uid"))
        second = await connection.scalar(
            text("INSERT INTO data_item (item_name, oid) VALUES ('a', :oid) RETURNING uid"), {"oid": first}
        )
        # A third replica that names the *second* replica's uid still joins the first item.
        third = await connection.scalar(
            text("INSERT INTO data_item (item_name, oid) VALUES ('a', :oid) RETURNING uid"), {"oid": second}
        )
        rows = (await connection.execute(text("SELECT uid, oid, oid_creation FROM data_item"))).all()
    oids = {row.uid: row.oid for row in rows}
    assert oids == {first: first, second: first, third: first}
    assert len({row.oid_creation for row in rows}) == 1


async def test_a_name_is_unique_per_storage_among_live_replicas(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        location = await connection.scalar(
            text("INSERT INTO location (location_name, location_type) VALUES ('l', 'local-dev') RETURNING location_id")
        )
        storage = await connection.scalar(
            text(
                "INSERT INTO storage (location_id, storage_name, root_directory, storage_type, storage_interface) "
                "VALUES (:l, 's', '/', 'filesystem', 'posix') RETURNING storage_id"
            ),
            {"l": location},
        )
        insert = text("INSERT INTO data_item (item_name, storage_id, item_state) VALUES ('n', :s, :state)")
        await connection.execute(insert, {"s": storage, "state": "DELETED"})
        await connection.execute(insert, {"s": storage, "state": "READY"})
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        async with engine.begin() as connection:
            await connection.execute(insert, {"s": storage, "state": "INITIALISED"})


async def test_timestamps_are_utc_whatever_the_server_zone(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("SET TIME ZONE 'Australia/Perth'"))
            uid = await connection.scalar(text("INSERT INTO data_item (item_name) VALUES ('tz') RETURNING uid"))
            event_text = await connection.scalar(
                text("SELECT detail->>'oid_expiration' FROM data_item_event WHERE uid = :u AND event = 'created'"),
                {"u": uid},
            )
        assert event_text == "2099-12-31T23:59:59.000000+00:00"
        assert isinstance(uid, uuid.UUID)
    finally:
        await engine.dispose()


def test_test_databases_are_named_after_the_test_url(postgres_url: str, database_url: str) -> None:
    """DLM_TEST_DATABASE_URL=postgresql://…/ci_dlm: every database the suite makes starts with ci_dlm_."""
    from sqlalchemy.engine import make_url

    expected = make_url(postgres_url).database or "dlm"
    assert (make_url(database_url).database or "").startswith(f"{expected}_dlm_test_")


async def test_revision_0003_names_the_replicas_that_share_a_payload(database_url: str, engine: AsyncEngine) -> None:
    await schema.downgrade(database_url, "0002")
    async with engine.begin() as connection:
        await connection.execute(text("INSERT INTO location (location_name, location_type) VALUES ('l', 'local-dev')"))
        await connection.execute(
            text(
                "INSERT INTO storage (storage_name, root_directory, storage_type, storage_interface, location_id) "
                "SELECT 'shared-disk', '/data', 'filesystem', 'posix', location_id FROM location"
            )
        )
        for name in ("first", "second"):
            await connection.execute(
                text(
                    "INSERT INTO data_item (item_name, uri, storage_id, item_state) "
                    "SELECT :name, 'same/file.dat', storage_id, 'READY' FROM storage"
                ),
                {"name": name},
            )
    await engine.dispose()
    with pytest.raises(ValueError) as raised:
        await schema.upgrade(database_url)
    message = str(raised.value)
    for fragment in ("'shared-disk'", "'same/file.dat'", "'first'", "'second'", "uid", "UPDATE data_item"):
        assert fragment in message, fragment


async def test_revision_0007_moves_what_plugins_wrote_out_of_the_callers_metadata(
    database_url: str, engine: AsyncEngine
) -> None:
    await engine.dispose()
    await schema.downgrade(database_url, "0006")
    old_style = {
        "scan": 7,
        "uid": "x",
        "generic": {"size": 3, "modified": "2026-01-02T03:04:05+00:00", "mime_type": "text/plain"},
        "ska_data_product": {"execution_block": "eb-1"},
    }
    theirs = {"generic": "a caller's own key", "uid": "y"}
    async with engine.begin() as connection:
        for name, metadata in (("old", old_style), ("theirs", theirs)):
            await connection.execute(
                text("INSERT INTO data_item (item_name, metadata) VALUES (:name, CAST(:metadata AS jsonb))"),
                {"name": name, "metadata": json.dumps(metadata)},
            )
    await engine.dispose()
    await schema.upgrade(database_url)
    async with engine.connect() as connection:
        rows = {
            row.item_name: row
            for row in await connection.execute(
                text("SELECT item_name, metadata, extracted_metadata, payload_modified FROM data_item")
            )
        }
    assert rows["old"].metadata == {"scan": 7, "uid": "x"}
    assert rows["old"].extracted_metadata == {"ska_data_product": {"execution_block": "eb-1"}}
    assert rows["old"].payload_modified.isoformat() == "2026-01-02T03:04:05+00:00"
    assert (rows["theirs"].metadata, rows["theirs"].extracted_metadata) == (theirs, None)


async def _storage_for_revision_tests(connection: Any) -> None:
    await connection.execute(text("INSERT INTO location (location_name, location_type) VALUES ('l', 'local-dev')"))
    await connection.execute(
        text(
            "INSERT INTO storage (storage_name, root_directory, storage_type, storage_interface, location_id) "
            "SELECT 'disk', '/data', 'filesystem', 'posix', location_id FROM location"
        )
    )


async def test_revision_0012_qualifies_owners_and_makes_uris_canonical(database_url: str, engine: AsyncEngine) -> None:
    await engine.dispose()
    await schema.downgrade(database_url, "0011")
    rows = [
        ("piped", "pipe-7", "./runs//a.dat/", '{"read": ["alice", "pipe-7", "group:low", "*"]}'),
        ("theirs", "alice", "/b.dat", None),
        ("nobodys", "SKA", "c.dat", None),
    ]
    async with engine.begin() as connection:
        await _storage_for_revision_tests(connection)
        await connection.execute(
            text("INSERT INTO api_token (name, role, token_hash, created_by) VALUES ('pipe-7', 'ingest', 'h', 'test')")
        )
        for name, owner, uri, acl in rows:
            await connection.execute(
                text(
                    "INSERT INTO data_item (item_name, item_owner, uri, acl, storage_id, item_state) "
                    "SELECT :name, :owner, :uri, CAST(:acl AS jsonb), storage_id, 'READY' FROM storage"
                ),
                {"name": name, "owner": owner, "uri": uri, "acl": acl},
            )
    await engine.dispose()
    await schema.upgrade(database_url)
    async with engine.begin() as connection:
        found = {
            row.item_name: row
            for row in await connection.execute(text("SELECT uid, item_name, item_owner, uri, acl FROM data_item"))
        }
        assert (found["piped"].item_owner, found["piped"].uri) == ("token:pipe-7", "runs/a.dat")
        assert found["piped"].acl == {"read": ["oidc:alice", "token:pipe-7", "group:low", "*"]}
        assert (found["theirs"].item_owner, found["theirs"].uri) == ("oidc:alice", "/b.dat")
        assert (found["nobodys"].item_owner, found["nobodys"].uri) == ("SKA", "c.dat")
        # From now on, a change of owner, group or acl is in the item's history.
        await connection.execute(text("UPDATE data_item SET item_group = 'ops', acl = NULL WHERE item_name = 'piped'"))
        events = (
            await connection.execute(
                text("SELECT event, old_value, new_value FROM data_item_event WHERE uid = :uid ORDER BY event_id"),
                {"uid": found["piped"].uid},
            )
        ).all()
    assert [tuple(event) for event in events][-2:] == [
        ("item_group", "SKA", "ops"),
        ("acl", '{"read": ["oidc:alice", "token:pipe-7", "group:low", "*"]}', None),
    ]


async def test_revision_0012_names_the_live_aliases_of_a_payload(database_url: str, engine: AsyncEngine) -> None:
    await engine.dispose()
    await schema.downgrade(database_url, "0011")
    async with engine.begin() as connection:
        await _storage_for_revision_tests(connection)
        for name, uri in (("secret", "secret.dat"), ("steal", "./secret.dat")):
            await connection.execute(
                text(
                    "INSERT INTO data_item (item_name, uri, storage_id, item_state) "
                    "SELECT :name, :uri, storage_id, 'READY' FROM storage"
                ),
                {"name": name, "uri": uri},
            )
    await engine.dispose()
    with pytest.raises(ValueError) as raised:
        await schema.upgrade(database_url)
    for fragment in ("'steal'", "'./secret.dat'", "alias of 'secret'", "'disk'", "DELETED"):
        assert fragment in str(raised.value), fragment


async def test_skas_schema_holds_a_view_of_each_of_its_tables_after_any_upgrade(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            views = set(await connection.scalars(text("SELECT viewname FROM pg_views WHERE schemaname = 'dlm'")))
        assert views == set(ska_views.SKA_TABLES)
    finally:
        await engine.dispose()
    await schema.downgrade(database_url, "0001")
    await schema.upgrade(database_url)  # the views made again from the tables as the revisions left them
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            columns = set(
                await connection.scalars(
                    text(
                        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'dlm' AND table_name = 'data_item'"
                    )
                )
            )
        assert {"payload_modified", "extracted_metadata", "item_owner"} <= columns, "columns of later revisions"
    finally:
        await engine.dispose()
