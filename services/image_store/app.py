"""image-store application factory."""

from __future__ import annotations

from aiohttp import web

from common.app import create_service_app
from common.health import READINESS_KEY
from common.settings import ImageStoreSettings

SERVICE_NAME = "image_store"
IMAGE_STORE_SETTINGS_KEY = web.AppKey("image_store_settings", ImageStoreSettings)


def create_app(settings: ImageStoreSettings) -> web.Application:
    app = create_service_app(service=SERVICE_NAME, settings=settings.common)
    app[IMAGE_STORE_SETTINGS_KEY] = settings

    async def storage_writable() -> None:
        if not settings.storage_path.is_dir():
            raise RuntimeError(f"{settings.storage_path} is missing")

    app[READINESS_KEY].add("storage", storage_writable)
    return app
