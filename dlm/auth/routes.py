"""/auth: who the caller is, and (admins) DLM's API tokens."""

from typing import Any

from litestar import Response, Router, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromQuery
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.api import json_response, provide_session
from dlm.auth import Principal, tokens
from dlm.auth.policy import permission
from dlm.enums import Role
from dlm.parsing import parse_expiry
from dlm.rows import row_dict, row_dicts


@get("/whoami", operation_id="whoami", summary="Who Am I", **permission(Role.READER))
async def whoami(principal: NamedDependency[Principal]) -> dict[str, Any]:
    """The subject DLM records as the actor of your requests, your role, how DLM knows you, and the groups
    your identity provider puts you in."""
    return {
        "subject": principal.subject,
        "role": principal.role,
        "via": principal.via,
        "expires": principal.expires,
        "groups": sorted(principal.groups),
    }


@post("/create_token", operation_id="create_token", summary="Create Token", status_code=200, **permission(Role.ADMIN))
async def create_token(
    session: NamedDependency[AsyncSession],
    principal: NamedDependency[Principal],
    name: FromQuery[str],
    role: FromQuery[Role],
    expires: FromQuery[str | None] = None,
) -> Response[str]:
    """Create an API token named `name` (the subject its holder acts as) with `role`; `expires` is a
    date-time or a duration from now (P90D, 90d, 12h). Returns the secret, which is shown only once."""
    moment = parse_expiry(expires, "expires") if expires else None
    secret = await tokens.create_token(session, name=name, role=role, created_by=principal.subject, expires=moment)
    return json_response(secret)


@get("/list_tokens", operation_id="list_tokens", summary="List Tokens", **permission(Role.ADMIN))
async def list_tokens(session: NamedDependency[AsyncSession], include_revoked: FromQuery[bool] = False) -> list[Any]:
    """API tokens (never their secrets): name, role, who created them, expiry, last use."""
    return row_dicts(await tokens.list_tokens(session, include_revoked=include_revoked))


@post("/revoke_token", operation_id="revoke_token", summary="Revoke Token", status_code=200, **permission(Role.ADMIN))
async def revoke_token(
    session: NamedDependency[AsyncSession], state: State, principal: NamedDependency[Principal], name: FromQuery[str]
) -> dict[str, Any]:
    """Revoke the live token named `name` (at once in this process, within 10 s in others)."""
    row = await tokens.revoke_token(session, name=name, revoked_by=principal.subject)
    state.gate.forget_tokens()
    return row_dict(row._mapping)


router = Router(
    path="/auth",
    route_handlers=[whoami, create_token, list_tokens, revoke_token],
    dependencies={"session": Provide(provide_session)},
    tags=["auth"],
)
