"""SKA-DLM kept its tables in schema ``dlm`` and other systems write there: SKA's ODA trigger inserts
``dlm.data_item (item_name, item_type, uri, uid_phase, oid_phase)`` for every execution block. DLM's
tables live in ``public``; the SKA schema holds a view of each SKA-DLM table (auto-updatable: an insert
through it gets the table's defaults, triggers and history, with the database user as the actor).

The views are derived objects: Alembic's environment drops them before revisions run (a view would
pin the columns a revision changes) and makes them again after, from the tables as they then are.
"""

import logging

from sqlalchemy import text
from sqlalchemy.engine import Connection

log = logging.getLogger("dlm.db")

# SKA-DLM's tables (its setup/DB/create-tables.sql), each a table of DLM's too.
SKA_TABLES = ("location_facility", "location", "storage", "storage_config", "data_item", "phase_change", "migration")
DEFAULT_SCHEMA = "dlm"

_KIND = text(
    "SELECT c.relkind FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
    "WHERE n.nspname = :schema AND c.relname = :name"
)


def _kind(connection: Connection, schema: str, name: str) -> str | None:
    kind = connection.execute(_KIND, {"schema": schema, "name": name}).scalar()
    return kind.decode() if isinstance(kind, bytes) else kind


def drop(connection: Connection, schema: str) -> None:
    """Drop the views DLM made (nothing else in the schema)."""
    if not schema:
        return
    for table in SKA_TABLES:
        if _kind(connection, schema, table) == "v":
            connection.execute(text(f'DROP VIEW "{schema}"."{table}"'))


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
        connection.execute(text(f'CREATE OR REPLACE VIEW "{schema}"."{table}" AS SELECT * FROM public."{table}"'))
