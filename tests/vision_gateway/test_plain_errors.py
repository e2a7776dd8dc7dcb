"""Internal exception text never reaches a client (issue 18 item 5).

Each test breaks an upstream for real: the Ollama emulator process is killed mid-answer, the
emulator cuts its TCP connection mid-body, a server resets every connection (RST), the image-store
is stopped. Whatever the client gets (a JSON error, an SSE `error` event, a /v1 error body or
stream line) and what the history keeps (`messages.error`) is one plain sentence with the right
code; the failure itself (exception class and text) is in the log line of that request, under its
request ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import struct
import subprocess
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.conftest import auth_headers
from tests.plain_errors import EXCEPTION_NAME, assert_plain, logged
from tests.vision_gateway.conftest import Stack, big_photo, read_events_until, read_sse

pytestmark = pytest.mark.usefixtures("warnings_logged")


@pytest.fixture
def warnings_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING")


class ResettingServer:
    """Accepts each connection, waits for the request to start arriving, then resets it (RST):
    the client's read fails with ECONNRESET, `[Errno 104] Connection reset by peer`."""

    def __init__(self) -> None:
        self.connections = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _reset(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError):
            await reader.read(1)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def __aenter__(self) -> ResettingServer:
        self._server = await asyncio.start_server(self._reset, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def resetting() -> AsyncIterator[ResettingServer]:
    async with ResettingServer() as server:
        yield server


def request_headers(request_id: str) -> dict[str, str]:
    return {**auth_headers(), "X-Request-ID": request_id}


async def stored_error(db: asyncpg.Connection) -> str:
    rows = await db.fetch("SELECT status, error FROM messages WHERE role = 'assistant'")
    assert [row["status"] for row in rows] == ["error"], rows
    error: str = rows[0]["error"]
    return error


def assert_logged(caplog: pytest.LogCaptureFixture, event: str, request_id: str, code: str, *detail: str) -> None:
    """One `event` line of this request names the code and, in `detail`, the exception behind it."""
    lines = [line for line in logged(caplog, event) if line.get("request_id") == request_id]
    assert len(lines) == 1, logged(caplog, event)
    [line] = lines
    assert line["code"] == code, line
    assert EXCEPTION_NAME.search(line["detail"]), line
    for part in detail:
        assert part in line["detail"], line


# ---- after the stream began: the SSE `error` event, the /v1 stream line, the stored message --------


async def test_ollama_killed_mid_answer(
    stack: Stack,
    db: asyncpg.Connection,
    emulator_process: tuple[subprocess.Popen[bytes], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    process, url = emulator_process
    gateway = await stack.make_gateway(OLLAMA_URL=url, UPSTREAM_RETRIES="0")
    body = {"message": "describe it at length", "model": "llava"}
    response = await gateway.post("/api/stream-message", json=body, headers=request_headers("req-killed"))
    assert response.status == 200
    await read_events_until(response, chunks=3)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    final = (await read_sse(response)).events[-1]
    assert (final["type"], final["code"]) == ("error", "upstream_error"), final
    assert_plain(final["message"])
    assert "Ollama" in final["message"]
    assert await stored_error(db) == final["message"]
    assert_logged(caplog, "stream_failed", "req-killed", "upstream_error")


async def test_connection_cut_mid_body(stack: Stack, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture) -> None:
    """The emulator aborts its socket mid-body: aiohttp's ClientPayloadError (TransferEncodingError)."""
    stack.emulator.drop_after_chunks = 3
    body = {"message": "hi", "model": "llava"}
    response = await stack.gateway.post("/api/stream-message", json=body, headers=request_headers("r-cut"))
    result = await read_sse(response)
    [error] = result.of("error")
    assert error["code"] == "upstream_error"
    assert error["message"] == "the connection to Ollama broke"
    assert await stored_error(db) == error["message"]
    assert_logged(caplog, "stream_failed", "r-cut", "upstream_error", "ClientPayloadError")


async def test_connection_cut_mid_body_on_v1(
    stack: Stack, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    stack.emulator.drop_after_chunks = 3
    body = {"model": "llava", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    response = await stack.gateway.post("/v1/chat/completions", json=body, headers=request_headers("v1-stream"))
    assert response.status == 200
    lines = [line for line in (await response.read()).decode().split("\n\n") if line.startswith("data: {")]
    error = json.loads(lines[-1][len("data: ") :])["error"]
    assert (error["code"], error["type"]) == ("upstream_error", "server_error"), error
    assert_plain(error["message"])
    assert await stored_error(db) == error["message"]
    assert_logged(caplog, "stream_failed", "v1-stream", "upstream_error", "ClientPayloadError")

    await db.execute("DELETE FROM conversations")
    whole = await stack.gateway.post(
        "/v1/chat/completions", json={**body, "stream": False}, headers=request_headers("v1-whole")
    )
    assert whole.status == 502
    error = (await whole.json())["error"]
    assert error["code"] == "upstream_error"
    assert_plain(error["message"])
    assert await stored_error(db) == error["message"]
    assert_logged(caplog, "stream_failed", "v1-whole", "upstream_error", "ClientPayloadError")


# ---- before the stream began: JSON errors (retina's and OpenAI's shapes) ----------------------------


async def test_ollama_resetting_every_connection_is_a_plain_503(
    stack: Stack, db: asyncpg.Connection, resetting: ResettingServer, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = await stack.make_gateway(OLLAMA_URL=resetting.url)
    response = await gateway.post(
        "/api/stream-message", json={"message": "hi", "model": "llava"}, headers=request_headers("reset-native")
    )
    assert response.status == 503, await response.text()
    error = (await response.json())["error"]
    assert error["code"] == "upstream_unavailable"
    assert_plain(error["message"])
    assert error["message"] == "Ollama is unavailable: the connection broke"
    # Its model listing was asked for at start-up and again for this ask (a model no backend lists).
    assert resetting.connections >= 2
    assert_logged(caplog, "request_failed", "reset-native", "upstream_unavailable", "Connection reset by peer")

    body = {"model": "llava", "messages": [{"role": "user", "content": "hi"}]}
    openai = await gateway.post("/v1/chat/completions", json=body, headers=request_headers("reset-v1"))
    assert openai.status == 503
    error = (await openai.json())["error"]
    assert (error["code"], error["type"]) == ("upstream_unavailable", "server_error")
    assert_plain(error["message"])
    assert_logged(caplog, "request_failed", "reset-v1", "upstream_unavailable", "Connection reset by peer")
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_image_store_resetting_every_connection_is_a_plain_503(
    stack: Stack, resetting: ResettingServer, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = await stack.make_gateway(IMAGE_STORE_URL=resetting.url)
    body = {"message": "what?", "model": "llava", "image_ids": [str(uuid.uuid4())]}
    response = await gateway.post("/api/stream-message", json=body, headers=request_headers("reset-store"))
    assert response.status == 503, await response.text()
    error = (await response.json())["error"]
    assert error["code"] == "upstream_unavailable"
    assert_plain(error["message"])
    assert error["message"].startswith("the image-store is unavailable")
    assert_logged(caplog, "request_failed", "reset-store", "upstream_unavailable", "Connection reset by peer")


async def post_image(gateway: TestClient, request_id: str) -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field("message", "What is this?")
    form.add_field("model", "llava")
    form.add_field("images", big_photo(300, 200), filename="photo.jpg", content_type="image/jpeg")
    return await gateway.post("/api/stream-message", data=form, headers=request_headers(request_id))


async def test_a_stopped_image_store_is_a_plain_503(
    stack: Stack, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    image_id = await stack.upload(big_photo(300, 200))
    await stack.store.close()  # the store's port is closed: connections are refused
    asked: dict[str, Any] = {"message": "what?", "model": "llava", "image_ids": [image_id]}
    fetch = await stack.gateway.post("/api/stream-message", json=asked, headers=request_headers("stopped-fetch"))
    upload = await post_image(stack.gateway, "stopped-upload")
    for request_id, response in [("stopped-fetch", fetch), ("stopped-upload", upload)]:
        assert response.status == 503, await response.text()
        error = (await response.json())["error"]
        assert error["code"] == "upstream_unavailable"
        assert_plain(error["message"])
        assert error["message"].startswith("the image-store is unavailable")
        assert_logged(caplog, "request_failed", request_id, "upstream_unavailable", "ClientConnectorError")
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


# ---- an upstream's own words: its JSON error message is passed on, anything else stays in the log ----


async def test_ollamas_json_error_is_passed_on(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    stack.emulator.status_sequence = [503]
    gateway = await stack.make_gateway(UPSTREAM_RETRIES="0")
    response = await gateway.post(
        "/api/stream-message", json={"message": "hi", "model": "llava"}, headers=request_headers("ollama-503")
    )
    assert response.status == 503, await response.text()
    error = (await response.json())["error"]
    assert error == {
        "code": "upstream_unavailable",
        "message": "Ollama is unavailable: it answered HTTP 503 (server busy, please try again. maximum pending "
        "requests exceeded)",
    }
    [line] = [line for line in logged(caplog, "request_failed") if line["request_id"] == "ollama-503"]
    assert "HTTP 503 from /api/chat" in line["detail"]


async def test_a_proxys_html_page_stays_in_the_log(
    stack: Stack, aiohttp_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy in front of the image-store answers 502 with its own HTML page."""

    async def bad_gateway(request: web.Request) -> web.Response:
        page = "<html><body><h1>502 Bad Gateway</h1></body></html>"
        return web.Response(status=502, text=page, content_type="text/html")

    proxy = web.Application()
    proxy.router.add_route("*", "/{tail:.*}", bad_gateway)
    server = await aiohttp_server(proxy)
    gateway = await stack.make_gateway(IMAGE_STORE_URL=str(server.make_url("")).rstrip("/"), UPSTREAM_RETRIES="0")
    body = {"message": "what?", "model": "llava", "image_ids": [str(uuid.uuid4())]}
    response = await gateway.post("/api/stream-message", json=body, headers=request_headers("proxy-502"))
    assert response.status == 503, await response.text()
    error = (await response.json())["error"]
    assert error == {"code": "upstream_unavailable", "message": "the image-store is unavailable: it answered HTTP 502"}
    [line] = [line for line in logged(caplog, "request_failed") if line["request_id"] == "proxy-502"]
    assert "/api/images/" in line["detail"]
    assert "<h1>502 Bad Gateway</h1>" in line["detail"]
