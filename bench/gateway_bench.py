"""vision-gateway benchmarks, run by hand (figures in bench/RESULTS.md).

    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \
        .venv/bin/python -m bench.gateway_bench [ttft|hold|prep|all]

ttft: time to first token through the gateway vs straight to the emulator, p50/p99, at 1 and 100
      concurrent streams (the emulator runs in its own process; the gateway's added time is the
      difference).
hold: N concurrent streams held open by one gateway process: RSS per stream and p99 delay
      between chunks as the client sees them, against the emulator's fixed chunk interval.
prep: preparing a 12 MP photo for the model: bytes sent vs original, and milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from PIL import Image

from bench._photos import photo
from bench._stack import ROOT, TOKEN, free_port, rss_bytes, scratch_database, service, store_env

HEADERS = {"Authorization": f"Bearer {TOKEN}", "X-User-Id": "bench"}


@contextlib.contextmanager
def emulator_process(port: int, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.ollama_emulator", "--port", str(port), *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:  # it can hang in shutdown after many streams; the figures are in
            process.kill()
            process.wait()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def direct_ttft(session: aiohttp.ClientSession, base: str) -> float:
    started = time.perf_counter()
    body = {"model": "llava", "messages": [{"role": "user", "content": "hi"}]}
    async with session.post(f"{base}/api/chat", json=body) as response:
        async for line in response.content:
            if json.loads(line).get("message", {}).get("content"):
                elapsed = time.perf_counter() - started
                break
        async for _ in response.content:
            pass
    return elapsed


async def gateway_ttft(session: aiohttp.ClientSession, base: str, image_ids: tuple[str, ...] = ()) -> float:
    """Seconds from sending `POST /api/stream-message` to its first chunk event; reads to the end."""
    started = time.perf_counter()
    body = {"message": "hi", "model": "llava", **({"image_ids": list(image_ids)} if image_ids else {})}
    async with session.post(f"{base}/api/stream-message", json=body, headers=HEADERS) as response:
        assert response.status == 200, await response.text()
        async for line in response.content:
            if line.startswith(b'data: {"type":"chunk"'):
                elapsed = time.perf_counter() - started
                break
        async for _ in response.content:
            pass
    return elapsed


async def measure(fn, base: str, concurrency: int, rounds: int) -> list[float]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(3):  # warm up connections and the capability cache
            await fn(session, base)
        samples: list[float] = []
        for _ in range(rounds):
            samples += await asyncio.gather(*(fn(session, base) for _ in range(concurrency)))
        return samples


def gateway_env(url: str, tmp: str, ollama: str, **extra: str) -> dict[str, str]:
    # One bench user runs every stream: the per-user admission limits would measure the 429 path.
    limits = {"VISION_MAX_STREAMS_PER_USER": "0", "VISION_STREAM_RATE_PER_MINUTE": "0"}
    return {**store_env(url, Path(tmp)), "OLLAMA_URL": ollama, "VISION_KNOWN_MODELS": "llava", **limits, **extra}


def bench_ttft(admin_url: str) -> None:
    with tempfile.TemporaryDirectory() as tmp, scratch_database(admin_url) as url:
        ollama_port, gateway_port = free_port(), free_port()
        ollama = f"http://127.0.0.1:{ollama_port}"
        with (
            emulator_process(ollama_port, "--reply-words", "5"),
            service("vision-gateway", gateway_port, gateway_env(url, tmp, ollama, DB_POOL_MAX_SIZE="20")),
        ):
            gateway = f"http://127.0.0.1:{gateway_port}"
            for concurrency, rounds in ((1, 200), (100, 5)):
                direct = asyncio.run(measure(direct_ttft, ollama, concurrency, rounds))
                through = asyncio.run(measure(gateway_ttft, gateway, concurrency, rounds))
                d50, d99 = percentile(direct, 50) * 1000, percentile(direct, 99) * 1000
                g50, g99 = percentile(through, 50) * 1000, percentile(through, 99) * 1000
                print(
                    f"TTFT at {concurrency} concurrent ({len(direct)} streams): direct p50 {d50:.2f} ms p99 {d99:.2f} ms;"
                    f" gateway p50 {g50:.2f} ms p99 {g99:.2f} ms; added p50 {g50 - d50:.2f} ms p99 {g99 - d99:.2f} ms"
                )


async def hold_streams(base: str, count: int, interval: float, pid: int) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    gaps: list[float] = []
    opened = asyncio.Event()
    open_count = 0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        baseline = rss_bytes(pid)

        async def one() -> None:
            nonlocal open_count
            async with session.post(
                f"{base}/api/stream-message", json={"message": "hi", "model": "llava"}, headers=HEADERS
            ) as response:
                last = None
                async for line in response.content:
                    if line.startswith(b'data: {"type":"chunk"'):
                        now = time.perf_counter()
                        if last is None:
                            open_count += 1
                            if open_count == count:
                                opened.set()
                        else:
                            gaps.append(now - last)
                        last = now

        tasks = [asyncio.create_task(one()) for _ in range(count)]
        await asyncio.wait_for(opened.wait(), 300)
        held = rss_bytes(pid)
        await asyncio.gather(*tasks)
    late = [g - interval for g in gaps]
    print(
        f"{count} concurrent streams (chunk every {interval * 1000:.0f} ms): gateway RSS {baseline / 2**20:.0f} MiB idle, "
        f"{held / 2**20:.0f} MiB with all open = {(held - baseline) / count / 1024:.1f} KiB per stream; "
        f"chunk delay beyond the emulator's interval p50 {percentile(late, 50) * 1000:.1f} ms, "
        f"p99 {percentile(late, 99) * 1000:.1f} ms over {len(gaps)} gaps"
    )


def bench_hold(admin_url: str, count: int = 2000) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    interval = 1.0
    with tempfile.TemporaryDirectory() as tmp, scratch_database(admin_url) as url:
        ollama_port, gateway_port = free_port(), free_port()
        ollama = f"http://127.0.0.1:{ollama_port}"
        env = gateway_env(url, tmp, ollama, DB_POOL_MAX_SIZE="20", SSE_HEARTBEAT_SECONDS="15")
        with (
            emulator_process(ollama_port, "--reply-words", "12", "--chunk-delay", str(interval)),
            service("vision-gateway", gateway_port, env) as gateway,
        ):
            asyncio.run(hold_streams(f"http://127.0.0.1:{gateway_port}", count, interval, gateway.pid))


def bench_prep() -> None:
    from services.vision_gateway.image_prep import prepare_for_model

    with Image.open(io.BytesIO(photo("astronaut.png"))) as source:
        image = source.convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    original = buffer.getvalue()
    times = []
    for _ in range(12):
        started = time.perf_counter()
        prepared = prepare_for_model(original, 1024)
        times.append(time.perf_counter() - started)
    naive = len(original) * 4 / 3
    print(
        f"prepare a 12 MP JPEG ({len(original) / 1e6:.2f} MB) for the model: {prepared.width}x{prepared.height}, "
        f"{prepared.encoded_bytes / 1e3:.0f} KB base64 sent vs {naive / 1e6:.2f} MB base64 of the original "
        f"({naive / prepared.encoded_bytes:.0f}x less); median {statistics.median(times[2:]) * 1000:.1f} ms"
    )


def main() -> None:
    admin_url = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which in ("ttft", "all"):
        bench_ttft(admin_url)
    if which in ("hold", "all"):
        bench_hold(admin_url, int(os.environ.get("BENCH_STREAMS", "2000")))
    if which in ("prep", "all"):
        bench_prep()


if __name__ == "__main__":
    main()
