"""vision-gateway peak memory under image-heavy bursts, run by hand (figures in bench/RESULTS.md).

    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \
        .venv/bin/python -m bench.gateway_memory_bench [one|many|all] [KEY=VALUE ...]

one:  one user asks 40 times at once about one 16.5 MiB PNG.
many: one user asks 40 times at once, each about a different 16.5 MiB PNG.

The image-store, the gateway and the Ollama emulator run as their own processes; the gateway's
resident memory is sampled every 10 ms from before the burst until every answer has ended.
KEY=VALUE arguments are passed to the gateway's environment (e.g. VISION_MAX_STREAMS_PER_USER=0
to see the prep budget and single flight without the per-user limits in front of them).
"""

from __future__ import annotations

import asyncio
import collections
import io
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
from PIL import Image

from bench._stack import TOKEN, free_port, rss_bytes, scratch_database, service, store_env
from bench.gateway_bench import emulator_process

HEADERS = {"Authorization": f"Bearer {TOKEN}", "X-User-Id": "bench"}
ASKS = 40
# 2400 x 2400 RGB noise: PNG cannot compress it, so the file is 16.5 MiB (17.3 MB).
SIDE = 2400


def noise_png(seed: int) -> bytes:
    """A 16.5 MiB PNG; `seed` makes each one different bytes (a different SHA-256)."""
    pixels = bytearray(os.urandom(SIDE * SIDE * 3))
    pixels[:8] = seed.to_bytes(8, "big")
    buffer = io.BytesIO()
    Image.frombytes("RGB", (SIDE, SIDE), bytes(pixels)).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


class PeakRss:
    """Samples a process's RSS on a thread (the event loop is busy with the burst)."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self._pid))
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def upload(session: aiohttp.ClientSession, store: str, data: bytes) -> str:
    async with session.post(
        f"{store}/api/images", data=data, headers={**HEADERS, "Content-Type": "image/png"}
    ) as response:
        body = await response.json()
        assert response.status == 201, body
        return str(body["id"])


async def one_ask(session: aiohttp.ClientSession, gateway: str, image_id: str) -> str:
    body = {"message": "What is in this picture?", "model": "llava", "image_ids": [image_id]}
    async with session.post(f"{gateway}/api/stream-message", json=body, headers=HEADERS) as response:
        if response.status != 200:
            return f"{response.status} {(await response.json())['error']['code']}"
        last = b""
        async for line in response.content:
            if line.startswith(b"data: "):
                last = line
        return "200 done" if b'"type":"done"' in last else "200 error"


async def store_downloads(session: aiohttp.ClientSession, store: str) -> float:
    """Full (200) image responses the store sent, from its own /metrics."""
    async with session.get(f"{store}/metrics") as response:
        text = await response.text()
    prefix = 'image_store_serve_responses_total{status="200"} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


async def burst(store: str, gateway: str, pid: int, distinct: int) -> None:
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        ids = [await upload(session, store, noise_png(seed)) for seed in range(distinct)]
        image_ids = [ids[i % distinct] for i in range(ASKS)]
        await asyncio.sleep(1.0)
        idle = rss_bytes(pid)
        started = time.perf_counter()
        with PeakRss(pid) as peak:
            outcomes = await asyncio.gather(*(one_ask(session, gateway, i) for i in image_ids))
        elapsed = time.perf_counter() - started
        served = await store_downloads(session, store)
    counts = ", ".join(f"{n} x {outcome}" for outcome, n in sorted(collections.Counter(outcomes).items()))
    print(
        f"{ASKS} asks about {distinct} different {SIDE}x{SIDE} PNG(s): gateway RSS idle {idle / 2**20:.0f} MiB, "
        f"peak {peak.peak / 2**20:.0f} MiB; {counts}; {elapsed:.1f} s; the store served {served:.0f} downloads"
    )


def run(admin_url: str, distinct: int, extra: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp, scratch_database(admin_url) as url:
        store_port, gateway_port, ollama_port = free_port(), free_port(), free_port()
        common = store_env(url, Path(tmp), IMAGE_REENCODE="false", DB_POOL_MAX_SIZE="10")
        gateway_env = {
            **common,
            "OLLAMA_URL": f"http://127.0.0.1:{ollama_port}",
            "IMAGE_STORE_URL": f"http://127.0.0.1:{store_port}",
            "VISION_KNOWN_MODELS": "llava",
            **extra,
        }
        with (
            emulator_process(ollama_port, "--reply-words", "5"),
            service("image-store", store_port, common),
            service("vision-gateway", gateway_port, gateway_env) as gateway,
        ):
            store, base = f"http://127.0.0.1:{store_port}", f"http://127.0.0.1:{gateway_port}"
            asyncio.run(burst(store, base, gateway.pid, distinct))


def main() -> None:
    admin_url = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    args = sys.argv[1:]
    which = args[0] if args and "=" not in args[0] else "all"
    extra = dict(arg.split("=", 1) for arg in args if "=" in arg)
    if which in ("one", "all"):
        run(admin_url, 1, extra)
    if which in ("many", "all"):
        run(admin_url, ASKS, extra)


if __name__ == "__main__":
    main()
