"""Schema management through Alembic: upgrade, downgrade, and the check that refuses to serve on a
schema this DLM cannot serve: behind its head revision, or ahead of it past what the newer revisions
say older DLMs may serve (dlm.db.compatibility)."""

import asyncio
import functools
from pathlib import Path

import sqlalchemy.exc
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

import dlm
from dlm.db import compatibility
from dlm.db.ska_views import DEFAULT_SCHEMA
from dlm.errors import SchemaOutOfDate


def migrations_dir() -> Path:
    package = Path(dlm.__file__).parent
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("DLM's Alembic migrations are missing from this installation")


def alembic_config(database_url: str, ska_schema: str = DEFAULT_SCHEMA) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # ConfigParser interpolation would choke on a '%' in a password.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.set_main_option("ska_schema", ska_schema)  # dlm.db.ska_views: "" for none
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    # The revisions shipped with this DLM cannot change while it runs; read them once, not per health probe.
    return ScriptDirectory.from_config(alembic_config("postgresql://unused"))


def head_revision() -> str:
    head = _scripts().get_current_head()
    assert head is not None, "the migrations directory has no revisions"
    return head


async def upgrade(database_url: str, revision: str = "head", *, ska_schema: str = DEFAULT_SCHEMA) -> None:
    # Alembic's env.py runs its own event loop, so it gets a thread of its own.
    await asyncio.to_thread(command.upgrade, alembic_config(database_url, ska_schema), revision)


async def downgrade(database_url: str, revision: str, *, ska_schema: str = DEFAULT_SCHEMA) -> None:
    await asyncio.to_thread(command.downgrade, alembic_config(database_url, ska_schema), revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        try:
            result = await connection.execute(text("SELECT version_num FROM alembic_version"))
        except sqlalchemy.exc.ProgrammingError:
            return None
        return result.scalar_one_or_none()


async def _serves_from(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        if (await connection.execute(text("SELECT to_regclass(:t)"), {"t": compatibility.TABLE})).scalar() is None:
            return None
        return (await connection.execute(text(f"SELECT serves_from FROM {compatibility.TABLE}"))).scalar()


async def schema_problem(engine: AsyncEngine, current: str | None) -> str | None:
    """Why this DLM cannot serve on the database's schema (at revision ``current``), or None when it
    can: at its own head, or at a newer revision whose recorded ``serves_from`` this DLM's head reaches
    (dlm.db.compatibility)."""
    head = head_revision()
    if current == head:
        return None
    if current is None:
        return "the database has no DLM schema; run `dlm db upgrade` first"
    known = {script.revision for script in _scripts().walk_revisions()}
    if current in known:
        return f"the database schema is at {current}, this DLM needs {head}; run `dlm db upgrade`"
    serves_from = await _serves_from(engine) if compatibility.is_after(current, head) else None
    if serves_from is not None and not compatibility.is_after(serves_from, head):
        return None
    needs = f"DLM {serves_from} or newer" if serves_from else head
    return f"the database schema is at {current}, which this DLM ({head}) does not know: it needs {needs}"


async def check_schema(engine: AsyncEngine) -> None:
    """Raise SchemaOutOfDate unless this DLM can serve on the database's schema (schema_problem)."""
    if (problem := await schema_problem(engine, await current_revision(engine))) is not None:
        raise SchemaOutOfDate(problem)
