"""/ui: the operator's web page, and the offline OpenAPI browser at /schema.

The page is a small static app (dlm/ui/assets): it signs in with a DLM token kept in the tab's
sessionStorage and calls the same API routes as every other client, with the same permissions, so it
can show nothing its user could not read with curl. Every asset is served from here; nothing comes
from another host, and the Content-Security-Policy says so to the browser too.
"""

import functools
import mimetypes
from importlib import resources
from typing import Any

from litestar import Request, Response, Router, get
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.params import FromPath, FromQuery
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.api import UuidQuery, provide_session
from dlm.auth import Principal
from dlm.auth.policy import PUBLIC, permission
from dlm.enums import Role
from dlm.errors import NotFound
from dlm.ui.overview import overview
from dlm.ui.storage_page import storage_page

ASSETS_PATH = "/ui/assets"
# Only this server's own scripts, styles and API; no inline script, no framing by other sites.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# Vendored libraries carry their version in their folder's name (see assets/vendor/README.md).
VENDOR_CACHE = "public, max-age=86400"


@functools.cache
def assets() -> dict[str, bytes]:
    """Every file under dlm/ui/assets by its path there, read once."""
    found: dict[str, bytes] = {}

    def walk(folder: Any, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif not entry.name.endswith(".md"):
                found[prefix + entry.name] = entry.read_bytes()

    walk(resources.files("dlm.ui") / "assets", "")
    return found


def _asset_response(path: str) -> Response[bytes]:
    content = assets().get(path)
    if content is None:
        raise NotFound(f"no asset {path!r}")
    media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    cache = VENDOR_CACHE if path.startswith("vendor/") else "no-cache"
    return Response(content, media_type=media_type, headers={**SECURITY_HEADERS, "Cache-Control": cache})


@get("/", operation_id="ui_page", summary="Operator page", include_in_schema=False, **PUBLIC)
async def page() -> Response[bytes]:
    """The single page; what it shows comes from the API once its user has signed in."""
    return _asset_response("index.html")


@get("/assets/{path:path}", operation_id="ui_asset", include_in_schema=False, **PUBLIC)
async def asset(path: FromPath[str]) -> Response[bytes]:
    return _asset_response(path.lstrip("/"))


@get("/overview", operation_id="ui_overview", summary="Operator Overview", **permission(Role.READER))
async def overview_route(
    session: NamedDependency[AsyncSession], principal: NamedDependency[Principal], state: State
) -> dict[str, Any]:
    """DLM addition. What the operator page's overview shows: storages (capacity, used, phase), items
    by state and phase, the copy queue (counts by status, the oldest due, the copies under way: below
    the operator role only the caller's own), bytes copied per hour over the last day, the newest
    storage events, and the last pass of each engine in the DLM process that answers."""
    last_passes = state.engine_loops.last_passes if "engine_loops" in state else {}
    user = None if principal.may(Role.OPERATOR) else principal.subject
    return await overview(session, last_passes=last_passes, user=user)


@get("/storage", operation_id="ui_storage", summary="Operator Storage Page", **permission(Role.READER))
async def storage_route(
    session: NamedDependency[AsyncSession], storage_name: FromQuery[str] = "", storage_id: UuidQuery = ""
) -> dict[str, Any]:
    """DLM addition. What the operator page shows of one storage (storage_name or storage_id): its row and
    fill, bytes held at the end of each of the last 30 days, replicas by state, copies under way into
    and out of it, its latest copies (with item names) and its events."""
    return await storage_page(session, storage_name=storage_name, storage_id=storage_id)


router = Router(
    path="/ui",
    route_handlers=[page, asset, overview_route, storage_route],
    dependencies={"session": Provide(provide_session)},
    tags=["ui"],
)


class PageHeaders(ASGIMiddleware):
    """The API browser under ``path`` (Litestar's own handlers) is a page like /ui: the same
    Content-Security-Policy, no framing by other sites, no sniffing."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, path: str) -> None:
        self.path = path.rstrip("/")
        self.headers = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if scope["path"] != self.path and not scope["path"].startswith(self.path + "/"):
            await next_app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        await next_app(scope, receive, with_headers)


class OfflineSwagger(OpenAPIRenderPlugin):
    """Swagger UI from this server's own copy (assets/vendor), for networks without a CDN."""

    def __init__(self, path: str = "/swagger", *, openapi_json: str) -> None:
        favicon = f"<link rel='icon' type='image/svg+xml' href='{ASSETS_PATH}/favicon.svg'>"
        super().__init__(path=path, favicon=favicon, style="")
        self.openapi_json = openapi_json

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        swagger = f"{ASSETS_PATH}/vendor/swagger-ui-5.35.0"
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{openapi_schema["info"]["title"]} API</title>
{self.favicon}
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="{swagger}/swagger-ui.css">
<script src="{swagger}/swagger-ui-bundle.js"></script>
<script src="{ASSETS_PATH}/schema.js" data-openapi="{self.openapi_json}"></script>
</head><body><div id="swagger-ui"></div></body></html>""".encode()
