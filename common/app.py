"""The application skeleton both services build on.

`create_service_app` wires what every service has (request IDs, JSON errors, HTTP metrics,
health, `/metrics`, the database pool); each service then adds its own routes and resources.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry

from common.auth import ServiceAuth
from common.db import open_pool, pending_migrations
from common.health import READINESS_KEY, Readiness, livez, mark_shutting_down, readyz
from common.http.error_middleware import error_middleware, remember_started_response
from common.http.request_context import (
    SERVICE_NAME_KEY,
    add_request_id_header,
    request_context_middleware,
)
from common.metrics import HttpMetrics, build_info, metrics_handler, new_registry
from common.settings import CommonSettings
from common.tracing.db import trace_queries
from common.tracing.http import tracing_middleware
from common.tracing.setup import Tracing, tracing_from_env

SETTINGS_KEY = web.AppKey("common_settings", CommonSettings)
REGISTRY_KEY = web.AppKey("metrics_registry", CollectorRegistry)
POOL_KEY = web.AppKey("db_pool", asyncpg.Pool)
AUTH_KEY = web.AppKey("service_auth", ServiceAuth)
# Present only when the OTEL_* variables turn tracing on (common/tracing).
TRACING_KEY = web.AppKey("tracing", Tracing)


def package_version() -> str:
    try:
        return version("retina")
    except PackageNotFoundError:
        return "0.0.0+unknown"


def create_service_app(*, service: str, settings: CommonSettings, client_max_size: int = 1024**2) -> web.Application:
    registry = new_registry()
    build_info(registry, service, package_version())
    http_metrics = HttpMetrics(registry)
    tracing = tracing_from_env(service)
    app = web.Application(
        # Metrics wrap the error middleware so they count the status the client actually got; the
        # request's span (when tracing) wraps everything, so every log line of the request is in it.
        middlewares=[
            *([tracing_middleware(tracing)] if tracing else []),
            request_context_middleware,
            http_metrics.middleware(),
            error_middleware,
        ],
        client_max_size=client_max_size,
    )
    if tracing is not None:
        app[TRACING_KEY] = tracing
        app.cleanup_ctx.append(tracing.running)
    app[SERVICE_NAME_KEY] = service
    app[SETTINGS_KEY] = settings
    app[REGISTRY_KEY] = registry
    app[AUTH_KEY] = ServiceAuth(settings.service_tokens.get_secret_value())
    app[READINESS_KEY] = Readiness()
    app.on_response_prepare.append(add_request_id_header)
    app.on_response_prepare.append(remember_started_response)
    app.on_shutdown.append(mark_shutting_down)
    app.router.add_get("/livez", livez, allow_head=True)
    app.router.add_get("/readyz", readyz, allow_head=True)
    app.router.add_get("/metrics", metrics_handler(registry))
    app.cleanup_ctx.append(_database_pool)
    return app


async def _database_pool(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    async with open_pool(
        settings.database_url.get_secret_value(),
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        transaction_pooler=settings.transaction_pooler,
        on_connect=trace_queries if TRACING_KEY in app else None,
    ) as pool:
        app[POOL_KEY] = pool
        readiness = app[READINESS_KEY]
        readiness.add("database", lambda: _check_database(pool))
        readiness.add("schema", lambda: _check_schema(pool, settings))
        yield


async def _check_database(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.fetchval("SELECT 1")


async def _check_schema(pool: asyncpg.Pool, settings: CommonSettings) -> None:
    async with pool.acquire() as conn:
        pending = await pending_migrations(conn, settings.migrations_path)
    if pending:
        raise RuntimeError(f"{len(pending)} migration(s) not applied: run `retina migrate`")
