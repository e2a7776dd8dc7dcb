"""A whole stack per test: real image-store and gateway apps on real ports, the Ollama emulator, Postgres."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import openai
import pytest
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from cli.ollama_emulator import OllamaEmulator
from common.app import REGISTRY_KEY
from services.image_store.settings import load_image_store_settings
from services.vision_gateway.app import create_app as create_gateway
from services.vision_gateway.settings import load_gateway_settings
from tests.conftest import ROOT, SERVICE_TOKEN, auth_headers
from tests.image_store.conftest import photo
from tests.ports import free_port, wait_listening


@dataclass
class Stack:
    emulator: OllamaEmulator
    store: TestServer
    gateway: TestClient
    env: dict[str, str]
    make_gateway: Callable[..., Any] = field(repr=False, default=None)

    async def upload(self, data: bytes, user: str = "alice", content_type: str = "image/jpeg") -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                str(self.store.make_url("/api/images")),
                data=data,
                headers={**auth_headers(user), "Content-Type": content_type},
            ) as response,
        ):
            body = await response.json()
            assert response.status == 201, body
            return str(body["id"])


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def big_photo(width: int = 2400, height: int = 1800) -> bytes:
    """A real photograph enlarged past the model's edge limit."""
    with Image.open(io.BytesIO(photo("chelsea.png"))) as source:
        image = source.convert("RGB").resize((width, height))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def emulator_process() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The Ollama emulator as its own process, answering slowly with a 400-word reply (a test can kill it)."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.ollama_emulator",
            "--port",
            str(port),
            "--chunk-delay",
            "0.05",
            "--reply-words",
            "400",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        wait_listening(process, port, name="the emulator process")
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


@pytest.fixture
def emulator() -> OllamaEmulator:
    return OllamaEmulator()


@pytest.fixture
async def stack(
    service_env: dict[str, str], emulator: OllamaEmulator, store_app: Any, aiohttp_server: Any, aiohttp_client: Any
):
    ollama_server = await aiohttp_server(emulator.make_app())
    store = await aiohttp_server(store_app(load_image_store_settings(service_env)))
    env = {
        **service_env,
        "OLLAMA_URL": str(ollama_server.make_url("")).rstrip("/"),
        "IMAGE_STORE_URL": str(store.make_url("")).rstrip("/"),
        "SSE_HEARTBEAT_SECONDS": "0.2",
        "UPSTREAM_RETRIES": "2",
        # Tests ask many times as one user; test_admission.py turns the per-user limits back on.
        "VISION_MAX_STREAMS_PER_USER": "0",
        "VISION_STREAM_RATE_PER_MINUTE": "0",
    }

    async def make_gateway(**overrides: str) -> TestClient:
        settings = load_gateway_settings({**env, **overrides})
        return await aiohttp_client(create_gateway(settings))

    gateway = await make_gateway()
    result = Stack(emulator, store, gateway, env)
    result.make_gateway = make_gateway
    return result


@dataclass
class SseResult:
    status: int
    events: list[dict[str, Any]]
    pings: int
    headers: Any

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    @property
    def text(self) -> str:
        return "".join(e["content"] for e in self.of("chunk"))


@pytest.fixture
async def openai_client(stack: Stack) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official `openai` client pointed at the gateway's /v1, as alice, never retrying (a retried
    request would hide which response a test is looking at)."""
    async with openai.AsyncOpenAI(
        base_url=str(stack.gateway.make_url("/v1")),
        api_key=SERVICE_TOKEN,
        default_headers={"X-User-Id": "alice"},
        max_retries=0,
        timeout=30,
    ) as client:
        yield client


async def read_sse(response: aiohttp.ClientResponse) -> SseResult:
    """Parse an SSE body strictly: every event is exactly one `data:` line and a blank line."""
    events: list[dict[str, Any]] = []
    pings = 0
    raw = (await response.read()).decode()
    assert raw.endswith("\n\n"), raw[-200:]
    for block in raw.split("\n\n")[:-1]:
        if block == ": ping":
            pings += 1
            continue
        assert block.startswith("data: "), block
        assert "\n" not in block, block
        events.append(json.loads(block[len("data: ") :]))
    return SseResult(response.status, events, pings, response.headers)


async def read_events_until(response: aiohttp.ClientResponse, chunks: int) -> list[dict[str, Any]]:
    """Read whole events off the wire until `chunks` chunk events have arrived."""
    events: list[dict[str, Any]] = []
    while sum(e["type"] == "chunk" for e in events) < chunks:
        line = await response.content.readline()
        assert line, "the stream ended early"
        if line.startswith(b"data: "):
            events.append(json.loads(line[len(b"data: ") :]))
            assert await response.content.readline() == b"\n", "every event ends with a blank line"
    return events


async def assert_turn_abandoned(stack: Stack, db: asyncpg.Connection) -> None:
    """A turn begun and then given up before its relay: Ollama's request closed, the assistant row
    `stopped` as "client disconnected", and no stream left in flight on the (one) backend."""
    await stack.emulator.wait_for_disconnect(within=5)
    row = await db.fetchrow("SELECT status, error FROM messages WHERE role = 'assistant'")
    assert (row["status"], row["error"]) == ("stopped", "client disconnected")
    backend = stack.env["OLLAMA_URL"].removeprefix("http://")
    in_flight = stack.gateway.app[REGISTRY_KEY].get_sample_value(
        "vision_gateway_backend_streams_in_flight", {"backend": backend}
    )
    assert in_flight == 0.0


async def ask(client: TestClient, body: dict[str, Any], user: str = "alice") -> aiohttp.ClientResponse:
    return await client.post("/api/stream-message", json=body, headers=auth_headers(user))
