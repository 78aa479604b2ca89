"""Rows as they leave DLM: JSON-ready dicts with ISO 8601 timestamps carrying their UTC offset."""

import datetime
import enum
import uuid
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any


def json_value(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.UTC).isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    return value


def row_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    return {key: json_value(value) for key, value in row.items()}


def row_dicts(rows: Iterable[Any]) -> list[dict[str, Any]]:
    return [row_dict(row._mapping if hasattr(row, "_mapping") else row) for row in rows]
