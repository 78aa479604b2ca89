"""The one door every request passes: Host, Origin, credentials, role — in that order, before the
handler runs (and before a body is read)."""

import datetime
import time
from urllib.parse import urlsplit

from litestar.datastructures import Headers
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.auth import tokens
from dlm.auth.oidc import TokenVerifier
from dlm.auth.policy import declared_access
from dlm.auth.principal import ANONYMOUS, Principal
from dlm.config import Settings
from dlm.db.engine import transaction
from dlm.errors import Forbidden, Unauthorized
from dlm.observability.logs import ACTOR

# A verified API token is trusted this long before the database is asked again: revoking a token
# takes effect in other DLM processes within this time (at once in the process that revoked it).
TOKEN_CACHE_SECONDS = 10.0
_TOKEN_CACHE_SIZE = 10_000
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


# What SKA-DLM's clients send when no token is configured (``f"Bearer {TOKEN}"`` with TOKEN None):
# no credential at all, not a wrong one.
UNSET_TOKENS = frozenset({"Bearer None", "Bearer null"})


class Gate:
    """Admits requests for one DLM process."""

    def __init__(self, settings: Settings, *, openapi_path: str) -> None:
        self.allowed_hosts = settings.allowed_host_names
        self.verifier = TokenVerifier(settings) if settings.auth_jwks_url or settings.auth_jwks_file else None
        self.openapi_path = openapi_path.rstrip("/")
        # Whether anonymous callers act as admin: decided at start-up (``dlm.app``'s lifespan); closed
        # until then, unless DLM_AUTH=none.
        self.open = settings.auth == "none"
        self.sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self._tokens: dict[str, tuple[Principal, float]] = {}

    def forget_tokens(self) -> None:
        """Drop cached API tokens (one was revoked here)."""
        self._tokens.clear()

    async def admit(self, scope: Scope) -> Principal:
        """The caller of this request, or the refusal (401/403) it gets."""
        handler = scope["route_handler"]
        access = declared_access(handler)
        if access is None and scope["path"].startswith(self.openapi_path):
            access = "public"  # the API description, served by Litestar's own handlers
        headers = Headers.from_scope(scope)
        if access != "probe" and not (handler.opt.get("any_host") and not self.open):
            self._check_host(headers.get("host"))
            if scope["method"] not in SAFE_METHODS:
                self._check_origin(headers.get("origin"), headers.get("host"))
        if access in ("public", "probe"):
            return ANONYMOUS if self.open else Principal(subject="anonymous", role=None, via="open")
        principal = await self._authenticate(headers.get("authorization"))
        if access is None:
            raise Forbidden(f"{scope['path']} declares no permission; nobody may call it")
        principal.require(access, handler.operation_id or scope["path"])
        return principal

    def _check_host(self, host: str | None) -> None:
        if "*" in self.allowed_hosts:
            return
        name = _host_name(host or "")
        if name in self.allowed_hosts or any(
            allowed.startswith(".") and name.endswith(allowed) for allowed in self.allowed_hosts
        ):
            return
        raise Forbidden(f"Host {host!r} is not a name this DLM answers to (DLM_ALLOWED_HOSTS)")

    @staticmethod
    def _check_origin(origin: str | None, host: str | None) -> None:
        # Browsers name the page's origin on every cross-site request that could change something; a
        # web page elsewhere must not drive a DLM on the operator's machine. Scripts send no Origin.
        if origin is None:
            return
        if origin == "null" or urlsplit(origin).netloc.lower() != (host or "").lower():
            raise Forbidden(f"Origin {origin!r} may not change anything here (only pages served by this DLM may)")

    async def _authenticate(self, authorization: str | None) -> Principal:
        if authorization is not None and authorization.strip() in UNSET_TOKENS:
            authorization = None
        if authorization is None:
            if self.open:
                return ANONYMOUS
            raise Unauthorized("this DLM needs a bearer token: Authorization: Bearer <token>")
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        if tokens.looks_like_token(credential):
            return await self._api_token(credential)
        if self.verifier is None:
            raise Unauthorized("not a DLM API token, and no identity provider is configured for JWTs")
        return await self.verifier.verify(credential)

    async def _api_token(self, secret: str) -> Principal:
        digest = tokens.token_hash(secret)
        cached = self._tokens.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] > now and not _expired(cached[0]):
            return cached[0]
        assert self.sessionmaker is not None, "the gate admits requests only once the app has started"
        async with transaction(self.sessionmaker, actor="gate") as session:
            principal = await tokens.authenticate_token(session, secret)
        if principal is None:
            self._tokens.pop(digest, None)
            raise Unauthorized("the API token is unknown, revoked or expired")
        if len(self._tokens) >= _TOKEN_CACHE_SIZE:
            self._tokens.clear()
        self._tokens[digest] = (principal, now + TOKEN_CACHE_SECONDS)
        return principal


def _expired(principal: Principal) -> bool:
    return principal.expires is not None and principal.expires <= datetime.datetime.now(datetime.UTC)


def _host_name(host: str) -> str:
    """The name in a Host header, without its port: 'example.org:8000' -> 'example.org', '[::1]:80' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name, colon, port = host.rpartition(":")
    return name if colon and port.isdigit() else host


class GateMiddleware(ASGIMiddleware):
    """Runs the app's ``Gate`` for every HTTP request and hands the principal on as ``request.user``."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        gate: Gate = scope["litestar_app"].state.gate
        scope["user"] = await gate.admit(scope)
        ACTOR.set(scope["user"].subject)  # on every log line of the request
        await next_app(scope, receive, send)
