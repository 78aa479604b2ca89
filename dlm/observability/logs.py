"""Logging for `dlm serve` and `dlm worker`: text for people, or one JSON object per line for a log
pipeline (``DLM_LOG_FORMAT=json``), carrying the request id and the caller of the request being served.
"""

import contextvars
import datetime
import json
import logging
from typing import Any

# The request being served (set by dlm.observability.http): every line logged meanwhile carries them.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("dlm_request_id", default=None)
ACTOR: contextvars.ContextVar[str | None] = contextvars.ContextVar("dlm_actor", default=None)
# Fields a caller may pass with ``extra=`` that a JSON line keeps (the ids an operator greps for).
CONTEXT_FIELDS = ("uid", "oid", "migration_id", "delivery_id", "storage", "method", "route", "status", "duration_ms")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in (("request_id", REQUEST_ID.get()), ("actor", ACTOR.get())):
            if value is not None:
                line[key] = value
        for field in CONTEXT_FIELDS:
            if hasattr(record, field):
                line[field] = getattr(record, field)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: str, log_format: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("pgserver").setLevel(logging.WARNING)
