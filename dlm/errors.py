"""DLM's errors. Each knows its HTTP status; the API turns any of them into
``{"exec": "<ErrorName>", "message": "..."}`` in one place (``dlm.app``)."""


class DLMError(Exception):
    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

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


class Conflict(DLMError):
    """A concurrent change got there first; the caller may retry."""

    status_code = 409


class ServiceUnavailable(DLMError):
    """The database or a storage cannot be reached."""

    status_code = 503


class SchemaOutOfDate(DLMError):
    """The database schema is not the one this DLM was built for."""

    status_code = 503
