"""The settings machinery both services use, and the settings they share.

pydantic-settings models read from one environment mapping (`load`), every problem reported at once
(`SettingsError.problems`, one line each, secrets never shown). `CommonSettings` and the upload
groups live here; each service's own model extends them beside its service
(services/image_store/settings.py, services/vision_gateway/settings.py). Field descriptions in the
models generate `.env.example` and docs/configuration.md (`python -m cli.settings_docs`).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping

from common.settings.base import SettingsError, load
from common.settings.shared import CommonSettings, DatabaseSettings, UploadSettings

__all__ = [
    "CommonSettings",
    "DatabaseSettings",
    "SettingsError",
    "UploadSettings",
    "generate_secret",
    "load_database_settings",
]


def load_database_settings(environ: Mapping[str, str]) -> DatabaseSettings:
    return load(DatabaseSettings, environ)


def generate_secret(num_bytes: int = 32) -> str:
    """A URL-safe random secret, for `retina up` and tests (never used for production secrets)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(num_bytes)).decode().rstrip("=")
