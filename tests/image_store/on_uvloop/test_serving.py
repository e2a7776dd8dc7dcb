"""Image bytes on uvloop (conftest.py here): its loop has no sendfile(), so what the socket does
not take at once leaves through ImageBytesResponse's own read-and-write fallback."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop
from aiohttp.test_utils import TestClient
from PIL import Image

from services.image_store.http.serving import ImageBytesResponse
from tests.conftest import auth_headers
from tests.image_store.conftest import photo, upload
from tests.image_store.short_file import assert_a_short_file_cuts_the_connection


def noise_png(side: int) -> bytes:
    """Random pixels: PNG cannot shrink them, so the stored file stays about side² × 3 bytes."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG", compress_level=0)
    return buffer.getvalue()


async def test_runs_on_uvloop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


async def test_large_image_whole_and_ranged(
    client_for: Callable[..., Awaitable[TestClient]], monkeypatch: pytest.MonkeyPatch
) -> None:
    rests: list[int] = []
    original = ImageBytesResponse._send_rest

    async def spy(self: ImageBytesResponse, transport: asyncio.Transport, offset: int, count: int) -> None:
        rests.append(count)
        await original(self, transport, offset, count)

    monkeypatch.setattr(ImageBytesResponse, "_send_rest", spy)
    store_client = await client_for(IMAGE_MAX_SIZE_MB="16")
    created = await upload(store_client, noise_png(1800), filename="noise.png")
    assert created.status == 201, await created.text()
    stored: dict[str, Any] = await created.json()
    assert stored["size_bytes"] > 8 * 2**20

    response = await store_client.get(f"/api/images/{stored['id']}", headers=auth_headers())
    data = await response.read()
    assert response.status == 200
    assert len(data) == stored["size_bytes"]
    assert hashlib.sha256(data).hexdigest() == stored["sha256"]
    assert rests, "the socket took 8 MiB at once: the fallback was not exercised"

    start = stored["size_bytes"] // 3
    ranged = await store_client.get(
        f"/api/images/{stored['id']}", headers={**auth_headers(), "Range": f"bytes={start}-{start + 5 * 2**20 - 1}"}
    )
    assert ranged.status == 206
    assert await ranged.read() == data[start : start + 5 * 2**20]
    assert ranged.headers["Content-Range"] == f"bytes {start}-{start + 5 * 2**20 - 1}/{stored['size_bytes']}"


async def test_small_image_headers_and_bytes(store_client: TestClient) -> None:
    created = await upload(store_client, photo("coffee.png"), filename="coffee.png")
    stored: dict[str, Any] = await created.json()
    response = await store_client.get(f"/api/images/{stored['id']}", headers=auth_headers())
    assert response.status == 200
    assert hashlib.sha256(await response.read()).hexdigest() == stored["sha256"]
    assert response.headers["ETag"] == f'"{stored["sha256"]}"'
    assert response.headers["Cache-Control"] == "private, max-age=86400, immutable"
    assert int(response.headers["Content-Length"]) == stored["size_bytes"]
    not_modified = await store_client.get(
        f"/api/images/{stored['id']}", headers={**auth_headers(), "If-None-Match": response.headers["ETag"]}
    )
    assert not_modified.status == 304
    assert await not_modified.read() == b""


async def test_a_file_shorter_than_announced_cuts_the_connection(
    store_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await assert_a_short_file_cuts_the_connection(store_client, monkeypatch)
