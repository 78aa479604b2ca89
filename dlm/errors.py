"""DLM's errors. Each knows its HTTP status; the API turns any of them into
``{"exec": "<ErrorName>", "message": "..."}`` in one place (``dlm.app``)."""


class DLMError(Exception):
    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the response carries besides the JSON body."""
        return {}

    @property
    def name(self) -> str:
        return type(self).__name__


class InvalidQueryParameters(DLMError):
    """A parameter is missing, malformed or not allowed."""

    status_code = 422


class ValueAlreadyInDB(DLMError):
    """The thing asked for exists already (e.g. an item registered twice on one storage)."""

    status_code = 422


class UnmetPreconditionForOperation(DLMError):
    """The request is well formed but the data is not in a state that allows it."""

    status_code = 422


class NotFound(DLMError):
    """An item, storage or location named by the caller does not exist."""

    status_code = 404


class DatabaseOperationError(DLMError):
    """A value names a row that does not exist (a foreign key), answered as SKA-DLM's database
    answered it: its clients expect a 409 with this name (an unknown location_facility)."""

    status_code = 409


class Conflict(DLMError):
    """A concurrent change got there first; the caller may retry."""

    status_code = 409


class Unauthorized(DLMError):
    """No credentials, or credentials DLM cannot verify (missing, malformed, forged, expired, revoked)."""

    status_code = 401

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="dlm"'}


class Forbidden(DLMError):
    """The caller is known but may not do this (a role too low, a foreign Origin, an unknown Host)."""

    status_code = 403


class ServiceUnavailable(DLMError):
    """The database or a storage cannot be reached."""

    status_code = 503
    retry_after_seconds = 5

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


class ServiceBusy(ServiceUnavailable):
    """Every database connection of this process is in use; the request may be retried shortly."""

    retry_after_seconds = 1


class SchemaOutOfDate(DLMError):
    """The database schema is not the one this DLM was built for."""

    status_code = 503
