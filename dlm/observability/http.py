"""Every HTTP request observed: counted and timed by its route template (never the raw path, whose
ids would make a label per item), given a request id (the caller's X-Request-ID, or a new one, echoed
back and carried by every log line of the request), and logged in one access line."""

import logging
import re
import time
import uuid

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from dlm.observability import metrics
from dlm.observability.logs import ACTOR, REQUEST_ID

access = logging.getLogger("dlm.access")
# What the access log and the metrics say of a request whose client went away before its answer.
CLIENT_CLOSED = "499"
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


def request_id(scope: Scope) -> str:
    given = next((value for name, value in scope["headers"] if name == b"x-request-id"), None)
    return given.decode() if given is not None and _REQUEST_ID.match(given) else uuid.uuid4().hex


class ObservedRequests(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, access_log: bool = True) -> None:
        self.access_log = access_log

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        started = time.perf_counter()
        method = scope["method"]
        route = scope.get("path_template") or "unmatched"  # type: ignore[typeddict-item]
        identifier = request_id(scope)
        request_token, actor_token = REQUEST_ID.set(identifier), ACTOR.set(None)
        status: list[int] = []
        gone: list[bool] = []

        async def watched() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.append(True)
            return message

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                message["headers"] = [*message.get("headers", []), (b"x-request-id", identifier.encode())]
                metrics.HTTP_DURATION.labels(method, route).observe(time.perf_counter() - started)
            await send(message)

        try:
            await next_app(scope, watched, observed)
        except Exception as exc:
            # Raised by a middleware (a refused token, an unknown parameter): answered further out, with
            # the status the error carries.
            if not status:
                status.append(getattr(exc, "status_code", 500))
                metrics.HTTP_DURATION.labels(method, route).observe(time.perf_counter() - started)
            raise
        finally:
            answered = str(status[0]) if status else "500"
            if gone and answered.startswith("5"):
                # The client went away mid-request (an aborted upload, a body the server could not parse):
                # nginx's 499, not an error of DLM's, and no 5xx alert.
                answered = CLIENT_CLOSED
            metrics.HTTP_REQUESTS.labels(method, route, answered).inc()
            if self.access_log:
                milliseconds = round((time.perf_counter() - started) * 1000, 1)
                user = scope.get("user")
                actor = getattr(user, "subject", None) or "-"
                access.info(
                    "%s %s %s %.1f ms %s",
                    method,
                    scope["path"],
                    answered,
                    milliseconds,
                    actor,
                    extra={"method": method, "route": route, "status": int(answered), "duration_ms": milliseconds},
                )
            ACTOR.reset(actor_token)
            REQUEST_ID.reset(request_token)
