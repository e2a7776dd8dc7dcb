"""Fixtures for the image-store: a running app on a real database and a real storage directory."""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient
from PIL import Image

from services.image_store.settings import ImageStoreSettings, load_image_store_settings
from tests.conftest import auth_headers
from tests.image_store.s3_support import CREDENTIALS, REGION, BlobView, MotoServer

SKIMAGE_DATA = Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data"


def photo(name: str) -> bytes:
    """A real photograph shipped with scikit-image (astronaut.png, chelsea.png, rocket.jpg, ...)."""
    return (SKIMAGE_DATA / name).read_bytes()


def png(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def form(data: bytes, filename: str = "photo.png", content_type: str = "image/png", **fields: str) -> FormData:
    body = FormData(quote_fields=False)  # send UTF-8 names raw, as browsers do
    for name, value in fields.items():
        body.add_field(name, value)
    body.add_field("file", io.BytesIO(data), filename=filename, content_type=content_type)
    return body


def raw_multipart(filename: bytes, data: bytes, boundary: str = "retina-test-boundary") -> tuple[bytes, str]:
    """A multipart body built by hand, for names no well-behaved client library would send."""
    body = (
        f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="file"; filename="'
        + filename.replace(b"\\", b"\\\\")
        + b'"\r\nContent-Type: image/png\r\n\r\n'
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.fixture
def store_env(service_env: dict[str, str], s3_env: dict[str, str]) -> dict[str, str]:
    """Override per test with monkeypatching the dict before `store_client` is built."""
    return {**service_env, "IMAGE_MAX_SIZE_MB": "2", "IMAGE_DECODE_WORKERS": "2", **s3_env}


@pytest.fixture
def settings_for(store_env: dict[str, str]) -> Callable[..., ImageStoreSettings]:
    def build(**overrides: str) -> ImageStoreSettings:
        return load_image_store_settings({**store_env, **overrides})

    return build


@pytest.fixture
def client_for(
    settings_for: Callable[..., ImageStoreSettings],
    store_app: Callable[[ImageStoreSettings], web.Application],
    aiohttp_client: Any,
) -> Callable[..., Awaitable[TestClient]]:
    """`await client_for(IMAGE_X="...")`: a client of an app with those settings overridden."""

    async def build(**overrides: str) -> TestClient:
        client: TestClient = await aiohttp_client(store_app(settings_for(**overrides)))
        return client

    return build


@pytest.fixture
async def store_client(
    settings_for: Callable[..., ImageStoreSettings],
    store_app: Callable[[ImageStoreSettings], web.Application],
    aiohttp_client: Any,
) -> TestClient:
    """Requested after the settings so the app (and its pool) closes before its database is dropped."""
    return await aiohttp_client(store_app(settings_for()))


@pytest.fixture
def storage_root(store_env: dict[str, str]) -> Path:
    return Path(store_env["IMAGE_STORAGE_PATH"])


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and ".tmp" not in p.parts)


def temp_files(root: Path) -> list[Path]:
    tmp = root / ".tmp"
    return sorted(tmp.iterdir()) if tmp.exists() else []


async def row_counts(db: asyncpg.Connection) -> tuple[int, int]:
    images = await db.fetchval("SELECT count(*) FROM images")
    blobs = await db.fetchval("SELECT count(*) FROM image_blobs")
    return images, blobs


async def upload(client: TestClient, data: bytes, user: str = "alice", **kwargs: Any) -> Any:
    return await client.post("/api/images", data=form(data, **kwargs), headers=auth_headers(user))


async def make_message(db: asyncpg.Connection, owner: str) -> str:
    conversation = await db.fetchval("INSERT INTO conversations (owner_id) VALUES ($1) RETURNING id", owner)
    message = await db.fetchval(
        "INSERT INTO messages (conversation_id, role, content) VALUES ($1, 'user', 'hi') RETURNING id",
        conversation,
    )
    return str(message)


# ---- storage backends ----------------------------------------------------------------------
# A test module that should hold on both backends says `STORAGE_BACKENDS = BACKENDS`: each of its
# tests that (through store_env) reaches storage then runs once per backend; other modules, and
# pure functions, run once on the filesystem backend. A single test can also parametrize
# "storage_backend" itself (indirect=True). A test there marked `storage_untouched` is refused
# before any blob is published or read (both backends receive uploads into local scratch files and
# publish only after validation), so the filesystem backend stands for both.

BACKENDS = ["filesystem", "s3"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    backends = getattr(metafunc.module, "STORAGE_BACKENDS", None)
    if backends and "storage_backend" in metafunc.fixturenames:
        if metafunc.definition.get_closest_marker("storage_untouched"):
            return
        metafunc.parametrize("storage_backend", backends, indirect=True)


@pytest.fixture
def storage_backend(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "filesystem")


@pytest.fixture
def s3_env(storage_backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The S3_* settings of a fresh bucket (empty for the filesystem backend)."""
    if storage_backend != "s3":
        return {}
    server: MotoServer = request.getfixturevalue("moto_server")
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)  # botocore's credential chain reads the process environment
    return {
        **CREDENTIALS,
        "IMAGE_STORAGE_BACKEND": "s3",
        "S3_ENDPOINT_URL": server.endpoint,
        "S3_BUCKET": server.new_bucket(),
        "S3_REGION": REGION,
        "S3_PREFIX": "retina/images",
        # Objects' LastModified cannot be backdated, so orphan tests wait this long instead.
        "IMAGE_ORPHAN_GRACE_SECONDS": "6",
    }


@pytest.fixture
def blobs(store_env: dict[str, str], storage_backend: str, request: pytest.FixtureRequest) -> BlobView:
    root = Path(store_env["IMAGE_STORAGE_PATH"])
    if storage_backend == "filesystem":
        return BlobView("filesystem", root)
    server: MotoServer = request.getfixturevalue("moto_server")
    return BlobView("s3", root, s3=server.client(), bucket=store_env["S3_BUCKET"], prefix="retina/images/")
