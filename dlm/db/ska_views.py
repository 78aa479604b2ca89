"""SKA-DLM kept its tables in schema ``dlm`` and other systems write there: SKA's ODA trigger inserts
``dlm.data_item (item_name, item_type, uri, uid_phase, oid_phase)`` for every execution block. DLM's
tables live in ``public``; the SKA schema holds a view of each SKA-DLM table (auto-updatable: an insert
through it gets the table's defaults, triggers and history, with the database user as the actor).

The views are derived objects: Alembic's environment drops them before revisions run (a view would
pin the columns a revision changes) and makes them again after, from the tables as they then are.
"""

import logging

import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.engine import Connection

log = logging.getLogger("dlm.db")

# SKA-DLM's tables (its setup/DB/create-tables.sql), each a table of DLM's too.
SKA_TABLES = ("location_facility", "location", "storage", "storage_config", "data_item", "phase_change", "migration")
DEFAULT_SCHEMA = "dlm"
# SKA's names for columns DLM named otherwise: each view shows the column under both names.
SKA_COLUMNS = {"location_facility": {"id": "facility_name"}, "phase_change": {"requested_phase": "final_phase"}}
# SKA's types (its create-enum-types.sql, in its schema): there, domains over DLM's, so that what SKA's
# models write (``'GAS'::dlm.phase_type``) goes into DLM's columns. SKA's mime_type was an enum, DLM's
# column is text.
SKA_TYPES = {
    "location_type": "public.location_type",
    "location_country": "public.location_country",
    "storage_type": "public.storage_type",
    "storage_interface": "public.storage_interface",
    "config_type": "public.config_type",
    "phase_type": "public.phase_type",
    "item_state": "public.item_state",
    "checksum_method": "public.checksum_method",
    "mime_type": "varchar",
}

_KIND = text(
    "SELECT c.relkind FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
    "WHERE n.nspname = :schema AND c.relname = :name"
)


def _kind(connection: Connection, schema: str, name: str) -> str | None:
    kind = connection.execute(_KIND, {"schema": schema, "name": name}).scalar()
    return kind.decode() if isinstance(kind, bytes) else kind


_DOMAIN = text(
    "SELECT 1 FROM pg_type AS t JOIN pg_namespace AS n ON n.oid = t.typnamespace "
    "WHERE n.nspname = :schema AND t.typname = :name AND t.typtype = 'd'"
)


def drop(connection: Connection, schema: str) -> None:
    """Drop the views and domains DLM made (nothing else in the schema; a domain another system's
    table uses stays)."""
    if not schema:
        return
    for table in SKA_TABLES:
        if _kind(connection, schema, table) == "v":
            connection.execute(text(f'DROP VIEW "{schema}"."{table}"'))
    for name in SKA_TYPES:
        if connection.execute(_DOMAIN, {"schema": schema, "name": name}).first() is None:
            continue
        try:
            with connection.begin_nested():
                connection.execute(text(f'DROP DOMAIN "{schema}"."{name}"'))
        except sqlalchemy.exc.DBAPIError:
            log.warning("%s.%s is in use outside DLM: left as it is", schema, name)
    if _has_type(connection, "public", "item_type"):
        connection.execute(text("DROP CAST IF EXISTS (varchar AS public.item_type)"))


def create(connection: Connection, schema: str) -> None:
    """A view in ``schema`` of each SKA-DLM table DLM has now; a table of that name already there
    (another system's) is left alone, and said so."""
    if not schema or schema == "public":
        return
    made = False
    for table in SKA_TABLES:
        if _kind(connection, "public", table) != "r":
            continue  # not (yet, or any more) at this revision
        found = _kind(connection, schema, table)
        if found not in (None, "v"):
            log.warning("%s.%s exists and is not DLM's view: left as it is", schema, table)
            continue
        if not made:
            connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            made = True
        aliases = "".join(f', "{column}" AS "{ska_name}"' for ska_name, column in SKA_COLUMNS.get(table, {}).items())
        connection.execute(
            text(f'CREATE OR REPLACE VIEW "{schema}"."{table}" AS SELECT *{aliases} FROM public."{table}"')
        )
    if not made:
        return
    for name, base in SKA_TYPES.items():
        schema_of_base, _, base_name = base.rpartition(".")
        if schema_of_base and not _has_type(connection, schema_of_base, base_name):
            continue  # not (yet) at this revision
        if not _has_type(connection, schema, name):
            connection.execute(text(f'CREATE DOMAIN "{schema}"."{name}" AS {base}'))
    # SKA's item_type column was text: what SKA's models write there must go into DLM's enum.
    if _has_type(connection, "public", "item_type") and connection.execute(_ITEM_TYPE_CAST).first() is None:
        connection.execute(text("CREATE CAST (varchar AS public.item_type) WITH INOUT AS ASSIGNMENT"))


_TYPE = text(
    "SELECT 1 FROM pg_type AS t JOIN pg_namespace AS n ON n.oid = t.typnamespace "
    "WHERE n.nspname = :schema AND t.typname = :name"
)
_ITEM_TYPE_CAST = text(
    "SELECT 1 FROM pg_cast WHERE castsource = 'varchar'::regtype AND casttarget = 'public.item_type'::regtype"
)


def _has_type(connection: Connection, schema: str, name: str) -> bool:
    return connection.execute(_TYPE, {"schema": schema, "name": name}).first() is not None
