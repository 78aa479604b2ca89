"""Alembic environment: runs DLM's revisions over an asyncpg connection."""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from dlm.config import Settings
from dlm.db import compatibility, ska_views
from dlm.db.engine import database_target
from dlm.db.models import Base

config = context.config


def _database_target() -> tuple[str, dict]:
    url = config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url
    if not url:
        raise SystemExit("set DLM_DATABASE_URL to the database to migrate")
    return database_target(url)


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True)
    schema = config.get_main_option("ska_schema", ska_views.DEFAULT_SCHEMA) or ""
    with context.begin_transaction():
        # SKA's schema of views is remade around the revisions, from the tables they leave.
        ska_views.drop(connection, schema)
        context.run_migrations()
        ska_views.create(connection, schema)
        compatibility.record(connection, context.get_context().get_current_revision())


async def _run_online() -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    url, connect_args = _database_target()
    engine = create_async_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_database_target()[0], target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
