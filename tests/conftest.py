"""Shared fixtures: real PostgreSQL, per-test databases, settings for both services."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from common.logging import configure_logging
from common.settings import (
    GatewaySettings,
    ImageStoreSettings,
    load_gateway_settings,
    load_image_store_settings,
)
from tests.postgres import DatabaseFactory, embedded_server

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "migrations"
SERVICE_TOKEN = "test-service-token-0123456789"
SIGNING_KEY = "test-signing-key-0123456789abcdef0123456789"


@pytest.fixture(scope="session", autouse=True)
def json_logging() -> None:
    """Log as production does, so tests can assert on the JSON lines."""
    configure_logging("info", "json")


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server URL with rights to create databases."""
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    with embedded_server(tmp_path_factory.mktemp("pg") / "data") as url:
        yield url


@pytest.fixture(scope="session")
def database_factory(postgres_admin_url: str) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(postgres_admin_url, MIGRATIONS)
    factory.prepare_template()
    yield factory
    factory.drop_all()


@pytest.fixture
def database_url(database_factory: DatabaseFactory) -> Iterator[str]:
    """A fresh database at the newest migration, dropped after the test."""
    url = database_factory.create()
    yield url
    database_factory.drop(url)


@pytest.fixture
def empty_database_url(database_factory: DatabaseFactory) -> Iterator[str]:
    """A fresh database with no migrations applied."""
    url = database_factory.create(migrated=False)
    yield url
    database_factory.drop(url)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


def base_env(database_url: str, storage: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "SERVICE_TOKENS": SERVICE_TOKEN,
        "IMAGE_SIGNING_KEYS": SIGNING_KEY,
        "IMAGE_STORAGE_PATH": str(storage),
        "LOG_FORMAT": "json",
        "SHUTDOWN_TIMEOUT_SECONDS": "2",
        "IMAGE_MAINTENANCE_INTERVAL_SECONDS": "0",
    }


@pytest.fixture
def service_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return base_env(database_url, tmp_path / "images")


@pytest.fixture
def store_settings(service_env: dict[str, str]) -> ImageStoreSettings:
    return load_image_store_settings(service_env)


@pytest.fixture
def gateway_settings(service_env: dict[str, str]) -> GatewaySettings:
    return load_gateway_settings(service_env)


def auth_headers(user_id: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {SERVICE_TOKEN}", "X-User-Id": user_id}
