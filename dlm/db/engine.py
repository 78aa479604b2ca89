"""The async engine, transactions, and the one place where database errors become DLM errors."""

import contextlib
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any

import sqlalchemy.exc
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.sql.elements import TextClause

from dlm.errors import (
    Conflict,
    DLMError,
    InvalidQueryParameters,
    ServiceBusy,
    ServiceUnavailable,
    UnmetPreconditionForOperation,
    ValueAlreadyInDB,
)

CONNECT_TIMEOUT_SECONDS = 5


# libpq's sslmode values, which asyncpg also takes as its `ssl` argument.
_SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
# Parameters asyncpg (through SQLAlchemy) understands as they are.
_PASSED_THROUGH = frozenset({"host", "port", "target_session_attrs", "prepared_statement_cache_size"})


def database_target(url: str) -> tuple[str, dict[str, Any]]:
    """The SQLAlchemy URL (asyncpg driver) and connect arguments for a PostgreSQL URL as users copy it
    from their database provider, libpq parameters included: sslmode, sslrootcert, sslcert, sslkey,
    connect_timeout, application_name, and several hosts (``postgresql://u@h1:5432,h2:5432/db``,
    tried in order; with ``target_session_attrs=read-write``, the one that is the primary)."""
    parsed = make_url(_hosts_as_parameters(url))
    if parsed.get_backend_name() not in {"postgresql", "postgres"}:
        raise ValueError(f"DLM needs a PostgreSQL database, not {parsed.get_backend_name()!r}")
    query = dict(parsed.query)
    unknown = set(query) - _PASSED_THROUGH - {"sslmode", "ssl", "sslrootcert", "sslcert", "sslkey"}
    unknown -= {"connect_timeout", "application_name"}
    if unknown:
        raise ValueError(
            f"DLM_DATABASE_URL: parameter {sorted(unknown)[0]!r} is not supported "
            "(DLM understands sslmode, sslrootcert, sslcert, sslkey, connect_timeout, application_name, "
            f"{', '.join(sorted(_PASSED_THROUGH))})"
        )
    arguments: dict[str, Any] = {}
    ssl_mode = _single(query.pop("sslmode", None) or query.pop("ssl", None))
    files = {name: _single(query.pop(name, None)) for name in ("sslrootcert", "sslcert", "sslkey")}
    if ssl_mode is not None or any(files.values()):
        arguments["ssl"] = _ssl(ssl_mode or "prefer", **files)
    if (timeout := _single(query.pop("connect_timeout", None))) is not None:
        try:
            arguments["timeout"] = float(timeout)
        except ValueError:
            raise ValueError(f"DLM_DATABASE_URL: connect_timeout={timeout!r} is not a number of seconds") from None
    if (name := _single(query.pop("application_name", None))) is not None:
        arguments["server_settings"] = {"application_name": name}
    target = parsed.set(drivername="postgresql+asyncpg", query=query).render_as_string(hide_password=False)
    return target, arguments


_MULTI_HOST = re.compile(r"^(?P<scheme>[^:/]+://)(?P<user>[^@/]*@)?(?P<hosts>[^/?@]*,[^/?@]*)(?P<rest>[/?].*)?$")


def _hosts_as_parameters(url: str) -> str:
    """libpq's several hosts (``h1:p1,h2:p2`` where one host would be) as SQLAlchemy takes them for
    asyncpg: ``host=h1:p1&host=h2:p2`` in the query."""
    match = _MULTI_HOST.match(url)
    if match is None:
        return url
    path, _, query = (match["rest"] or "/").partition("?")
    hosts = "&".join(f"host={host.strip()}" for host in match["hosts"].split(",") if host.strip())
    return f"{match['scheme']}{match['user'] or ''}{path}?{hosts}{'&' + query if query else ''}"


def _single(value: Any) -> str | None:
    return value[-1] if isinstance(value, tuple) else value


def _ssl(mode: str, *, sslrootcert: str | None, sslcert: str | None, sslkey: str | None) -> Any:
    """asyncpg's `ssl` argument for libpq's sslmode: the mode itself, or a context when certificates are named."""
    if mode not in _SSL_MODES:
        raise ValueError(f"DLM_DATABASE_URL: sslmode={mode!r} is not one of {', '.join(sorted(_SSL_MODES))}")
    if not (sslrootcert or sslcert):
        return mode
    if mode in ("disable", "allow", "prefer"):
        raise ValueError(f"DLM_DATABASE_URL: sslmode={mode} with certificates; use require, verify-ca or verify-full")
    try:
        context = ssl.create_default_context(cafile=sslrootcert)
        if sslcert:
            context.load_cert_chain(sslcert, sslkey)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"DLM_DATABASE_URL: cannot load the TLS certificates: {exc}") from None
    # libpq: require with a root certificate verifies the server's certificate, not its name.
    context.check_hostname = mode == "verify-full"
    return context


def create_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    target, arguments = database_target(database_url)
    # No JIT compilation: DLM's statements read a few index entries, but on a big catalogue the planner's
    # estimate for some (the expiry sweep) passes jit_above_cost, and compiling then takes 170 ms of a
    # statement that runs in 0.1 ms.
    server_settings = {
        "timezone": "UTC",
        "application_name": "dlm",
        "jit": "off",
        **arguments.pop("server_settings", {}),
    }
    engine = create_async_engine(
        target,
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping (three round trips per checkout): a pooled connection the database dropped is
        # found by the transaction's first statement instead, and replaced there (``transaction``).
        pool_timeout=CONNECT_TIMEOUT_SECONDS,
        # Statement parameters can hold storage secrets; keep them out of error messages and logs.
        hide_parameters=True,
        connect_args={
            "timeout": CONNECT_TIMEOUT_SECONDS,
            **arguments,
            # Timestamps leave the database in UTC whatever the server's default zone is.
            "server_settings": server_settings,
        },
    )
    event.listen(engine.sync_engine.pool, "checkout", _refuse_closed_connection)
    return engine


def _refuse_closed_connection(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    # A connection the server closed (a restart, a failover, an idle timeout) is usually known closed
    # by the time it is checked out: the pool then replaces it at no cost, without a ping.
    if dbapi_connection._connection.is_closed():
        raise sqlalchemy.exc.DisconnectionError("the database closed this connection")


def create_sessionmaker(engine: AsyncEngine, *, info: dict[str, Any] | None = None) -> async_sessionmaker[AsyncSession]:
    """Sessions for DLM's services, each carrying ``info`` in ``session.info``
    (dlm.storage.context.session_info: the keyring that opens storage configs, the event sinks, the
    storage confinement)."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False, info=dict(info or {}))


class ReadSession(Session):
    """A session for requests that only read: no transaction of its own (each statement is one, at the
    same READ COMMITTED isolation as before, in one round trip), no actor; anything but a query is
    refused, so that a read path cannot write without the history knowing who did. A query that meets
    a connection the database dropped (a restart, a failover) runs again, once, on a new one: a query
    changes nothing, so asking again is safe."""

    def _execute_internal(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._execute_internal(*args, **kwargs)
        except sqlalchemy.exc.DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            self.rollback()  # lets go of the dropped connection; the query takes a new one
            try:
                return super()._execute_internal(*args, **kwargs)
            except (sqlalchemy.exc.DBAPIError, OSError, TimeoutError) as again:
                raise translate_database_error(again) or ServiceUnavailable("the database is unreachable") from again


@event.listens_for(ReadSession, "do_orm_execute")
def _only_queries(state: ORMExecuteState) -> None:
    statement = state.statement
    if state.is_select or (isinstance(statement, TextClause) and _is_query(statement.text)):
        return
    raise AssertionError(f"a read-only session was asked to run {type(statement).__name__}: use transaction()")


def _is_query(sql: str) -> bool:
    return sql.lstrip().split(None, 1)[0].upper() in ("SELECT", "WITH", "VALUES")


def create_read_sessionmaker(
    engine: AsyncEngine, *, info: dict[str, Any] | None = None
) -> async_sessionmaker[AsyncSession]:
    """Sessions for reading, over the same pool (in autocommit: no BEGIN and COMMIT round trips)."""
    return async_sessionmaker(
        engine.execution_options(isolation_level="AUTOCOMMIT"),
        sync_session_class=ReadSession,
        expire_on_commit=False,
        autoflush=False,
        info=dict(info or {}),
    )


@contextlib.asynccontextmanager
async def reading(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A read-only session (``create_read_sessionmaker``), database errors translated as ``transaction`` does."""
    with _as_dlm_errors():
        async with sessionmaker() as session:
            await _connect(session, session.connection())
            yield session


@contextlib.contextmanager
def _as_dlm_errors() -> Iterator[None]:
    """Database errors a caller should see as DLM errors (translate_database_error), others as they are."""
    try:
        yield
    except DLMError:
        raise
    except Exception as exc:
        translated = translate_database_error(exc)
        if translated is None:
            raise
        raise translated from exc


async def set_actor(session: AsyncSession, actor: str) -> None:
    """Name who is acting in this transaction, and for which sinks it writes events: the history and
    outbox triggers read both (one statement, the transaction's first)."""
    await session.execute(
        text("SELECT set_config('dlm.actor', :actor, true), set_config('dlm.event_sinks', :sinks, true)"),
        {"actor": actor, "sinks": session.info.get("event_sinks") or ""},
    )


@contextlib.asynccontextmanager
async def transaction(sessionmaker: async_sessionmaker[AsyncSession], *, actor: str) -> AsyncIterator[AsyncSession]:
    """One unit of work: commits when the block ends, rolls back if it raises, and translates
    database errors into DLM errors."""
    session = await _begin(sessionmaker, actor)
    with _as_dlm_errors():
        async with session:
            try:
                yield session
            except BaseException as exc:
                if _read_only(exc):
                    # A primary being demoted by a failover: its connections must not serve again.
                    await (await session.connection()).invalidate()
                await session.rollback()
                raise
            await session.commit()


async def _begin(sessionmaker: async_sessionmaker[AsyncSession], actor: str) -> AsyncSession:
    """A session in a transaction that names its actor. The first statement is where a connection is
    taken from the pool: if the database dropped that connection (a restart, a failover) unseen,
    SQLAlchemy discards it and every pooled connection as old, and the statement runs again on a new
    one, once. Nothing was done yet, so trying again is safe."""
    for attempt in (1, 2):
        session = sessionmaker()
        try:
            await _connect(session, set_actor(session, actor))
            return session
        except sqlalchemy.exc.DBAPIError as exc:  # only a dropped connection comes this far
            await session.close()
            if attempt == 2:
                raise ServiceUnavailable("the database is unreachable") from exc
    raise AssertionError("the loop returns or raises")


async def _connect(session: AsyncSession, first_use: Awaitable[Any]) -> None:
    """Await the session's first use of the database, where it gets its connection: a full pool is
    503 busy, a database that cannot be reached 503 unavailable. A connection found dropped by its
    first statement is left to the caller (DBAPIError with connection_invalidated)."""
    try:
        await first_use
    except sqlalchemy.exc.TimeoutError as exc:
        await session.close()
        raise ServiceBusy(BUSY) from exc
    except sqlalchemy.exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise
        await session.close()
        raise ServiceUnavailable("the database is unreachable") from exc
    except (OSError, TimeoutError) as exc:
        await session.close()
        raise ServiceUnavailable("the database is unreachable") from exc


READ_ONLY_TRANSACTION = "25006"


def _read_only(exc: BaseException) -> bool:
    cause = exc.orig.__cause__ if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None else None
    return getattr(cause, "sqlstate", None) == READ_ONLY_TRANSACTION


BUSY = "the service is busy: every database connection of this process is in use; retry shortly"


def _client_side_data_error(cause: object) -> bool:
    # asyncpg refuses to encode some values itself (an integer beyond int64, say) before sending them.
    return type(cause).__name__ == "DataError" and type(cause).__module__.startswith("asyncpg")


def _first_line(error: object) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


_UNIQUE_MESSAGES = {
    "uq_data_item_item_name_storage_id_live": "item is already registered on this storage",
    "uq_data_item_storage_id_payload_live": "uri: this payload is already another live replica's on this storage",
    "uq_location_location_name": "a location with this location_name already exists",
    "uq_storage_storage_name": "a storage with this storage_name already exists",
}
_KEY_DETAIL = re.compile(r"Key \((?P<columns>[^)]*)\)=\((?P<values>.*)\) already exists")


def translate_database_error(exc: BaseException) -> DLMError | None:
    """Map a database exception to the DLM error a caller should see, or None if it is not one we know."""
    if isinstance(exc, sqlalchemy.exc.IntegrityError):
        cause = exc.orig.__cause__ if exc.orig is not None else None
        sqlstate = getattr(cause, "sqlstate", None)
        constraint = getattr(cause, "constraint_name", None) or ""
        detail = getattr(cause, "detail", None) or ""
        if sqlstate == "23505":
            message = _UNIQUE_MESSAGES.get(constraint, "value already exists")
            if match := _KEY_DETAIL.search(detail):
                message = f"{message}: {match['columns']} = {match['values']}"
            return ValueAlreadyInDB(message)
        if sqlstate == "23503":
            return UnmetPreconditionForOperation(f"a referenced row does not exist ({detail or constraint})")
        return Conflict(f"the change conflicts with the data: {detail or cause or exc.orig}")
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        cause = exc.orig.__cause__ if exc.orig is not None else None
        sqlstate = getattr(cause, "sqlstate", None) or ""
        if sqlstate.startswith("22") or sqlstate == "54001" or _client_side_data_error(cause):
            # A value PostgreSQL cannot take (out of range, NUL in text, nested too deeply): the caller's
            # input, which validation should have named; this is the backstop, never a 500.
            return InvalidQueryParameters(f"a value cannot be stored or compared: {_first_line(cause or exc.orig)}")
        if sqlstate in {"40001", "40P01"}:
            return Conflict("a concurrent change got there first; retry the request")
        if exc.connection_invalidated or sqlstate.startswith("08") or sqlstate in {"57P01", "57P02", "57P03"}:
            return ServiceUnavailable("the database is unreachable")
        if sqlstate == READ_ONLY_TRANSACTION:
            return ServiceUnavailable("the database takes no writes now (a failover is under way); retry shortly")
        return None
    if isinstance(exc, sqlalchemy.exc.TimeoutError):
        return ServiceBusy(BUSY)
    if isinstance(exc, (OSError, TimeoutError, sqlalchemy.exc.InterfaceError)):
        return ServiceUnavailable("the database is unreachable")
    return None
