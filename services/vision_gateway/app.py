"""vision-gateway application factory."""

from __future__ import annotations

from aiohttp import web

from common.app import create_service_app
from common.settings import GatewaySettings

SERVICE_NAME = "vision_gateway"
GATEWAY_SETTINGS_KEY = web.AppKey("gateway_settings", GatewaySettings)


def create_app(settings: GatewaySettings) -> web.Application:
    app = create_service_app(service=SERVICE_NAME, settings=settings.common)
    app[GATEWAY_SETTINGS_KEY] = settings
    return app
