"""The gateway process's resident memory under the issue's image bursts stays under 256 MiB.

The gateway runs as its own process (`retina vision-gateway`) so its RSS is its own; the
image-store, the emulator and PostgreSQL are the stack's. Images are 16.5 MiB PNGs of noise
(2400 x 2400 RGB, incompressible). Before the single flight and the prep budget, 40 asks about
one such image took the gateway from 52 to 647 MiB (bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import psutil
import pytest
from PIL import Image

from common.app import REGISTRY_KEY
from tests.conftest import ROOT, auth_headers, base_env
from tests.vision_gateway.conftest import Stack, closed_port_url

GOAL_BYTES = 256 * 2**20
SIDE = 2400


@pytest.fixture
def service_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    """The stack's store keeps PNGs as sent (re-encoding 16.5 MiB of noise only slows the test), and
    takes files of the issue's size (16.5 MiB, over the 10 MB default): an operator may raise
    IMAGE_MAX_SIZE_MB, and the gateway's prep budget must still hold its memory."""
    return {**base_env(database_url, tmp_path / "images"), "IMAGE_REENCODE": "false", "IMAGE_MAX_SIZE_MB": "20"}


def noise_png(seed: int) -> bytes:
    pixels = bytearray(os.urandom(SIDE * SIDE * 3))
    pixels[:8] = seed.to_bytes(8, "big")
    buffer = io.BytesIO()
    Image.frombytes("RGB", (SIDE, SIDE), bytes(pixels)).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


async def upload_png(stack: Stack, data: bytes) -> str:
    """Stack.upload, but streaming the body (aiohttp warns about 16 MiB of raw bytes)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            str(stack.store.make_url("/api/images")),
            data=io.BytesIO(data),
            headers={**auth_headers(), "Content-Type": "image/png"},
        ) as response,
    ):
        body = await response.json()
        assert response.status == 201, body
        return str(body["id"])


@contextmanager
def gateway_process(env: dict[str, str]) -> Iterator[tuple[str, psutil.Process]]:
    port = int(closed_port_url().rsplit(":", 1)[1])
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "vision-gateway", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "warning"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=1) as response:  # noqa: S310 - loopback
                    if response.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, "the gateway did not become ready"
                time.sleep(0.1)
        yield base, psutil.Process(process.pid)
    finally:
        process.terminate()
        process.wait(30)


async def models_listed(base: str) -> None:
    """Wait until the gateway has listed the emulator's models. The emulator runs on this test's event
    loop, which gateway_process's readiness wait blocks and the burst keeps busy encoding bodies: a
    first listing left to race the burst can miss OLLAMA_LIST_TIMEOUT_SECONDS and mark it down."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base}/api/models", headers=auth_headers()) as response,
    ):
        body = await response.json()
        assert response.status == 200, body
        assert any(model["name"].startswith("llava") for model in body["models"]), body


class PeakRss:
    def __init__(self, process: psutil.Process) -> None:
        self.process, self.peak, self._stop = process, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def burst(base: str, image_ids: list[str]) -> list[str]:
    async def one(session: aiohttp.ClientSession, image_id: str) -> str:
        body = {"message": "What is this?", "model": "llava", "image_ids": [image_id]}
        async with session.post(f"{base}/api/stream-message", json=body, headers=auth_headers()) as response:
            if response.status != 200:
                return f"{response.status} {(await response.json())['error']['code']}"
            text = await response.text()
            return "200 done" if '"type":"done"' in text.rsplit("data: ", 1)[-1] else "200 error"

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        return await asyncio.gather(*(one(session, image_id) for image_id in image_ids))


@pytest.mark.parametrize("distinct", [1, 8])
async def test_gateway_rss_stays_under_256_mib_during_40_image_asks(stack: Stack, distinct: int) -> None:
    ids = [await upload_png(stack, noise_png(seed)) for seed in range(distinct)]
    asks = [ids[n % distinct] for n in range(40)]
    with gateway_process(stack.env) as (base, process):
        await models_listed(base)
        idle = process.memory_info().rss
        with PeakRss(process) as peak:
            outcomes = await burst(base, asks)
    print(f"{distinct} image(s): gateway RSS idle {idle / 2**20:.0f} MiB, peak {peak.peak / 2**20:.0f} MiB")
    assert peak.peak <= GOAL_BYTES, f"peak {peak.peak / 2**20:.0f} MiB"
    assert set(outcomes) <= {"200 done", "503 busy"}, outcomes
    assert "200 done" in outcomes, outcomes
    served = stack.store.app[REGISTRY_KEY].get_sample_value("image_store_serve_responses_total", {"status": "200"})
    assert served is not None
    assert 1.0 <= served <= distinct, "no image is downloaded twice"
    if distinct == 1:
        assert outcomes == ["200 done"] * 40


def distinct_copy(png: bytes, seed: int) -> bytes:
    """The same pixels with a tEXt chunk naming `seed` right after IHDR: distinct bytes, made in microseconds."""
    text = b"tEXt" + b"seed\x00" + str(seed).encode()
    chunk = len(text[4:]).to_bytes(4, "big") + text + zlib.crc32(text).to_bytes(4, "big")
    ihdr_end = 8 + 4 + 4 + 13 + 4
    return png[:ihdr_end] + chunk + png[ihdr_end:]


async def openai_burst(base: str, png: bytes, users: int) -> list[str]:
    """`users` /v1 requests at once, each a distinct 16.5 MiB PNG as a base64 data URL."""

    async def one(session: aiohttp.ClientSession, n: int) -> str:
        url = "data:image/png;base64," + base64.b64encode(distinct_copy(png, n)).decode()
        body = json.dumps(
            {"model": "llava", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]}]}
        ).encode()  # fmt: skip
        del url
        headers = {**auth_headers(f"user-{n}"), "Content-Type": "application/json"}
        async with session.post(f"{base}/v1/chat/completions", data=io.BytesIO(body), headers=headers) as response:
            payload = await response.json()
            if response.status == 503:
                assert int(response.headers["Retry-After"]) >= 1
            return f"{response.status} {payload['error']['code'] if 'error' in payload else 'done'}"

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        return await asyncio.gather(*(one(session, n) for n in range(users)))


async def test_v1_data_url_images_count_against_the_memory_budget(stack: Stack) -> None:
    """Issue 17: 40 concurrent /v1 requests with a distinct 16.5 MiB PNG each (40 users) once took the
    gateway from 80 to 566 MiB; their bodies now reserve the prep budget before they are read."""
    png = noise_png(0)
    assert len(png) > 16 * 2**20
    with gateway_process(stack.env) as (base, process):
        await models_listed(base)
        idle = process.memory_info().rss
        with PeakRss(process) as peak:
            outcomes = await openai_burst(base, png, 40)
    print(f"/v1 x40: gateway RSS idle {idle / 2**20:.0f} MiB, peak {peak.peak / 2**20:.0f} MiB, {sorted(outcomes)}")
    assert peak.peak - idle <= GOAL_BYTES, f"peak {peak.peak / 2**20:.0f} MiB, idle {idle / 2**20:.0f} MiB"
    assert set(outcomes) <= {"200 done", "503 busy"}, outcomes
    assert "200 done" in outcomes, outcomes
