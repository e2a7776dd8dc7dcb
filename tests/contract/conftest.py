"""Both services and the Ollama emulator on real loopback ports, for tools that speak plain HTTP.

schemathesis and newman run as child processes and reach the services over TCP exactly as an
integrator's copy would; the servers run in the test's event loop, so tests await those children
with asyncio subprocesses instead of blocking the loop.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli.ollama_emulator import OllamaEmulator
from services.image_store.settings import load_image_store_settings
from services.vision_gateway.app import create_app as create_gateway
from services.vision_gateway.settings import load_gateway_settings
from tests.conftest import SERVICE_TOKEN


@dataclass
class LiveStack:
    store_url: str
    gateway_url: str
    emulator: OllamaEmulator
    token: str = SERVICE_TOKEN


@pytest.fixture
async def live_stack(service_env: dict[str, str], store_app: Any, aiohttp_server: Any) -> LiveStack:
    emulator = OllamaEmulator()
    ollama = await aiohttp_server(emulator.make_app())
    store = await aiohttp_server(store_app(load_image_store_settings(service_env)))
    store_url = str(store.make_url("")).rstrip("/")
    env = {
        **service_env,
        "OLLAMA_URL": str(ollama.make_url("")).rstrip("/"),
        "IMAGE_STORE_URL": store_url,
        "SSE_HEARTBEAT_SECONDS": "0.5",
        # schemathesis asks as few users many times (every option's bounds are covered); the per-user
        # rate limit would answer 429 long before the stateful phase follows a stream's links.
        "VISION_STREAM_RATE_PER_MINUTE": "0",
    }
    gateway = await aiohttp_server(create_gateway(load_gateway_settings(env)))
    return LiveStack(store_url, str(gateway.make_url("")).rstrip("/"), emulator)


@dataclass
class Finished:
    returncode: int
    output: str


async def run_tool(*argv: str, cwd: Path, timeout: float, env: dict[str, str] | None = None) -> Finished:  # noqa: ASYNC109
    """Run a command without blocking the loop that serves the stack; kill it past `timeout`."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
        raise AssertionError(f"{argv[0]} ran past {timeout}s:\n{output.decode(errors='replace')[-4000:]}") from None
    return Finished(process.returncode or 0, output.decode(errors="replace"))
