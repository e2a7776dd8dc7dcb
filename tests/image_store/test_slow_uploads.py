"""Slow upload bodies over real sockets: 408 request_timeout, a closed connection, nothing kept.

Each client is a raw TCP socket that sends the request head at once and then trickles the body,
so the timing is the client's, not a library's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from services.image_store.settings import ImageStoreSettings
from tests.image_store.conftest import png, raw_multipart, row_counts, stored_files, temp_files
from tests.slow_client import RawReply, assert_timed_out, request_head, slow_post

# Short clocks so a test takes seconds; the defaults (30 s / 300 s) are checked in test_settings.
FAST = {"IMAGE_UPLOAD_IDLE_TIMEOUT_SECONDS": "1", "IMAGE_UPLOAD_DEADLINE_SECONDS": "3"}


async def slow_upload(
    port: int, body: bytes, content_type: str, *, send_first: int, interval: float | None, wait_for_close: float
) -> RawReply:
    return await slow_post(
        port,
        "/api/images",
        body,
        content_type,
        send_first=send_first,
        interval=interval,
        wait_for_close=wait_for_close,
    )


async def assert_nothing_kept(db: asyncpg.Connection, root: Path) -> None:
    assert await row_counts(db) == (0, 0), "no rows for a timed-out upload"
    assert stored_files(root) == [], "no published files"
    assert temp_files(root) == [], "no temp files"


@pytest.fixture
def start_store(
    settings_for: Callable[..., ImageStoreSettings], store_app: Any, aiohttp_server: Any
) -> Callable[..., Awaitable[TestServer]]:
    """`await start_store(IMAGE_X="...")`: a real server with those settings overridden."""

    async def start(**overrides: str) -> TestServer:
        server: TestServer = await aiohttp_server(store_app(settings_for(**overrides)))
        return server

    return start


async def test_a_silent_client_is_cut_by_the_idle_clock(
    start_store: Callable[..., Awaitable[TestServer]], db: asyncpg.Connection, storage_root: Path
) -> None:
    server = await start_store(IMAGE_UPLOAD_IDLE_TIMEOUT_SECONDS="1")
    body, content_type = raw_multipart(b"photo.png", png(64, 48))
    reply = await slow_upload(
        server.port, body, content_type, send_first=len(body) // 2, interval=None, wait_for_close=8
    )
    assert_timed_out(reply, "no upload data arrived for 1 s")
    assert 1.0 <= reply.closed_after < 3.0, f"idle clock of 1 s (deadline 300 s) fired after {reply.closed_after:.2f} s"
    await assert_nothing_kept(db, storage_root)


async def test_one_byte_per_second_gets_408(
    start_store: Callable[..., Awaitable[TestServer]], db: asyncpg.Connection, storage_root: Path
) -> None:
    """The issue's client: 1 byte/s against idle 1 s and deadline 3 s."""
    server = await start_store(**FAST)
    body, content_type = raw_multipart(b"photo.png", png(64, 48))
    reply = await slow_upload(server.port, body, content_type, send_first=100, interval=1.0, wait_for_close=8)
    assert_timed_out(reply, "")
    assert reply.closed_after < 5.0, reply.closed_after
    await assert_nothing_kept(db, storage_root)


async def test_a_trickle_that_never_idles_is_cut_by_the_deadline(
    start_store: Callable[..., Awaitable[TestServer]], db: asyncpg.Connection, storage_root: Path
) -> None:
    server = await start_store(**FAST)
    data = png(64, 48)
    # A raw body (not multipart) this time: the clocks cover both ways of uploading.
    reply = await slow_upload(server.port, data, "image/png", send_first=10, interval=0.2, wait_for_close=8)
    assert_timed_out(reply, "the upload did not complete within 3 s")
    assert 3.0 <= reply.closed_after < 5.0, reply.closed_after
    await assert_nothing_kept(db, storage_root)


async def test_a_hundred_and_one_slow_clients_all_get_their_408_and_are_closed(
    start_store: Callable[..., Awaitable[TestServer]], db: asyncpg.Connection, storage_root: Path
) -> None:
    """The issue's 101 clients, 4 bytes/s each: every one reads its 408 (none loses it to a reset
    because bytes were still in flight when the server hung up) and sees the connection end."""
    server = await start_store(**FAST, IMAGE_UPLOAD_RATE_PER_MINUTE="0")
    body, content_type = raw_multipart(b"photo.png", png(64, 48))
    started = time.monotonic()
    replies = await asyncio.gather(
        *(
            slow_post(server.port, "/api/images", body, content_type, send_first=50, interval=0.25, wait_for_close=10)
            for _ in range(101)
        )
    )
    elapsed = time.monotonic() - started
    for reply in replies:
        assert_timed_out(reply, "the upload did not complete within 3 s")
    assert elapsed < 8.0, f"101 slow clients took {elapsed:.1f} s to be cut"
    await assert_nothing_kept(db, storage_root)
    metrics = await _metrics(server)
    assert 'image_store_uploads_total{outcome="timeout"} 101.0' in metrics


async def test_a_prompt_upload_is_unaffected_by_the_clocks(
    start_store: Callable[..., Awaitable[TestServer]], db: asyncpg.Connection, storage_root: Path
) -> None:
    """The clocks must not cut a body that keeps coming: 2 s of steady bytes under a 1 s idle clock."""
    server = await start_store(IMAGE_UPLOAD_IDLE_TIMEOUT_SECONDS="1", IMAGE_UPLOAD_DEADLINE_SECONDS="30")
    data = png(64, 48)
    body, content_type = raw_multipart(b"photo.png", data)
    interval = 2.0 / len(body)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request_head(server.port, "/api/images", len(body), content_type))
    chunk = max(1, len(body) // 20)
    for offset in range(0, len(body), chunk):
        writer.write(body[offset : offset + chunk])
        await writer.drain()
        await asyncio.sleep(interval * chunk)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 201"), head
    assert await row_counts(db) == (1, 1)
    assert temp_files(storage_root) == []


async def _metrics(server: TestServer) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return raw.decode()
