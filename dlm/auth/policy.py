"""Who may call which route: each route declares its role once, where it is declared,

    @get("/query_data_item", operation_id="query_data_item", **permission(Role.READER))

and ``dlm.auth.gate`` enforces it before the handler runs. The declaration also documents the route
in the OpenAPI (bearer security, the role as ``x-dlm-role`` and in the description, the error
responses). A route that declares nothing is refused to everyone: forgetting fails closed, and a
test fails too. The whole table is generated into docs/security.md.
"""

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import msgspec
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Operation

from dlm.auth.principal import OIDC_SUBJECT, TOKEN_SUBJECT, Principal
from dlm.db.models import DEFAULT_OWNER
from dlm.enums import Role
from dlm.errors import Forbidden, InvalidQueryParameters

BEARER_SCHEME = "BearerToken"
# opt["access"] of routes anyone may call: "public" (the API description) or "probe" (health checks,
# which orchestrators address by IP, so their Host is not checked either).
Access = Role | Literal["public", "probe"]


class ErrorBody(msgspec.Struct):
    """Every refusal: the error's name and a message naming the field or the reason."""

    exec: str
    message: str


def _error(description: str) -> ResponseSpec:
    return ResponseSpec(data_container=ErrorBody, description=description, generate_examples=False)


ERROR_RESPONSES = {
    401: _error("No bearer token, or one DLM cannot verify (WWW-Authenticate: Bearer)"),
    403: _error("The caller's role is below the one this route needs, or a foreign Origin or unknown Host"),
    404: _error("An item, storage, location or migration named does not exist"),
    409: _error("A concurrent change or a running copy stands in the way; retry or cancel it first"),
    413: _error("The request body is larger than this route accepts"),
    422: _error("A parameter or body field is missing, malformed, out of range or not allowed (named)"),
    503: _error("The database, a storage or the identity provider cannot be reached, or DLM is busy (Retry-After)"),
}


@dataclass
class _RoleOperation(Operation):
    role: ClassVar[str] = ""

    def to_schema(self) -> dict[str, Any]:
        schema = super().to_schema()
        # Litestar documents its own 400 for bad parameters; DLM answers those with 422 (ERROR_RESPONSES).
        schema.get("responses", {}).pop("400", None)
        schema["x-dlm-role"] = self.role
        note = f"Requires role `{self.role}` (or higher)."
        schema["description"] = f"{schema.get('description', '').rstrip()}\n\n{note}".lstrip()
        return schema


_OPERATIONS = {role: type(f"{role.value.title()}Operation", (_RoleOperation,), {"role": role.value}) for role in Role}


def permission(role: Role, *, any_host: bool = False, ska: bool = False) -> dict[str, Any]:
    """Route decorator arguments: callers need ``role`` or higher. ``any_host``: when DLM is closed, the
    route answers whatever Host a request names (a scraper addressing each pod by IP); a token is still
    needed, and an open DLM still checks the Host (DNS rebinding reaches only a loopback DLM). ``ska``:
    the route is one of SKA-DLM's (tests/contract), answered as SKA's clients expect it (query
    parameters it does not take are ignored, as FastAPI ignores them, where DLM's own routes refuse them)."""
    return {
        "opt": {"access": role, "any_host": any_host, "ska": ska},
        "security": [{BEARER_SCHEME: []}],
        "responses": ERROR_RESPONSES,
        "operation_class": _OPERATIONS[role],
    }


PUBLIC: dict[str, Any] = {"opt": {"access": "public"}}
PROBE: dict[str, Any] = {"opt": {"access": "probe"}}


def declared_access(handler: HTTPRouteHandler) -> Access | None:
    """What a route declared, or None if it declared nothing (then nobody may call it)."""
    access = handler.opt.get("access")
    return access if isinstance(access, Role) or access in ("public", "probe") else None


# --- Who may read and change an item (docs/security.md#items) ---

_QUALIFIED = (TOKEN_SUBJECT, OIDC_SUBJECT)


def qualified_subject(name: str, field: str) -> str:
    """An owner, or a subject in an acl, as DLM stores it: ``token:<name>`` or ``oidc:<subject>`` as
    given; a bare name is an identity provider's user (SKA-DLM's owners are OIDC user names). SKA-DLM's
    default owner ``SKA`` stays itself: it is nobody."""
    name = name.strip()
    if not name:
        raise InvalidQueryParameters(f"{field}: must not be empty")
    if name.startswith(_QUALIFIED):
        if name in _QUALIFIED:
            raise InvalidQueryParameters(f"{field}: {name!r} names nobody; add the name after the ':'")
        return name
    return name if name == DEFAULT_OWNER else f"{OIDC_SUBJECT}{name}"


def qualified_acl(acl: dict[str, Any] | None, field: str = "acl") -> dict[str, Any] | None:
    """An acl as DLM stores it: its ``read`` list holds "*", "group:<name>" and qualified subjects."""
    if acl is None or "read" not in acl:
        return acl
    readers = acl["read"]
    if not isinstance(readers, list) or not all(isinstance(reader, str) for reader in readers):
        raise InvalidQueryParameters(f'{field}.read: must be a list of names ("*", "group:<name>", subjects)')
    return {
        **acl,
        "read": [
            reader if reader == "*" or reader.startswith("group:") else qualified_subject(reader, f"{field}.read")
            for reader in readers
        ],
    }


def may_read(principal: Principal, owner: str, acl: Any) -> bool:
    """Operators and admins read everything. A reader or ingest caller reads what it owns, and an item
    with no acl (the observatory's data is open to its readers unless restricted); an acl's ``read``
    list decides the rest: "*", the caller's subject, or "group:<one of its groups>". The item's
    ``item_group`` grants nothing past an acl."""
    if principal.may(Role.OPERATOR):
        return True
    if not principal.may(Role.READER):
        return False
    if owner == principal.subject or acl is None:
        return True
    readers = acl.get("read", []) if isinstance(acl, dict) else []
    if not isinstance(readers, list):
        return False
    names = {"*", principal.subject} | {f"group:{group}" for group in principal.groups}
    return not names.isdisjoint(reader for reader in readers if isinstance(reader, str))


def may_change(principal: Principal, owner: str) -> bool:
    """Operators and admins change any item; an ingest caller only the items it owns."""
    return principal.may(Role.OPERATOR) or (principal.may(Role.INGEST) and owner == principal.subject)


def require_change(principal: Principal | None, owner: str, what: str) -> None:
    """Refuse (403) a change to an item ``principal`` may not change; None is DLM's own work."""
    if principal is not None and not may_change(principal, owner):
        raise Forbidden(
            f"{principal.subject!r} may not change {what}: it is {owner!r}'s (below operator, only its owner may)"
        )
