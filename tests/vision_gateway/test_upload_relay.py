"""Uploads through the gateway: slow bodies get the store's clocks, the store's verdict is relayed.

Real image-store, real gateway, raw sockets for the slow clients. The store's clocks are short here
(1 s idle, 3 s overall) unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from cli.ollama_emulator import OllamaEmulator
from common.errors import UpstreamUnavailable
from services.image_store.http.handlers import IMAGE_SERVICE_KEY
from services.image_store.settings import load_image_store_settings
from services.vision_gateway.app import create_app as create_gateway
from services.vision_gateway.retry import Retryable, call_upstream, retry_after_seconds
from services.vision_gateway.settings import load_gateway_settings
from tests.conftest import auth_headers
from tests.fast_clock import FastClockLoop
from tests.image_store.conftest import photo, temp_files
from tests.image_store.s3_support import CREDENTIALS, REGION, Fault, FaultProxy, MotoServer
from tests.slow_client import assert_timed_out, multipart, request_head, slow_post
from tests.vision_gateway.conftest import Stack, big_photo, read_sse

SHORT_CLOCKS = {"IMAGE_UPLOAD_IDLE_TIMEOUT_SECONDS": "1", "IMAGE_UPLOAD_DEADLINE_SECONDS": "3"}
LONG_CLOCKS = {"IMAGE_UPLOAD_IDLE_TIMEOUT_SECONDS": "30", "IMAGE_UPLOAD_DEADLINE_SECONDS": "300"}


@pytest.fixture
def service_env(service_env: dict[str, str]) -> dict[str, str]:
    """Both services of the stack start with the short clocks; the store allows 1 upload a minute."""
    return {**service_env, **SHORT_CLOCKS, "IMAGE_UPLOAD_RATE_PER_MINUTE": "1"}


def chat_body(image: bytes) -> tuple[bytes, str]:
    return multipart(
        [
            ("message", b"What is in this picture?", None, None),
            ("model", b"llava", None, None),
            ("images", image, "photo.jpg", "image/jpeg"),
        ]
    )


def photo_of_size_mib(mib: float = 1.5) -> bytes:
    """A real photograph as a PNG of about `mib` MiB (the issue's 1.5 MiB upload)."""
    with Image.open(io.BytesIO(photo("astronaut.png"))) as source:
        image = source.convert("RGB").resize((1200, 1200), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    data = buffer.getvalue()
    assert abs(len(data) / 2**20 - mib) < 0.2, len(data)
    return data


async def assert_nothing_kept(db: asyncpg.Connection, stack: Stack) -> None:
    assert await db.fetchval("SELECT count(*) FROM images") == 0, "no image row"
    assert await db.fetchval("SELECT count(*) FROM messages") == 0, "no message row"
    assert temp_files(Path(stack.env["IMAGE_STORAGE_PATH"])) == [], "no temp file in the store"
    assert stack.emulator.chats == [], "nothing reached Ollama"


async def test_the_stores_408_reaches_the_client_not_a_503(stack: Stack, db: asyncpg.Connection) -> None:
    """The store's clocks are the shorter ones here: its verdict must come through unchanged."""
    gateway = await stack.make_gateway(**LONG_CLOCKS)
    body, content_type = chat_body(big_photo(300, 200))
    image_starts = body.index(b"\xff\xd8")  # JPEG start: trickle only the image's bytes
    reply = await slow_post(
        gateway.server.port,
        "/api/stream-message",
        body,
        content_type,
        send_first=image_starts + 100,
        # The gateway forwards a part in pieces of at least the boundary's length (aiohttp keeps
        # that much back to find the boundary), so 50 bytes/s reach the store every ~0.4 s:
        # never idle for 1 s, always past the 3 s deadline.
        interval=0.02,
        wait_for_close=10,
    )
    assert_timed_out(reply, "the upload did not complete within 3 s")
    assert 3.0 <= reply.closed_after < 6.0, reply.closed_after
    await assert_nothing_kept(db, stack)


async def test_a_client_that_stalls_before_its_image_gets_the_gateways_own_408(
    stack: Stack, db: asyncpg.Connection
) -> None:
    """Stalled in the `message` field: nothing has reached the store yet, the gateway's clock cuts it."""
    body, content_type = chat_body(big_photo(300, 200))
    reply = await slow_post(
        stack.gateway.server.port,
        "/api/stream-message",
        body,
        content_type,
        send_first=60,
        interval=None,
        wait_for_close=8,
    )
    assert_timed_out(reply, "no upload data arrived for 1 s")
    assert 1.0 <= reply.closed_after < 3.0, reply.closed_after
    await assert_nothing_kept(db, stack)


async def test_an_image_stalled_mid_way_is_cut_with_408(stack: Stack, db: asyncpg.Connection) -> None:
    """Both clocks are 1 s idle here; whichever fires, the client gets 408 and nothing is kept."""
    body, content_type = chat_body(big_photo(300, 200))
    reply = await slow_post(
        stack.gateway.server.port,
        "/api/stream-message",
        body,
        content_type,
        send_first=len(body) // 2,
        interval=None,
        wait_for_close=8,
    )
    assert_timed_out(reply, "no upload data arrived for 1 s")
    assert reply.closed_after < 4.0, reply.closed_after
    await assert_nothing_kept(db, stack)


async def test_the_stores_processing_time_does_not_count_against_the_client(
    stack: Stack, db: asyncpg.Connection
) -> None:
    """The whole body arrives at once; the store then takes longer than the gateway's idle clock
    to validate and re-encode a 9 MP PNG. That wait is the store's, not the client's: no 408."""
    gateway = await stack.make_gateway(IMAGE_UPLOAD_IDLE_TIMEOUT_SECONDS="0.3", IMAGE_UPLOAD_DEADLINE_SECONDS="2")
    with Image.open(io.BytesIO(photo("astronaut.png"))) as source:
        image = source.convert("RGB").resize((3000, 3000), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    started = time.monotonic()
    response = await post_chat_with_image(gateway, buffer.getvalue(), content_type="image/png")
    result = await read_sse(response)
    elapsed = time.monotonic() - started
    assert result.status == 200, result.events
    assert elapsed > 0.6, f"the store answered in {elapsed:.2f} s: too fast to prove anything"
    assert await db.fetchval("SELECT count(*) FROM images") == 1


async def test_the_model_lookup_before_the_first_image_does_not_count_against_the_client(
    stack: Stack, db: asyncpg.Connection
) -> None:
    """The form names its model before its image, so the gateway asks Ollama about the model before
    forwarding the image; Ollama takes longer than the idle clock to answer. That wait is the
    gateway's: no 408, and the image is stored."""
    stack.emulator.show_delay = 0.8
    gateway = await stack.make_gateway(
        IMAGE_UPLOAD_IDLE_TIMEOUT_SECONDS="0.3", IMAGE_UPLOAD_DEADLINE_SECONDS="2", VISION_CAPABILITY_TTL_SECONDS="0"
    )
    started = time.monotonic()
    result = await read_sse(await post_chat_with_image(gateway, photo("rocket.jpg")))
    elapsed = time.monotonic() - started
    assert result.status == 200, result.events
    assert elapsed > 0.8, f"answered in {elapsed:.2f} s: the lookup did not wait, so this proves nothing"
    assert await db.fetchval("SELECT count(*) FROM images") == 1


# The 66 s upload below runs on a clock 12x the wall clock: 5.5 s of real time, while the store's
# 30 s idle clock still needs a 2.5 s stall of the test's own event loop to fire.
CLOCK_SPEED = 12


@pytest.mark.slow
def test_a_legitimate_slow_upload_of_1_5_mib_over_66_seconds_is_stored(
    service_env: dict[str, str], store_app: Any, database_url: str
) -> None:
    """The issue's case: the gateway used to give up after a fixed 60 s with 503 upstream_unavailable.

    Default clocks (30 s idle, 300 s overall) on both services; the body arrives steadily in 64 KiB
    pieces over 66 s, so it never idles and ends well inside the deadline. The seconds are those of
    the event loop running the stack and the client (tests/fast_clock.py): every timeout involved,
    the old fixed 60 s included, is measured on that clock, so the test takes 66 s / CLOCK_SPEED.
    """
    env = {**service_env, **LONG_CLOCKS, "VISION_MAX_STREAMS_PER_USER": "0", "VISION_STREAM_RATE_PER_MINUTE": "0"}
    body, content_type = chat_body(photo_of_size_mib(1.5))

    async def scenario() -> tuple[bytes, float, int]:
        loop = asyncio.get_running_loop()
        async with (
            TestServer(OllamaEmulator().make_app()) as ollama,
            TestServer(store_app(load_image_store_settings(env))) as store,
        ):
            gateway_env = {
                **env,
                "OLLAMA_URL": str(ollama.make_url("")).rstrip("/"),
                "IMAGE_STORE_URL": str(store.make_url("")).rstrip("/"),
            }
            async with TestServer(create_gateway(load_gateway_settings(gateway_env))) as gateway:
                started = loop.time()
                reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
                writer.write(request_head(gateway.port, "/api/stream-message", len(body), content_type))
                piece = 64 * 1024
                pieces = range(0, len(body), piece)
                for offset in pieces:
                    writer.write(body[offset : offset + piece])
                    await writer.drain()
                    await asyncio.sleep(66 / len(pieces))
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 600)
                writer.close()
                elapsed = loop.time() - started
        conn = await asyncpg.connect(database_url)
        try:
            images = await conn.fetchval("SELECT count(*) FROM images")
        finally:
            await conn.close()
        return head, elapsed, images

    with asyncio.Runner(loop_factory=lambda: FastClockLoop(CLOCK_SPEED)) as runner:
        head, elapsed, images = runner.run(scenario())
    assert head.startswith(b"HTTP/1.1 200"), head
    assert elapsed > 62, f"the body was meant to outlast the old 60 s cut-off; it took {elapsed:.0f} s"
    assert images == 1


async def test_a_store_429_is_relayed_with_its_retry_after(stack: Stack, db: asyncpg.Connection) -> None:
    """The store allows one upload per minute (module settings): the second is the store's 429."""
    first = await read_sse(await post_chat_with_image(stack.gateway, big_photo(300, 200)))
    assert first.status == 200, first.events
    second = await post_chat_with_image(stack.gateway, big_photo(320, 200))
    assert second.status == 429, await second.text()
    error = (await second.json())["error"]
    assert error["code"] == "rate_limited", error
    assert "too many uploads" in error["message"], error
    retry_after = second.headers.get("Retry-After")
    assert retry_after is not None, "the store's Retry-After was dropped"
    assert 1 <= int(retry_after) <= 60, retry_after
    assert await db.fetchval("SELECT count(*) FROM images") == 1, "only the first upload was stored"
    assert await db.fetchval("SELECT count(*) FROM messages WHERE role = 'user'") == 1


async def post_chat_with_image(gateway: Any, image: bytes, content_type: str = "image/jpeg") -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field("message", "What is this?")
    form.add_field("model", "llava")
    form.add_field("images", io.BytesIO(image), filename="photo", content_type=content_type)
    return await gateway.post("/api/stream-message", data=form, headers=auth_headers())


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7), (" 120 ", 120), (None, None), ("Fri, 27 Nov 2026 13:00:00 GMT", None), ("²", None), ("9" * 40, None)],
)
def test_retry_after_is_kept_only_when_it_is_whole_seconds(header: str | None, expected: int | None) -> None:
    assert retry_after_seconds(header) == expected


async def test_a_503_that_outlasts_the_retries_keeps_the_last_retry_after() -> None:
    """GETs are retried; when the store stays 503 the gateway's 503 still says when to come back."""
    attempts = 0

    async def busy_store() -> None:
        nonlocal attempts
        attempts += 1
        raise Retryable("HTTP 503", retry_after=4)

    with pytest.raises(UpstreamUnavailable) as caught:
        await call_upstream(busy_store, retries=2, on_retry=lambda: None, unavailable="the image-store is unavailable")
    assert attempts == 3
    assert caught.value.retry_after == 4
    assert caught.value.status == 503


# ---- the store's 507 and 503 on a forwarded upload: same status, code, message and Retry-After ----


async def gateway_before_store(
    stack: Stack, aiohttp_server: Any, store_app: Any, **store_env: str
) -> tuple[TestClient, TestServer]:
    """A gateway and its own image-store, which runs with `store_env` on top of the stack's settings
    (and no upload rate limit); the gateway itself keeps the stack's settings."""
    settings = load_image_store_settings({**stack.env, "IMAGE_UPLOAD_RATE_PER_MINUTE": "0", **store_env})
    store = await aiohttp_server(store_app(settings))
    return await stack.make_gateway(IMAGE_STORE_URL=str(store.make_url("")).rstrip("/")), store


async def assert_relayed(
    response: aiohttp.ClientResponse, status: int, code: str, message: str, retry_after: str | None
) -> None:
    assert response.status == status, await response.text()
    assert await response.json() == {"error": {"code": code, "message": message}}
    assert response.headers.get("Retry-After") == retry_after


async def test_a_full_store_volume_reaches_the_client_as_507(
    stack: Stack, db: asyncpg.Connection, aiohttp_server: Any, store_app: Any, tiny_volume: Path
) -> None:
    """The store's volume is a real 256 KiB tmpfs: writing the photo fails with ENOSPC."""
    gateway, _ = await gateway_before_store(stack, aiohttp_server, store_app, IMAGE_STORAGE_PATH=str(tiny_volume))
    image = photo("astronaut.png")
    assert len(image) > 256 * 1024, "the photo must not fit on the volume"
    response = await post_chat_with_image(gateway, image, content_type="image/png")
    await assert_relayed(response, 507, "insufficient_storage", "the image volume is full", None)
    assert await db.fetchval("SELECT count(*) FROM images") == 0
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert temp_files(tiny_volume) == []
    assert stack.emulator.chats == []


async def test_a_busy_store_reaches_the_client_as_503_busy_with_retry_after(
    stack: Stack, db: asyncpg.Connection, aiohttp_server: Any, store_app: Any
) -> None:
    """The store's decode pool is at its limit: its decoded-bytes budget is held (as a running
    decode of a large image holds it), so the store waits 2 s for room and then refuses."""
    gateway, store = await gateway_before_store(stack, aiohttp_server, store_app, IMAGE_DECODE_BUDGET_MB="16")
    assert store.app is not None
    decoder = store.app[IMAGE_SERVICE_KEY].decoder
    async with decoder.budget.reserve(16 * 2**20 - 100, wait_seconds=0):
        response = await post_chat_with_image(gateway, big_photo(300, 200))
        await assert_relayed(response, 503, "busy", "the server is busy processing images; retry shortly", "2")
    assert await db.fetchval("SELECT count(*) FROM images") == 0
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert stack.emulator.chats == []


async def test_uploads_disabled_on_the_store_reach_the_client_as_503_upload_disabled(
    stack: Stack, db: asyncpg.Connection, aiohttp_server: Any, store_app: Any
) -> None:
    """IMAGE_UPLOAD_ENABLED=false on the store only: the gateway forwards, the store refuses."""
    gateway, _ = await gateway_before_store(stack, aiohttp_server, store_app, IMAGE_UPLOAD_ENABLED="false")
    response = await post_chat_with_image(gateway, big_photo(300, 200))
    await assert_relayed(response, 503, "upload_disabled", "image uploads are disabled on this server", None)
    # /v1 uploads its data: URL images to the store the same way; the refusal is in OpenAI's shape.
    data_url = "data:image/jpeg;base64," + base64.b64encode(big_photo(300, 200)).decode()
    content = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": data_url}}]
    body = {"model": "llava", "messages": [{"role": "user", "content": content}]}
    openai = await gateway.post("/v1/chat/completions", json=body, headers=auth_headers())
    assert openai.status == 503, await openai.text()
    assert (await openai.json())["error"] == {
        "message": "image uploads are disabled on this server",
        "type": "server_error",
        "param": None,
        "code": "upload_disabled",
    }
    assert await db.fetchval("SELECT count(*) FROM images") == 0
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert stack.emulator.chats == []


async def test_an_unavailable_object_store_reaches_the_client_as_503_storage_unavailable(
    stack: Stack,
    db: asyncpg.Connection,
    aiohttp_server: Any,
    store_app: Any,
    moto_server: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store keeps its images in S3 (moto), behind a proxy that answers every PUT with 503."""
    proxy = FaultProxy(moto_server.endpoint)
    await proxy.start()
    try:
        proxy.faults.append(Fault("PUT", status=503))
        for name, value in CREDENTIALS.items():
            monkeypatch.setenv(name, value)  # botocore's credential chain reads the process environment
        gateway, _ = await gateway_before_store(
            stack,
            aiohttp_server,
            store_app,
            IMAGE_STORAGE_BACKEND="s3",
            S3_ENDPOINT_URL=proxy.endpoint,
            S3_BUCKET=moto_server.new_bucket(),
            S3_REGION=REGION,
            **CREDENTIALS,
        )
        response = await post_chat_with_image(gateway, big_photo(300, 200))
        message = "the image storage is unavailable; retry shortly"
        await assert_relayed(response, 503, "storage_unavailable", message, "2")
        assert proxy.requests("PUT"), "the store tried to write the image"
    finally:
        await proxy.close()
    assert await db.fetchval("SELECT count(*) FROM images") == 0
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert stack.emulator.chats == []
