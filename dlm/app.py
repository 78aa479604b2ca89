"""The DLM service: one Litestar process hosting the ingest, request, storage and migration routers,
and the workers that run queued copies."""

import contextlib
import logging
from collections.abc import AsyncIterator

from litestar import Litestar, Response, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from sqlalchemy import text

import dlm
from dlm.api import EXCEPTION_HANDLERS, QueryGuard, provide_principal, query_parameters, refuse_deep_json
from dlm.auth.gate import Gate, GateMiddleware
from dlm.auth.policy import BEARER_SCHEME, PROBE, permission
from dlm.auth.routes import router as auth_router
from dlm.auth.startup import decide_open
from dlm.config import Settings
from dlm.db.engine import create_engine, create_read_sessionmaker, create_sessionmaker
from dlm.db.schema import check_schema, current_revision, head_revision, schema_problem
from dlm.enums import Role
from dlm.ingest.routes import router as ingest_router
from dlm.lifecycle.loops import EngineLoops
from dlm.metadata import load_extractors
from dlm.migration.routes import router as migration_router
from dlm.migration.worker import MigrationWorkers
from dlm.observability import metrics
from dlm.observability.http import ObservedRequests
from dlm.request.routes import router as request_router
from dlm.storage.context import session_info
from dlm.storage.routes import router as storage_router
from dlm.ui.routes import OfflineSwagger, PageHeaders
from dlm.ui.routes import router as ui_router

log = logging.getLogger("dlm")


OPENAPI_PATH = "/schema"


@get("/health/live", operation_id="health_live", summary="Liveness", tags=["health"], **PROBE)
async def health_live() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@get(
    "/metrics",
    operation_id="metrics",
    summary="Metrics",
    tags=["health"],
    description="Prometheus metrics of this process (text exposition format); see docs/operations.md#metrics.",
    media_type=metrics.CONTENT_TYPE,
    # Scraped per pod, by IP: DLM_ALLOWED_HOSTS cannot list those.
    **permission(Role.READER, any_host=True),
)
async def metrics_route(state: State) -> Response[bytes]:
    return Response(await metrics.render(state.sessionmaker, state.engine))


@get("/health/ready", operation_id="health_ready", summary="Readiness", tags=["health"], **PROBE)
async def health_ready(state: State) -> Response[dict[str, str]]:
    """The database answers and this DLM can serve on its schema (its own head revision, or a newer one
    that still serves this DLM: expand-then-contract)."""
    try:
        current = await current_revision(state.engine)
        problem = await schema_problem(state.engine, current)
    except Exception:  # whatever the database's trouble, this process cannot serve
        log.warning("readiness check: database unreachable", exc_info=True)
        return Response({"status": "unavailable", "database": "unreachable"}, status_code=503)
    if problem is not None:
        return Response({"status": "unavailable", "schema": problem}, status_code=503)
    return Response({"status": "ok", "schema": current or head_revision()})


def _read_query_parameters(app: Litestar) -> None:
    app.state.query_parameters = query_parameters(app.openapi_schema)


def create_app(settings: Settings) -> Litestar:
    """Build the DLM application for an external database (``settings.database_url``)."""
    if settings.database_url is None:
        raise ValueError("create_app needs settings.database_url; `dlm serve` starts the embedded database")

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        engine = create_engine(settings.database_url, pool_size=settings.db_pool_size)
        read_engine = (
            create_engine(settings.database_read_url, pool_size=settings.db_pool_size)
            if settings.database_read_url
            else engine
        )
        try:
            await check_schema(engine)
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            app.state.engine = engine
            app.state.sessionmaker = create_sessionmaker(engine, info=info)
            app.state.read_sessionmaker = create_read_sessionmaker(read_engine, info=info)
            gate.sessionmaker = app.state.sessionmaker
            gate.open = await decide_open(settings, app.state.sessionmaker)
            workers = MigrationWorkers(app.state.sessionmaker, settings)
            app.state.migration_workers = workers
            lifecycle = EngineLoops(app.state.sessionmaker, settings, copies_queued=workers.wake)
            app.state.engine_loops = lifecycle
            workers.start()
            lifecycle.start()
            try:
                yield
            finally:
                await lifecycle.stop()
                await workers.stop()  # before the engine goes: a stopped copy hands its job back
        finally:
            await engine.dispose()
            await read_engine.dispose()

    gate = Gate(settings, openapi_path=OPENAPI_PATH)
    # Built now, so that a bad DLM_SECRET_KEY or seed file stops DLM before it serves anything.
    info = session_info(settings)
    return Litestar(
        route_handlers=[
            ingest_router,
            request_router,
            storage_router,
            migration_router,
            auth_router,
            ui_router,
            health_live,
            health_ready,
            metrics_route,
        ],
        lifespan=[lifespan],
        middleware=[ObservedRequests(settings.access_log), PageHeaders(OPENAPI_PATH), GateMiddleware(), QueryGuard()],
        on_startup=[_read_query_parameters],
        before_request=refuse_deep_json,
        dependencies={"principal": Provide(provide_principal, sync_to_thread=False)},
        # Loaded now so that a misnamed plugin stops DLM at startup, not at the first registration.
        state=State(
            {
                "settings": settings,
                "gate": gate,
                "confinement": info["confinement"],
                "extractors": load_extractors(settings.metadata_plugin_names),
            }
        ),
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(
            title="DLM",
            version=dlm.__version__,
            description="Data Lifecycle Manager: SKA-DLM's ingest, request, storage and migration managers "
            "in one service, plus DLM's additions.",
            path=OPENAPI_PATH,
            render_plugins=[OfflineSwagger(openapi_json=f"{OPENAPI_PATH}/openapi.json")],
            components=Components(
                security_schemes={
                    BEARER_SCHEME: SecurityScheme(
                        type="http",
                        scheme="bearer",
                        bearer_format="DLM API token (dlm_…) or a JWT from the identity provider",
                        description="See docs/security.md. Each operation names the role it needs (x-dlm-role).",
                    )
                }
            ),
        ),
        logging_config=None,
    )
