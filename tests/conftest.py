"""Shared fixtures: real PostgreSQL, per-test databases, settings for both services."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from pebble import ProcessPool

from common.logging import configure_logging
from services.image_store.app import create_app as create_store_app
from services.image_store.imaging.decode_pool import worker_processes
from services.image_store.settings import ImageStoreSettings, load_image_store_settings
from services.vision_gateway.settings import GatewaySettings, load_gateway_settings
from tests.image_store.s3_support import MotoServer
from tests.otlp_receiver import OTEL_VARIABLES, OtlpReceiver
from tests.pgbouncer import INSTALL_HINT, PgBouncer, find_pgbouncer
from tests.postgres import DatabaseFactory, embedded_server, server_gone, without_password

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "migrations"
SERVICE_TOKEN = "test-service-token-0123456789"
SIGNING_KEY = "test-signing-key-0123456789abcdef0123456789"
# The image-store's default IMAGE_DECODE_WORKERS; apps configured for another number start their own.
SHARED_DECODE_WORKERS = 2


@pytest.fixture(scope="session", autouse=True)
def json_logging() -> None:
    """Log as production does, so tests can assert on the JSON lines."""
    configure_logging("info", "json")


# ---- the suite's PostgreSQL server, and one clear line when it goes away mid-run -----------------

_SERVER = pytest.StashKey[tuple[str, str]]()  # (admin URL, where it came from)
_GONE = pytest.StashKey[str]()


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[str]:
    """A server URL with rights to create databases."""
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        pytestconfig.stash[_SERVER] = (configured, "TEST_DATABASE_URL")
        yield configured
        return
    with embedded_server(tmp_path_factory.mktemp("pg") / "data") as url:
        pytestconfig.stash[_SERVER] = (url, "the embedded server")
        yield url


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """After a failure, check that the suite's server still answers (one connect, only then); when
    it does not, stop the run after this test with one line naming it, instead of an error from
    every test that follows (shouldstop is what -x uses; pytest-xdist passes it on to the others)."""
    report = yield
    server = item.config.stash.get(_SERVER, None)
    if report.failed and server is not None and _GONE not in item.config.stash:
        url, origin = server
        reason = server_gone(url)
        if reason is not None:
            gone = f"the test PostgreSQL at {without_password(url)} ({origin}) is gone: {reason}"
            item.config.stash[_GONE] = gone
            item.session.shouldstop = gone
    return report


@pytest.fixture(scope="session")
def database_factory(postgres_admin_url: str, pytestconfig: pytest.Config) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(postgres_admin_url, MIGRATIONS)
    factory.prepare_template()
    yield factory
    if _GONE not in pytestconfig.stash:  # nothing left to drop on a server that is gone
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


@pytest.fixture(scope="session")
def decode_processes() -> Iterator[ProcessPool]:
    """One set of image-store decode workers per test process, for every app a test builds with
    `create_app(settings, decode_processes=...)`: spawning two per app cost ~0.7 s of each of ~400
    tests. Each app still admits decodes by its own settings; only the processes are shared.
    Tests that watch, kill or limit workers start a DecodePool of their own."""
    processes = worker_processes(SHARED_DECODE_WORKERS)
    yield processes
    processes.stop()
    processes.join(30)


@pytest.fixture
def store_app(decode_processes: ProcessPool) -> Callable[[ImageStoreSettings], web.Application]:
    """The image-store's create_app on the test process's shared decode workers (see `decode_processes`)."""

    def build(settings: ImageStoreSettings) -> web.Application:
        shared = settings.decode_workers == SHARED_DECODE_WORKERS
        return create_store_app(settings, decode_processes=decode_processes if shared else None)

    return build


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


# ---- PgBouncer in transaction mode in front of the suite's server -------------------------------
# A test marked `pgbouncer` runs twice: with the services straight on PostgreSQL ("direct") and with
# DATABASE_URL through a real PgBouncer in pool_mode=transaction ("pgbouncer"; DATABASE_POOLER=
# transaction, DATABASE_DIRECT_URL the server). Whatever a test does with `database_url` or `db`
# itself still goes straight to the server.

ROUTES = ("direct", "pgbouncer")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("pgbouncer") and "database_route" in metafunc.fixturenames:
        metafunc.parametrize("database_route", ROUTES, indirect=True)


@pytest.fixture(scope="session")
def pgbouncer(postgres_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgBouncer]:
    """One PgBouncer per test process; without the package the test skips (fails in CI, which installs it)."""
    binary = find_pgbouncer()
    if binary is None:
        reason = f"pgbouncer is not installed: {INSTALL_HINT}"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{reason} (.ci/run installs it, so in CI this is a failure)")
        pytest.skip(reason)
    bouncer = PgBouncer(binary, postgres_admin_url, tmp_path_factory.mktemp("pgbouncer"))
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
def database_route(request: pytest.FixtureRequest) -> str:
    """How the services reach PostgreSQL: "direct" unless the test is marked `pgbouncer`."""
    return str(getattr(request, "param", "direct"))


def route_env(route: str, database_url: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The database variables of a service on `route` to `database_url`."""
    if route == "direct":
        return {"DATABASE_URL": database_url}
    bouncer: PgBouncer = request.getfixturevalue("pgbouncer")
    return {
        "DATABASE_URL": bouncer.pooled(database_url),
        "DATABASE_POOLER": "transaction",
        "DATABASE_DIRECT_URL": database_url,
    }


@pytest.fixture
def service_env(
    database_url: str, tmp_path: Path, database_route: str, request: pytest.FixtureRequest
) -> dict[str, str]:
    return {**base_env(database_url, tmp_path / "images"), **route_env(database_route, database_url, request)}


@pytest.fixture
def store_settings(service_env: dict[str, str]) -> ImageStoreSettings:
    return load_image_store_settings(service_env)


@pytest.fixture
def gateway_settings(service_env: dict[str, str]) -> GatewaySettings:
    return load_gateway_settings(service_env)


@pytest.fixture
def tiny_volume(tmp_path: Path) -> Iterator[Path]:
    """A real 256 KiB tmpfs: writes past it fail with ENOSPC, as on a full disk (needs root)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def auth_headers(user_id: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {SERVICE_TOKEN}", "X-User-Id": user_id}


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto S3 server for the session; every test gets its own bucket."""
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---- tracing: a real OTLP/HTTP receiver the services export to (tests/otlp_receiver.py) ----


@pytest.fixture
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def otlp_receiver(no_otel_env: None, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> OtlpReceiver:
    """A receiver, and the environment that points the services at it: request it before the apps."""
    collector = OtlpReceiver()
    server = await aiohttp_server(collector.make_app())
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", str(server.make_url("")).rstrip("/"))
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # milliseconds: spans arrive while the test waits
    return collector
