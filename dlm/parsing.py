"""Turning what callers send (strings, mostly) into typed values, with errors that name the field."""

import datetime
import enum
import json
import re
import uuid
from typing import Any, TypeVar

from dlm.errors import InvalidQueryParameters

E = TypeVar("E", bound=enum.Enum)

_COMPACT_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DURATION = re.compile(
    r"^(?P<sign>[-+])?P(?:(?P<weeks>\d+(?:\.\d+)?)W)?(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$",
    re.IGNORECASE,
)


def parse_uuid(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value.strip())
    except (ValueError, AttributeError):
        raise InvalidQueryParameters(f"{field}: {value!r} is not a UUID") from None


def parse_datetime(value: str, field: str) -> datetime.datetime:
    """ISO 8601 date or date-time (also YYYYMMDD); one without an offset is taken as UTC."""
    text = value.strip()
    if match := _COMPACT_DATE.match(text):
        text = "-".join(match.groups())
    try:
        parsed = datetime.datetime.fromisoformat(text.replace(" ", "T", 1) if "T" not in text else text)
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=datetime.UTC)
        return parsed.astimezone(datetime.UTC)
    except (ValueError, OverflowError):
        raise InvalidQueryParameters(
            f"{field}: {value!r} is not an ISO 8601 date or date-time (e.g. 2026-01-31T12:00:00+00:00)"
        ) from None


def parse_duration(value: str, field: str) -> datetime.timedelta:
    """ISO 8601 duration (P1D, PT1H30M, -PT5M) or a number of seconds."""
    text = value.strip()
    invalid = InvalidQueryParameters(f"{field}: {value!r} is not an ISO 8601 duration (e.g. P1D, PT1H) or seconds")
    try:
        return datetime.timedelta(seconds=float(text))
    except ValueError:
        pass  # not a number of seconds (or nan): try ISO 8601
    except OverflowError:
        raise invalid from None
    match = _DURATION.match(text)
    if not match or text.upper().rstrip("T").endswith("P"):
        raise invalid
    parts = {key: float(number) for key, number in match.groupdict().items() if key != "sign" and number}
    try:
        duration = datetime.timedelta(**parts)
    except OverflowError:
        raise invalid from None
    return -duration if match["sign"] == "-" else duration


def parse_enum(enum_class: type[E], value: Any, field: str) -> E:
    try:
        return enum_class(value)
    except ValueError:
        allowed = ", ".join(str(member.value) for member in enum_class)
        raise InvalidQueryParameters(f"{field}: {value!r} is not one of {allowed}") from None


def parse_json_object(value: str, field: str) -> dict[str, Any]:
    """A JSON object given as a string (SKA-DLM also accepts Python-style single quotes)."""
    for candidate in (value, value.replace("'", '"')):
        try:
            parsed = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict):
            return parsed
        break
    raise InvalidQueryParameters(f"{field}: {value!r} is not a JSON object")


def require_one(field_values: dict[str, Any]) -> None:
    """At least one of these identifying parameters must be given."""
    if not any(field_values.values()):
        raise InvalidQueryParameters(f"one of {', '.join(field_values)} is required")
