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


# The moments DLM accepts. PostgreSQL and asyncpg store datetime.min/max as -infinity/infinity, and
# one such expiry would make every later comparison (and expiry pass) meaningless.
EARLIEST = datetime.datetime(1900, 1, 1, tzinfo=datetime.UTC)
LATEST = datetime.datetime(9999, 1, 1, tzinfo=datetime.UTC)
_SHORT_DURATION = re.compile(r"^(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[smhdw])$", re.IGNORECASE)
_SECONDS_PER_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_datetime(value: str, field: str) -> datetime.datetime:
    """ISO 8601 date or date-time (also YYYYMMDD), between 1900 and 9999; one without an offset is UTC."""
    text = value.strip()
    if match := _COMPACT_DATE.match(text):
        text = "-".join(match.groups())
    try:
        parsed = datetime.datetime.fromisoformat(text.replace(" ", "T", 1) if "T" not in text else text)
        parsed = parsed.replace(tzinfo=datetime.UTC) if parsed.tzinfo is None else parsed.astimezone(datetime.UTC)
    except (ValueError, OverflowError):
        raise InvalidQueryParameters(
            f"{field}: {value!r} is not an ISO 8601 date or date-time (e.g. 2026-01-31T12:00:00+00:00)"
        ) from None
    return check_moment(parsed, field)


def check_moment(moment: datetime.datetime, field: str) -> datetime.datetime:
    if not EARLIEST <= moment < LATEST:
        raise InvalidQueryParameters(f"{field}: {moment.isoformat()} is outside the years 1900 to 9998")
    return moment


def shift(moment: datetime.datetime, delta: datetime.timedelta, field: str) -> datetime.datetime:
    """``moment + delta``, refused (naming ``field``) when it leaves the range DLM stores."""
    try:
        return check_moment(moment + delta, field)
    except OverflowError:
        raise InvalidQueryParameters(f"{field}: reaches beyond the years 1900 to 9998") from None


def parse_expiry(value: str, field: str) -> datetime.datetime:
    """A moment: an ISO 8601 date-time, or a duration from now (P90D, PT12H, 90d, 12h, 30m)."""
    text = value.strip()
    if match := _SHORT_DURATION.match(text):
        seconds = float(match["number"]) * _SECONDS_PER_UNIT[match["unit"].lower()]
        delta = _timedelta(seconds, value, field)
        return shift(datetime.datetime.now(datetime.UTC), delta, field)
    if text.lstrip("+-")[:1] in ("P", "p"):
        return shift(datetime.datetime.now(datetime.UTC), parse_duration(text, field), field)
    try:
        return parse_datetime(text, field)
    except InvalidQueryParameters as exc:
        if "ISO 8601" not in exc.message:
            raise  # a date outside the years DLM stores: that is what to say
        raise InvalidQueryParameters(
            f"{field}: {value!r} is neither a duration from now (90d, 12h, 30m, P1Y) nor an ISO 8601 date or "
            "date-time (2027-01-31)"
        ) from None


def _timedelta(seconds: float, value: str, field: str) -> datetime.timedelta:
    try:
        return datetime.timedelta(seconds=seconds)
    except OverflowError:
        raise InvalidQueryParameters(f"{field}: {value!r} is too long a duration") from None


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
