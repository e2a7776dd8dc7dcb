"""image-store benchmarks, run by hand (see bench/RESULTS.md for recorded figures).

    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \
        .venv/bin/python -m bench.image_store_bench [upload|serve|memory|all]

upload: a 12 MP JPEG through POST /api/images vs Pillow decode + re-encode of the same file in
        this process (the floor: what the service must do anyway). Ratio goal <= 1.3x.
serve:  wrk GET requests/s for a ~200 KB image, ours vs nginx serving the same file. Goal >= 0.5x.
memory: peak RSS of the service (and its decode workers) under 20 concurrent 10 MB uploads.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
from PIL import Image

from bench._stack import TOKEN, free_port, rss_bytes, scratch_database, service, store_env

HEADERS = {"Authorization": f"Bearer {TOKEN}", "X-User-Id": "bench"}


def twelve_megapixel_jpeg() -> bytes:
    """A 4000x3000 photo-like JPEG: a real photograph scaled up, so it has real texture."""
    from bench._photos import photo

    with Image.open(io.BytesIO(photo("astronaut.png"))) as source:
        image = source.convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def pillow_floor(data: bytes, repeats: int) -> list[float]:
    """What any service must do: sniff-free decode + orientation + JPEG re-encode at q=90."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            out = io.BytesIO()
            image.save(out, "JPEG", quality=90)
        times.append(time.perf_counter() - started)
    return times


async def upload_times(base: str, data: bytes, repeats: int) -> list[float]:
    times = []
    async with aiohttp.ClientSession() as session:
        for index in range(repeats):
            form = aiohttp.FormData()
            # A different comment each time defeats dedup without changing the pixels' cost.
            payload = data[:2] + b"\xff\xfe" + (4 + 8).to_bytes(2, "big") + f"{index:08d}".encode() + data[2:]
            form.add_field("file", io.BytesIO(payload), filename="photo.jpg", content_type="image/jpeg")
            started = time.perf_counter()
            async with session.post(f"{base}/api/images", data=form, headers=HEADERS) as response:
                body = await response.text()
                assert response.status == 201, body
            times.append(time.perf_counter() - started)
    return times


def bench_upload(admin_url: str) -> None:
    """Steady state on both sides: each decode worker warms up over its first few 12 MP images."""
    data = twelve_megapixel_jpeg()
    floor = pillow_floor(data, 25)[10:]
    with tempfile.TemporaryDirectory() as tmp, scratch_database(admin_url) as url:
        port = free_port()
        env = store_env(url, Path(tmp), IMAGE_MAX_SIZE_MB="50", IMAGE_DECODE_WORKERS="1")
        with service("image-store", port, env):
            ours = asyncio.run(upload_times(f"http://127.0.0.1:{port}", data, 25))[10:]
    floor_ms, ours_ms = statistics.median(floor) * 1000, statistics.median(ours) * 1000
    print(
        f"upload 12 MP JPEG ({len(data) / 1e6:.1f} MB): service median {ours_ms:.0f} ms, "
        f"Pillow decode+re-encode median {floor_ms:.0f} ms, ratio {ours_ms / floor_ms:.2f}x (goal <= 1.3x)"
    )


def wrk(url: str, headers: dict[str, str], seconds: int = 10) -> float:
    args = ["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency"]
    for key, value in headers.items():
        args += ["-H", f"{key}: {value}"]
    output = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))


def bench_serve(admin_url: str) -> None:
    if not shutil.which("wrk") or not shutil.which("nginx"):
        sys.exit("serve benchmark needs wrk and nginx (apt-get install wrk nginx-light)")
    with Image.open(io.BytesIO(__import__("bench._photos", fromlist=["photo"]).photo("chelsea.png"))) as image:
        buffer = io.BytesIO()
        image.convert("RGB").resize((900, 700)).save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    with tempfile.TemporaryDirectory() as tmp, scratch_database(admin_url) as url:
        store_port, nginx_port = free_port(), free_port()
        with service("image-store", store_port, store_env(url, Path(tmp) / "images")):
            import json
            import urllib.request

            request = urllib.request.Request(
                f"http://127.0.0.1:{store_port}/api/images?filename=cat.jpg",
                data=data,
                headers={**HEADERS, "Content-Type": "image/jpeg"},
            )
            with urllib.request.urlopen(request) as response:
                record = json.loads(response.read())
            sha = record["sha256"]
            conf = Path(tmp) / "nginx.conf"
            conf.write_text(
                f"""daemon off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; sendfile on; tcp_nopush on;
  server {{ listen 127.0.0.1:{nginx_port}; root {tmp}/images;
    location / {{ default_type image/jpeg; add_header Cache-Control "private, max-age=86400, immutable"; }} }} }}
"""
            )
            nginx = subprocess.Popen(["nginx", "-c", str(conf)])
            time.sleep(0.5)
            try:
                ours = wrk(f"http://127.0.0.1:{store_port}/api/images/{record['id']}", HEADERS)
                signed = wrk(f"http://127.0.0.1:{store_port}{record['url']}", {})
                theirs = wrk(f"http://127.0.0.1:{nginx_port}/{sha[:2]}/{sha[2:4]}/{sha}", {})
            finally:
                nginx.terminate()
                nginx.wait(10)
    print(
        f"serve {len(data) / 1024:.0f} KB JPEG, wrk -t2 -c32 10s: image-store {ours:.0f} req/s (token), "
        f"{signed:.0f} req/s (signed URL); nginx {theirs:.0f} req/s (1 worker); "
        f"ratio {ours / theirs:.2f}x token, {signed / theirs:.2f}x signed (goal >= 0.5x)"
    )


async def concurrent_uploads(base: str, data: bytes, count: int) -> list[int]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:

        async def one(index: int) -> int:
            form = aiohttp.FormData()
            payload = data[:2] + b"\xff\xfe" + (4 + 8).to_bytes(2, "big") + f"{index:08d}".encode() + data[2:]
            form.add_field("file", io.BytesIO(payload), filename="big.jpg", content_type="image/jpeg")
            async with session.post(f"{base}/api/images", data=form, headers=HEADERS) as response:
                await response.read()
                return response.status

        return await asyncio.gather(*(one(i) for i in range(count)))


def bench_memory(admin_url: str) -> None:
    with Image.open(io.BytesIO(__import__("bench._photos", fromlist=["photo"]).photo("astronaut.png"))) as source:
        image = source.convert("RGB").resize((4600, 3450), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=100, subsampling=0)
    data = buffer.getvalue()
    with tempfile.TemporaryDirectory() as tmp, scratch_database(admin_url) as url:
        port = free_port()
        env = store_env(url, Path(tmp), IMAGE_MAX_SIZE_MB="50", IMAGE_MAX_PENDING_DECODES="64")
        with service("image-store", port, env) as process:
            idle = rss_bytes(process.pid)
            peak = idle
            stop = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not stop.is_set():
                    peak = max(peak, rss_bytes(process.pid))
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample)
            sampler.start()
            started = time.perf_counter()
            statuses = asyncio.run(concurrent_uploads(f"http://127.0.0.1:{port}", data, 20))
            elapsed = time.perf_counter() - started
            stop.set()
            sampler.join()
    print(
        f"20 concurrent {len(data) / 1e6:.1f} MB uploads: statuses {sorted(set(statuses))}, {elapsed:.1f} s; "
        f"RSS service+workers idle {idle / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB (goal <= 400 MiB)"
    )


def main() -> None:
    admin_url = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which in ("upload", "all"):
        bench_upload(admin_url)
    if which in ("serve", "all"):
        bench_serve(admin_url)
    if which in ("memory", "all"):
        bench_memory(admin_url)


if __name__ == "__main__":
    main()
