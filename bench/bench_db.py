"""What every benchmark needs from PostgreSQL: the server to use, and a fresh, migrated database of
its own for each measured run."""

import os
import tempfile
import uuid
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from dlm.config import Settings
from dlm.db import schema


def admin_url() -> str:
    """DLM_BENCH_DATABASE_URL, else DLM_TEST_DATABASE_URL, else the local PostgreSQL."""
    return (
        os.environ.get("DLM_BENCH_DATABASE_URL")
        or os.environ.get("DLM_TEST_DATABASE_URL")
        or "postgresql://postgres@127.0.0.1:5432/postgres"
    )


def dsn(url: str) -> str:
    """The URL as asyncpg takes it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def fresh_database(admin: str) -> str:
    """A new database at DLM's head revision; returns its URL."""
    name = f"dlm_bench_{uuid.uuid4().hex[:10]}"
    connection = await asyncpg.connect(dsn(admin))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    url = make_url(admin).set(database=name).render_as_string(hide_password=False)
    await schema.upgrade(url)
    return url


async def drop_database(admin: str, url: str) -> None:
    connection = await asyncpg.connect(dsn(admin))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    finally:
        await connection.close()


def app_settings(url: str, **overrides: Any) -> Settings:
    """Settings for an app the bench drives in-process: open (no tokens), answering Litestar's test
    client, storages anywhere under the temporary directory the bench works in (DLM_BENCH_DIR, where
    set: a file system of the bench's own, for instance)."""
    return Settings(
        database_url=url,
        allowed_hosts="testserver.local",
        storage_roots=os.environ.get("DLM_BENCH_DIR") or tempfile.gettempdir(),
        auth="none",
        **overrides,
    )
