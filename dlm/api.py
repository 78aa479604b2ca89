"""What every router shares: the per-request transaction, JSON responses, and the error mapping."""

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException, ValidationException
from litestar.params import HeaderParameter
from litestar.status_codes import (
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.db.engine import transaction, translate_database_error
from dlm.errors import DLMError
from dlm.transfer.base import TransferError

log = logging.getLogger("dlm.api")

API_ACTOR = "api"

# SKA-DLM's routes take a bearer token; its clients send it, so the parameter is part of the contract.
Authorization = Annotated[
    str | None,
    HeaderParameter(name="authorization", required=False, description="Bearer token (not yet verified)"),
]


async def provide_session(state: State) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed before the response leaves, rolled back on any error."""
    async with transaction(state.sessionmaker, actor=API_ACTOR) as session:
        yield session


def json_response(content: Any) -> Response[bytes]:
    """A JSON document, whatever its type: SKA-DLM returns bare JSON strings and booleans too."""
    return Response(content=msgspec.json.encode(content), media_type="application/json")


def _error(status: int, name: str, message: str) -> Response[dict[str, str]]:
    return Response({"exec": name, "message": message}, status_code=status)


def handle_dlm_error(request: Request[Any, Any, Any], exc: DLMError) -> Response[dict[str, str]]:
    return _error(exc.status_code, exc.name, exc.message)


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
    return _error(exc.status_code, name, str(exc.detail))


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
