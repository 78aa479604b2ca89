"""Which DLM can serve a schema: upgrades without downtime by expand-then-contract.

Every revision from 0021 on names ``serves_from``, the oldest DLM (by its head revision) whose code
works on the schema the revision leaves. A revision that only adds (a table, a nullable column, an
index, a trigger older code does not notice) keeps its predecessor's; one that removes or changes what
older code reads (a contract revision) names itself, and ships a release after the code stopped
reading it. Upgrades record the current revision's value in ``schema_compatibility``, so that a DLM
older than the schema can tell, without knowing the newer revisions, whether it may serve on.
"""

from alembic import context
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

TABLE = "schema_compatibility"


def is_after(revision: str, other: str) -> bool:
    """Whether DLM revision ``revision`` comes after ``other``: DLM numbers its revisions (``0021``), and
    their order is their numbers'. Anything else (not DLM's) is after nothing."""
    return revision.isdigit() and other.isdigit() and int(revision) > int(other)


def record(connection: Connection, revision: str | None) -> None:
    """Write what ``revision`` (the database's, after an upgrade or downgrade) declares, where the table
    exists (revision 0021 and later)."""
    if revision is None or connection.execute(text("SELECT to_regclass(:t)"), {"t": TABLE}).scalar() is None:
        return
    script = ScriptDirectory.from_config(context.config).get_revision(revision)
    serves_from = getattr(script.module, "serves_from", revision) if script is not None else revision
    connection.execute(text(f"DELETE FROM {TABLE}"))
    connection.execute(text(f"INSERT INTO {TABLE} (serves_from) VALUES (:v)"), {"v": serves_from})
