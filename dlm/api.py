"""What every router shares: the per-request transaction, JSON responses, and the error mapping."""

import functools
import logging
import re
import urllib.parse
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Request, Response
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, ValidationException
from litestar.middleware import ASGIMiddleware
from litestar.params import HeaderParameter, QueryParameter
from litestar.status_codes import (
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy import DateTime, Select, literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.auth import Principal
from dlm.db.engine import reading, transaction, translate_database_error
from dlm.errors import DLMError, InvalidQueryParameters
from dlm.transfer.base import TransferError

log = logging.getLogger("dlm.api")

# SKA-DLM's routes take a bearer token; its clients send it, so the parameter is part of the contract.
# DLM's gate (dlm.auth.gate) verifies it before any handler runs.
Authorization = Annotated[
    str | None,
    HeaderParameter(
        name="authorization", required=False, description="Bearer token: a DLM API token or a JWT (docs/security.md)"
    ),
]


# Identifiers are UUIDs; the document says so. An empty one means "not given", as SKA-DLM's clients send.
_UUID_OR_EMPTY = {"anyOf": [{"format": "uuid"}, {"maxLength": 0}]}
UuidQuery = Annotated[str, QueryParameter(schema_extra=_UUID_OR_EMPTY)]
OptionalUuidQuery = Annotated[str | None, QueryParameter(schema_extra=_UUID_OR_EMPTY)]
# Counts and ids stored as PostgreSQL bigint.
MAX_BIGINT = 2**63 - 1
OptionalByteCount = Annotated[int | None, QueryParameter(ge=0, le=MAX_BIGINT)]
EventId = Annotated[int, QueryParameter(ge=0, le=MAX_BIGINT, description="page on from this event_id")]


def provide_principal(request: Request[Any, Any, Any]) -> Principal:
    """The caller, as the gate admitted them."""
    return request.scope["user"]  # type: ignore[no-any-return]


def owner_of_new_items(principal: Principal) -> str | None:
    """Who owns what the caller creates: the authenticated subject; in open mode, nobody in particular."""
    return principal.subject if principal.authenticated else None


async def provide_session(
    request: Request[Any, Any, Any], state: State, principal: NamedDependency[Principal]
) -> AsyncIterator[AsyncSession]:
    """One transaction per request, acting as the caller: committed before the response leaves,
    rolled back on any error. GET and HEAD only read (a route that writes anyway says opt["writes"]):
    they get a read-only session, without the transaction's round trips."""
    if request.method in ("GET", "HEAD") and not request.route_handler.opt.get("writes"):
        async with reading(state.read_sessionmaker) as session:
            yield session
    else:
        async with transaction(state.sessionmaker, actor=principal.subject) as session:
            yield session


class QueryGuard(ASGIMiddleware):
    """Refuses query strings no handler should see: parameters the route does not take (a misspelt
    filter must not silently widen a query to everything) and NUL characters (no column can hold them).
    Which names each route takes comes from the OpenAPI document, read once at start-up. SKA-DLM's
    routes ignore parameters they do not take, as SKA-DLM did (its clients send some): the answer names
    them in an X-DLM-Ignored-Parameters header, and the log once per route and name."""

    scopes = (ScopeType.HTTP,)

    def __init__(self) -> None:
        self._logged: set[tuple[str, str]] = set()

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        taken: dict[str, frozenset[str]] = scope["litestar_app"].state.query_parameters
        handler = scope["route_handler"]
        names = taken.get(handler.operation_id or "")
        if names is None:
            await next_app(scope, receive, send)
            return
        ignored = check_query_string(scope["query_string"], names, ignore_unknown=bool(handler.opt.get("ska")))
        if not ignored:
            await next_app(scope, receive, send)
            return
        for name in ignored:
            if (handler.operation_id, name) not in self._logged:
                self._logged.add((handler.operation_id, name))
                log.info("%s: ignoring query parameter %r, which the route does not take", handler.operation_id, name)
        header = (b"x-dlm-ignored-parameters", ", ".join(ignored).encode())

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        await next_app(scope, receive, send_with_header)


def check_query_string(query_string: bytes, names: frozenset[str], *, ignore_unknown: bool = False) -> list[str]:
    """Refuses what no route takes; returns the names ``ignore_unknown`` let through (sorted, once each)."""
    try:
        pairs = urllib.parse.parse_qsl(query_string.decode("ascii"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InvalidQueryParameters("the query string is not valid percent-encoded UTF-8") from None
    ignored: set[str] = set()
    for name, value in pairs:
        if name not in names:
            if ignore_unknown and name and name.isprintable():
                ignored.add(name)
                continue
            known = ", ".join(sorted(names)) or "none"
            raise InvalidQueryParameters(f"{name or '(empty name)'}: not a parameter of this route (it takes: {known})")
        if "\x00" in value:
            raise InvalidQueryParameters(f"{name}: must not contain NUL characters")
    return sorted(ignored)


def query_parameters(openapi: Any) -> dict[str, frozenset[str]]:
    """Per operation_id, the query parameters the OpenAPI document declares."""
    taken = {}
    for operations in (openapi.paths or {}).values():
        for method in ("get", "put", "post", "delete", "patch", "head"):
            operation = getattr(operations, method, None)
            if operation is not None and operation.operation_id:
                taken[operation.operation_id] = frozenset(
                    parameter.name for parameter in operation.parameters or [] if parameter.param_in == "query"
                )
    return taken


# JSON bodies deeper than this are refused before anything walks them (Python's encoders recurse).
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(rb"[\[\]{}]")


async def refuse_deep_json(request: Request[Any, Any, Any]) -> None:
    """A before_request hook: a JSON body nested beyond MAX_JSON_DEPTH levels is the caller's error."""
    if request.method in ("GET", "HEAD", "OPTIONS") or "json" not in request.headers.get("content-type", ""):
        return
    body = await request.body()  # cached for the handler; the route's body size limit applies
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return
    depth = 0
    for bracket in _BRACKET.findall(_JSON_STRING.sub(b'""', body)):
        depth += 1 if bracket in (b"[", b"{") else -1
        if depth > MAX_JSON_DEPTH:
            raise InvalidQueryParameters(f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels")


def json_response(content: Any, *, background: Any = None) -> Response[Any]:
    """A JSON document, whatever its type: SKA-DLM returns bare JSON strings and booleans too (a handler
    declares the type it returns, e.g. ``Response[str]``, for the OpenAPI document)."""
    return Response(content=msgspec.json.encode(content), media_type="application/json", background=background)


async def json_rows(session: AsyncSession, statement: Select[Any]) -> Response[Any]:
    """The statement's rows as a JSON array, in its order, written by PostgreSQL: the JSON
    ``dlm.rows.row_dicts`` gives, without decoding every value into Python to encode it again (JSON
    columns pass through as stored)."""
    # Named from the statement's own columns: the subquery's column collection is costly to build.
    shape = tuple((column.name, isinstance(column.type, DateTime)) for column in statement.selected_columns)
    shaped = select(literal_column(_projection(shape))).select_from(statement.subquery("r")).subquery("q")
    document = await session.scalar(select(text("coalesce(json_agg(q), '[]')::text")).select_from(shaped))
    return Response(content=document.encode(), media_type="application/json")


@functools.lru_cache(maxsize=64)
def _projection(shape: tuple[tuple[str, bool], ...]) -> str:
    """The columns of ``r`` as Python would write them. PostgreSQL trims a timestamp's trailing zeros
    (".63436"); Python's isoformat, which DLM's answers have always used and some clients parse
    strictly, writes six digits, or none for whole seconds. Written once per shape of row: building
    the same expressions per request cost more than the query."""
    columns = []
    for name, is_timestamp in shape:
        column = f'r."{name}"'
        if is_timestamp:
            utc = f"{column} AT TIME ZONE 'UTC'"
            column = (
                f"CASE WHEN date_trunc('second', {column}) = {column} "
                f'THEN to_char({utc}, \'YYYY-MM-DD"T"HH24:MI:SS"+00:00"\') '
                f'ELSE to_char({utc}, \'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"\') END'
            )
        columns.append(f'{column} AS "{name}"')
    return ", ".join(columns)


def _error(status: int, name: str, message: str, headers: dict[str, str] | None = None) -> Response[dict[str, str]]:
    return Response({"exec": name, "message": message}, status_code=status, headers=headers)


# How SKA-DLM answered what DLM answers otherwise, on SKA-DLM's routes: its clients turn a 422 whose
# exec is InvalidQueryParameters, and a 409 whose exec is DatabaseOperationError, into their own
# exceptions, and anything else into a bare HTTP error. (DLM's status, DLM's message.)
_AS_SKA_ANSWERED = {"NotFound": (422, "InvalidQueryParameters"), "Conflict": (409, "DatabaseOperationError")}


def handle_dlm_error(request: Request[Any, Any, Any], exc: DLMError) -> Response[dict[str, str]]:
    if exc.status_code >= 500:
        log.warning("%s %s: %s: %s", request.method, request.url.path, exc.name, exc.message)
    status, name = exc.status_code, exc.name
    if name in _AS_SKA_ANSWERED and request.route_handler.opt.get("ska"):
        status, name = _AS_SKA_ANSWERED[name]
    return _error(status, name, exc.message, exc.headers)


def handle_transfer_error(request: Request[Any, Any, Any], exc: TransferError) -> Response[dict[str, str]]:
    """A storage could not be reached (503, worth retrying) or refused what was asked (422)."""
    status = HTTP_503_SERVICE_UNAVAILABLE if exc.transient else HTTP_422_UNPROCESSABLE_ENTITY
    return _error(status, type(exc).__name__, exc.message)


def handle_validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, str]]:
    problems = []
    for problem in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(problem, dict):
            key = _public_name(request, problem.get("key")) or problem.get("source") or "request"
            problems.append(f"{key}: {problem.get('message', 'invalid')}")
    message = "; ".join(problems) or str(exc.detail)
    return _error(HTTP_422_UNPROCESSABLE_ENTITY, "InvalidQueryParameters", message)


def _public_name(request: Request[Any, Any, Any], key: str | None) -> str | None:
    """The name the caller used: a handler argument may be an alias for a query parameter or header."""
    try:
        definition = request.route_handler.parsed_fn_signature.parameters[key].kwarg_definition
    except (KeyError, AttributeError):
        return key
    for attribute in ("name", "query", "header"):
        if public := getattr(definition, attribute, None):
            return public
    return key


_HTTP_ERROR_NAMES = {
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "RequestTooLarge",
    503: "ServiceUnavailable",
}


def handle_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, str]]:
    if exc.status_code == 400:  # malformed body: as much the caller's invalid input as a bad parameter
        return _error(HTTP_422_UNPROCESSABLE_ENTITY, "InvalidQueryParameters", f"body: {exc.detail}")
    name = _HTTP_ERROR_NAMES.get(exc.status_code, "HTTPError")
    # A 405's Allow header (the methods the route takes) goes out with it, as HTTP requires.
    return _error(exc.status_code, name, str(exc.detail), dict(exc.headers or {}))


def handle_unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    # Litestar wraps an error raised while a dependency cleans up (our transaction translating a
    # database error at flush or commit) in an ExceptionGroup; the error inside is the one to report.
    if isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        inner = exc.exceptions[0]
        if isinstance(inner, DLMError):
            return handle_dlm_error(request, inner)
        if isinstance(inner, TransferError):
            return handle_transfer_error(request, inner)
        exc = inner
    translated = translate_database_error(exc)
    if translated is not None:
        return handle_dlm_error(request, translated)
    log.exception("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
    return _error(HTTP_500_INTERNAL_SERVER_ERROR, "InternalError", "internal error; the server log has the details")


EXCEPTION_HANDLERS: dict[type[Exception], Any] = {
    DLMError: handle_dlm_error,
    TransferError: handle_transfer_error,
    ValidationException: handle_validation_error,
    HTTPException: handle_http_error,
    Exception: handle_unexpected_error,
}
