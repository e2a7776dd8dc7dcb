"""image-store application factory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

from aiohttp import web
from pebble import ProcessPool

from common.app import POOL_KEY, REGISTRY_KEY, create_service_app
from common.content_disposition import ignore_aiohttp_disposition_warnings
from common.health import READINESS_KEY
from common.http.cors import enable_cors
from common.periodic import run_periodically
from common.pg_listen import listening
from common.signing import UrlSigner
from services.image_store.http.handlers import (
    IMAGE_SERVICE_KEY,
    MULTIPART_OVERHEAD,
    add_routes,
    count_served,
)
from services.image_store.imaging.decode_pool import DecodePool
from services.image_store.maintenance.jobs import (
    MaintenanceService,
    live_temp_file_max_idle_seconds,
    remove_stale_temp_files,
)
from services.image_store.metrics import ImageStoreMetrics
from services.image_store.repository import ImageRepository
from services.image_store.row_cache import IMAGE_CHANGE_CHANNEL, ImageRowCache
from services.image_store.service import ImageService
from services.image_store.settings import ImageStoreSettings
from services.image_store.storage.open import open_blob_store

SERVICE_NAME = "image_store"
# What a page on an allowed origin may send when it reads image bytes (signed URLs need no
# Authorization header, so it is not offered), and what it may read back.
CORS_REQUEST_HEADERS = ("Range", "If-None-Match", "If-Match", "If-Range", "If-Modified-Since", "X-Request-ID")
CORS_EXPOSED_HEADERS = (
    "ETag",
    "Content-Range",
    "Content-Length",
    "Content-Disposition",
    "Accept-Ranges",
    "X-Request-ID",
)
IMAGE_STORE_SETTINGS_KEY = web.AppKey("image_store_settings", ImageStoreSettings)
MAINTENANCE_KEY = web.AppKey("maintenance", MaintenanceService)
DECODE_PROCESSES_KEY = web.AppKey("decode_processes", ProcessPool)


def create_app(settings: ImageStoreSettings, *, decode_processes: ProcessPool | None = None) -> web.Application:
    """`decode_processes` (decode_pool.worker_processes) are decode workers the caller owns and shares
    (the tests start one set per process); without them the app starts and stops its own."""
    app = create_service_app(
        service=SERVICE_NAME,
        settings=settings.common,
        client_max_size=settings.max_size_bytes + MULTIPART_OVERHEAD,
    )
    ignore_aiohttp_disposition_warnings()
    app[IMAGE_STORE_SETTINGS_KEY] = settings
    if decode_processes is not None:
        app[DECODE_PROCESSES_KEY] = decode_processes
    app.cleanup_ctx.append(_image_service)
    app.on_response_prepare.append(count_served)
    add_routes(app, settings.serve_endpoint)
    enable_cors(
        app,
        settings.cors_allowed_origins,
        [app.router["image_bytes"]],
        allow_methods=("GET", "HEAD"),
        allow_headers=CORS_REQUEST_HEADERS,
        expose_headers=CORS_EXPOSED_HEADERS,
    )

    async def storage_ready() -> None:
        if not settings.storage_path.is_dir():
            raise RuntimeError(f"{settings.storage_path} is missing")
        if IMAGE_SERVICE_KEY in app:
            await app[IMAGE_SERVICE_KEY].storage.check_ready()

    app[READINESS_KEY].add("storage", storage_ready)
    return app


async def _image_service(app: web.Application) -> AsyncIterator[None]:
    """Runs after the database pool exists (cleanup contexts start in order)."""
    settings = app[IMAGE_STORE_SETTINGS_KEY]
    metrics = ImageStoreMetrics(app[REGISTRY_KEY])
    async with open_blob_store(settings, timer=metrics.storage_timer) as storage:
        await remove_stale_temp_files(storage, live_temp_file_max_idle_seconds(settings))
        decoder = DecodePool(
            workers=settings.decode_workers,
            timeout_seconds=settings.decode_timeout_seconds,
            max_pending=settings.max_pending_decodes,
            budget_bytes=settings.decode_budget_bytes,
            processes=app.get(DECODE_PROCESSES_KEY),
        )
        await decoder.start()
        metrics.decode_budget_used.set_function(lambda: decoder.budget_used_bytes)
        metrics.decode_budget_limit.set(settings.decode_budget_bytes)
        row_cache = ImageRowCache(settings.row_cache_entries, settings.row_cache_ttl_seconds)
        service = ImageService(
            settings,
            ImageRepository(app[POOL_KEY], direct_url=settings.separate_direct_url),
            storage,
            decoder,
            UrlSigner(settings.signing_keys.get_secret_value(), settings.signed_url_ttl_seconds),
            metrics,
            row_cache,
        )
        app[IMAGE_SERVICE_KEY] = service
        maintenance = MaintenanceService(service)
        app[MAINTENANCE_KEY] = maintenance
        try:
            async with (
                _row_cache_listener(settings, row_cache),
                run_periodically(
                    maintenance.run_once, interval=settings.maintenance_interval_seconds, name="image-store-maintenance"
                ),
            ):
                yield
        finally:
            await service.close()
            await decoder.close()


def _row_cache_listener(settings: ImageStoreSettings, row_cache: ImageRowCache) -> AbstractAsyncContextManager[object]:
    """The cache is only trusted while change notifications can reach it; none kept, none needed."""
    if settings.row_cache_entries == 0:
        return contextlib.nullcontext()
    return listening(settings.common.direct_url, IMAGE_CHANGE_CHANNEL, row_cache.on_notify, row_cache.set_listening)
