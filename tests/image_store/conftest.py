"""Fixtures for the image-store: a running app on a real database and a real storage directory."""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient
from PIL import Image

from common.settings import ImageStoreSettings, load_image_store_settings
from services.image_store.app import create_app
from tests.conftest import auth_headers

SKIMAGE_DATA = Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data"  # type: ignore[index, union-attr]


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
def store_env(service_env: dict[str, str]) -> dict[str, str]:
    """Override per test with monkeypatching the dict before `store_client` is built."""
    return {**service_env, "IMAGE_MAX_SIZE_MB": "2", "IMAGE_DECODE_WORKERS": "2"}


@pytest.fixture
def settings_for(store_env: dict[str, str]) -> Callable[..., ImageStoreSettings]:
    def build(**overrides: str) -> ImageStoreSettings:
        return load_image_store_settings({**store_env, **overrides})

    return build


@pytest.fixture
async def store_client(settings_for: Callable[..., ImageStoreSettings], aiohttp_client: Any) -> TestClient:
    """Requested after the settings so the app (and its pool) closes before its database is dropped."""
    return await aiohttp_client(create_app(settings_for()))


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
