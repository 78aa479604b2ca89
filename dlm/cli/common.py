"""What every `dlm` command shares: one-line errors, settings, and running a coroutine."""

import contextlib
import ctypes
import gc
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import click

from dlm.config import InvalidSettings, Settings
from dlm.errors import DLMError


class CLIError(click.ClickException):
    """One readable line on stderr and exit status 1, never a traceback."""

    def show(self, file: Any = None) -> None:
        click.echo(f"dlm: error: {self.message}", err=True)


# mallopt's parameter number for the largest number of malloc arenas (glibc's malloc.h).
_M_ARENA_MAX = -8


def bound_malloc_arenas() -> None:
    """A long-running DLM process moves payloads in large buffers through many threads (file I/O), and
    glibc gives each thread an arena of its own that keeps what is freed in it: two concurrent copies
    of 2 GiB held ~15 MiB more than their buffers (bench/copy_memory.py). Two arenas serve DLM's
    threads as fast. Called before any thread starts; without glibc, nothing to do."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, 2)


def freeze_what_is_loaded() -> None:
    """Leave what is loaded by now (modules, the app, SQLAlchemy's tables: some 160,000 objects) out of
    the garbage collector's full passes: it never goes, and a server working through 10,000 items
    traversed it eight times, 0.6 s of CPU on cores that also run PostgreSQL and the copies."""
    gc.freeze()


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings.from_env(**overrides)
    except InvalidSettings as exc:
        raise CLIError(str(exc)) from None


def run_blocking(function: Callable[[], Any]) -> Any:
    """``function()``, its DLM errors as one line."""
    try:
        return function()
    except DLMError as exc:
        raise CLIError(exc.message) from None


def run(coroutine_function: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    try:
        import asyncio  # the server stack's; commands that only talk HTTP never load it

        return asyncio.run(coroutine_function())
    except DLMError as exc:
        raise CLIError(exc.message) from None
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    except Exception as exc:
        # SQLAlchemy is the server stack's: imported only once a command has used it (the CLI stays light).
        if not isinstance(exc, OSError) and not type(exc).__module__.startswith("sqlalchemy"):
            raise
        from dlm.db.engine import translate_database_error

        translated = translate_database_error(exc)
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise CLIError(f"{translated.message if translated else 'database error'}: {detail}") from None


@contextlib.contextmanager
def database_url(settings: Settings, *, create: bool = False) -> Iterator[str]:
    """DLM_DATABASE_URL, or else the embedded database in the data directory, attached for the duration.

    Attaching to the embedded database is safe while `dlm serve` uses it: pgserver counts the
    processes holding it and stops the server only when the last one lets go. Without ``create``, a
    data directory with no database yet is an error rather than a fresh, empty database.
    """
    if settings.database_url:
        yield settings.database_url
        return
    from dlm.db.embedded import EmbeddedPostgres

    if not create and not (settings.pgdata_dir / "PG_VERSION").exists():
        raise CLIError(
            f"no database in {settings.data_dir}: run `dlm serve` once to create it, or set DLM_DATABASE_URL"
        )
    try:
        embedded = EmbeddedPostgres(settings.pgdata_dir)
    except DLMError as exc:
        raise CLIError(exc.message) from None
    try:
        yield embedded.database_url
    finally:
        embedded.stop()


def in_database_transaction(work: Callable[[Any], Coroutine[Any, Any, Any]], *, actor: str) -> Any:
    """``await work(session)`` in one transaction on DLM's database (DLM_DATABASE_URL, or the embedded
    one), as ``actor``, once its schema is checked; storage configs open with DLM_SECRET_KEY."""
    from dlm.db.engine import create_engine, create_sessionmaker, transaction
    from dlm.db.schema import check_schema
    from dlm.storage.context import session_info

    settings = load_settings()

    async def in_database(url: str) -> Any:
        engine = create_engine(url, pool_size=1)
        try:
            await check_schema(engine)
            sessionmaker = create_sessionmaker(engine, info=session_info(settings))
            async with transaction(sessionmaker, actor=actor) as session:
                return await work(session)
        finally:
            await engine.dispose()

    with database_url(settings) as url:
        return run(lambda: in_database(url))
