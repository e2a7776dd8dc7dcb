"""Typed settings for both services, read from the environment and validated at start-up.

pydantic-settings models, one flat set of variables per service: `ImageStoreSettings` and
`GatewaySettings` extend `CommonSettings` and the small groups holding cross-field rules. Every
problem is reported at once (`SettingsError.problems`, one line each, secrets never shown); field
descriptions in the models generate `.env.example` and docs/configuration.md
(`python -m services.settings_docs`).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping

from common.settings.base import SettingsError, load
from common.settings.gateway import FALLBACK_POLICIES, GatewaySettings, load_gateway_settings
from common.settings.shared import CommonSettings, DatabaseSettings, UploadSettings

__all__ = [
    "FALLBACK_POLICIES",
    "CommonSettings",
    "DatabaseSettings",
    "GatewaySettings",
    "SettingsError",
    "UploadSettings",
    "generate_secret",
    "load_database_settings",
    "load_gateway_settings",
]


def load_database_settings(environ: Mapping[str, str]) -> DatabaseSettings:
    return load(DatabaseSettings, environ)


def generate_secret(num_bytes: int = 32) -> str:
    """A URL-safe random secret, for `retina up` and tests (never used for production secrets)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(num_bytes)).decode().rstrip("=")
