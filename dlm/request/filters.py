"""SKA-DLM's ``params``: PostgREST-style filters (``item_state=eq.READY&limit=10``, or the same as a JSON
object) translated into bound SQL over whitelisted columns. Nothing a caller sends reaches SQL as text."""

import enum
import json
import math
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy import Column, ColumnElement, Table
from sqlalchemy.dialects.postgresql import JSONB

from dlm.errors import InvalidQueryParameters
from dlm.parsing import parse_datetime, parse_enum, parse_uuid

MAX_PAGE_SIZE = 1000
RESERVED = {"limit", "offset", "order", "select"}
OPERATORS = {"eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "in", "is", "cs"}
_IN_LIST = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|([^,]*))\s*(?:,|$)')


class Query(msgspec.Struct, kw_only=True):
    conditions: list[ColumnElement[bool]]
    order_by: list[Any]
    limit: int = MAX_PAGE_SIZE
    offset: int = 0
    columns: list[Column[Any]] | None = None


def parse_params(params: str | None, table: Table, default_order: list[str]) -> Query:
    """Translate a ``params`` string for ``table``. Every column of the table may be filtered, ordered
    and selected; anything else is an InvalidQueryParameters naming the offending part."""
    query = Query(conditions=[], order_by=[])
    for key, value in _pairs(params):
        if key == "limit":
            query.limit = _bounded_int(value, "limit", 1, MAX_PAGE_SIZE)
        elif key == "offset":
            query.offset = _bounded_int(value, "offset", 0, 2**62)
        elif key == "order":
            query.order_by = [_order_term(term, table) for term in str(value).split(",")]
        elif key == "select":
            query.columns = [_column(name.strip(), table, "select") for name in str(value).split(",")]
        elif key in {"or", "and", "not"}:
            raise InvalidQueryParameters(f"params.{key}: logical groups are not supported; filters are AND-ed")
        else:
            query.conditions.append(_condition(_column(key, table, "params"), value))
    if not query.order_by:
        query.order_by = [table.c[name] for name in default_order]
    return query


def _pairs(params: str | None) -> list[tuple[str, Any]]:
    if params is None or not params.strip():
        return []
    text = params.strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            try:  # SKA-DLM clients sometimes send a Python dict's repr
                parsed = json.loads(text.replace("'", '"'))
            except json.JSONDecodeError:
                raise InvalidQueryParameters("params: not a valid JSON object") from None
        if not isinstance(parsed, dict):
            raise InvalidQueryParameters("params: not a valid JSON object")
        return list(parsed.items())
    try:
        return urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise InvalidQueryParameters("params: expected column=operator.value pairs joined by '&'") from None


def _bounded_int(value: Any, field: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidQueryParameters(f"params.{field}: {value!r} is not an integer") from None
    if not low <= number <= high:
        raise InvalidQueryParameters(f"params.{field}: must be between {low} and {high}")
    return number


def _column(name: str, table: Table, field: str) -> Column[Any]:
    if name not in table.c:
        raise InvalidQueryParameters(f"{field}: unknown column {name!r} of {table.name}")
    return table.c[name]


def _order_term(term: str, table: Table) -> Any:
    name, *modifiers = term.strip().split(".")
    column = _column(name, table, "params.order")
    ordered: Any = column
    for modifier in modifiers:
        match modifier:
            case "asc":
                ordered = ordered.asc()
            case "desc":
                ordered = ordered.desc()
            case "nullsfirst":
                ordered = ordered.nulls_first()
            case "nullslast":
                ordered = ordered.nulls_last()
            case _:
                raise InvalidQueryParameters(f"params.order: unknown modifier {modifier!r} for {name}")
    return ordered


def _condition(column: Column[Any], raw: Any) -> ColumnElement[bool]:
    field = f"params.{column.name}"
    if not isinstance(raw, str):
        raise InvalidQueryParameters(f"{field}: expected operator.value, e.g. eq.{raw}")
    negate = raw.startswith("not.")
    operator, dot, operand = raw.removeprefix("not.").partition(".")
    if not dot or operator not in OPERATORS:
        raise InvalidQueryParameters(
            f"{field}: {raw!r} needs an operator, one of {', '.join(sorted(OPERATORS))} (e.g. eq.value)"
        )
    condition = _apply(column, operator, operand, field)
    return sa.not_(condition) if negate else condition


def _apply(column: Column[Any], operator: str, operand: str, field: str) -> ColumnElement[bool]:
    is_json = isinstance(column.type, JSONB)
    if operator == "is":
        match operand.lower():
            case "null":
                return column.is_(None)
            case "true" | "false" if isinstance(column.type, sa.Boolean):
                return column.is_(operand.lower() == "true")
        raise InvalidQueryParameters(f"{field}: is. takes null (or true/false for a boolean column)")
    if operator == "cs":
        if not is_json:
            raise InvalidQueryParameters(f"{field}: cs. (contains) applies to JSON columns only")
        try:
            document = json.loads(operand)
        except json.JSONDecodeError:
            raise InvalidQueryParameters(f"{field}: cs. takes a JSON document") from None
        # Bound as a JSON document whatever its kind: a bare 5 would otherwise be sent as an integer.
        return column.contains(sa.cast(sa.literal(json.dumps(document)), JSONB))
    if is_json:
        raise InvalidQueryParameters(f"{field}: a JSON column can be filtered with is.null or cs.{{...}} only")
    if operator in {"like", "ilike"}:
        if isinstance(column.type, sa.Enum | sa.UUID):
            text: ColumnElement[Any] = sa.cast(column, sa.Text)  # a state or an id matched as the text it reads as
        elif isinstance(column.type, sa.String):
            text = column
        else:
            raise InvalidQueryParameters(f"{field}: {operator}. applies to text, enum and id columns only")
        pattern = operand.replace("*", "%")
        return text.like(pattern) if operator == "like" else text.ilike(pattern)
    convert = _converter(column, field)
    if operator == "in":
        if not (operand.startswith("(") and operand.endswith(")")):
            raise InvalidQueryParameters(f"{field}: in. takes a list in parentheses, e.g. in.(a,b)")
        return column.in_([convert(value) for value in _in_values(operand[1:-1])])
    value = convert(operand)
    return {
        "eq": column.__eq__,
        "neq": column.__ne__,
        "gt": column.__gt__,
        "gte": column.__ge__,
        "lt": column.__lt__,
        "lte": column.__le__,
    }[operator](value)


def _in_values(inner: str) -> list[str]:
    values = []
    for quoted, bare in _IN_LIST.findall(inner)[:-1] if inner else []:
        values.append(re.sub(r"\\(.)", r"\1", quoted) if quoted else bare.strip())
    return values


def _converter(column: Column[Any], field: str) -> Callable[[str], Any]:
    column_type = column.type
    if isinstance(column_type, sa.Enum) and column_type.enum_class is not None:
        enum_class: type[enum.Enum] = column_type.enum_class
        return lambda value: parse_enum(enum_class, value, field)
    if isinstance(column_type, sa.UUID):
        return lambda value: parse_uuid(value, field)
    if isinstance(column_type, sa.DateTime):
        return lambda value: parse_datetime(value, field)
    if isinstance(column_type, sa.Boolean):
        return lambda value: _boolean(value, field)
    if isinstance(column_type, sa.Integer):
        bits = 16 if isinstance(column_type, sa.SmallInteger) else 64 if isinstance(column_type, sa.BigInteger) else 32
        return lambda value: _integer(value, field, bits)
    if isinstance(column_type, sa.Numeric):
        return lambda value: _decimal(value, field)
    return str


def _boolean(value: str, field: str) -> bool:
    if value.lower() in {"true", "false"}:
        return value.lower() == "true"
    raise InvalidQueryParameters(f"{field}: {value!r} is not true or false")


def _integer(value: str, field: str, bits: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise InvalidQueryParameters(f"{field}: {value!r} is not an integer") from None
    if not -(2 ** (bits - 1)) <= number < 2 ** (bits - 1):
        raise InvalidQueryParameters(f"{field}: {value!r} is out of range for this column ({bits}-bit)")
    return number


def _decimal(value: str, field: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise InvalidQueryParameters(f"{field}: {value!r} is not a number") from None
    if not math.isfinite(number) or abs(number) >= 1e15:
        raise InvalidQueryParameters(f"{field}: {value!r} is out of range")
    return number
