"""Per-request metrics: count and time every answer by its route template (never the raw path, whose
ids would make a label per item)."""

import time

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from dlm.observability import metrics


class RequestMetrics(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        started = time.perf_counter()
        method = scope["method"]
        route = scope.get("path_template") or "unmatched"  # type: ignore[typeddict-item]
        status: list[int] = []

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                metrics.HTTP_DURATION.labels(method, route).observe(time.perf_counter() - started)
            await send(message)

        try:
            await next_app(scope, receive, observed)
        except Exception as exc:
            # Raised by a middleware (a refused token, an unknown parameter): answered further out, with
            # the status the error carries.
            if not status:
                status.append(getattr(exc, "status_code", 500))
                metrics.HTTP_DURATION.labels(method, route).observe(time.perf_counter() - started)
            raise
        finally:
            metrics.HTTP_REQUESTS.labels(method, route, str(status[0]) if status else "500").inc()
