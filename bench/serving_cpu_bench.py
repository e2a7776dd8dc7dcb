"""Server CPU per 1,000 requests: nginx, the image-store's /livez, and GET /api/images/{id}.

    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres [BENCH_EVENT_LOOPS=uvloop,asyncio] \
        .venv/bin/python -m bench.serving_cpu_bench [ROUNDS] [SECONDS]

BENCH_EVENT_LOOPS starts one image-store per loop named (EVENT_LOOP), each compared with its
own /livez in the same rounds (default: uvloop alone, the services' default).

Why CPU and not requests/s: the machine is shared, so throughput mostly measures the
neighbours. CPU time the server process itself spent (utime + stime from /proc/<pid>/stat,
read before and after each wrk run) divided by the requests wrk completed is much less
sensitive to load. All targets are measured in one run, interleaved round by round, so a
noisy minute hits every target alike; the ratio image/livez is the figure to compare.
nginx serves the very same file (one worker, sendfile on) from the image-store's own tree.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from PIL import Image

from bench._photos import photo
from bench._stack import TOKEN, cpu_seconds, free_port, scratch_database, service, store_env

HEADERS = {"Authorization": f"Bearer {TOKEN}", "X-User-Id": "bench"}


def wrk(url: str, headers: dict[str, str], seconds: int) -> int:
    """Completed requests (non-2xx/3xx answers make the run fail: they would be cheaper)."""
    args = ["wrk", "-t2", "-c32", f"-d{seconds}s"]
    for key, value in headers.items():
        args += ["-H", f"{key}: {value}"]
    output = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx or 3xx responses" in output:
        raise RuntimeError(f"{url} answered errors:\n{output}")
    return int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]


def sample_jpeg() -> bytes:
    """About 150 KB, like the issue's figures: a real photograph, not noise."""
    with Image.open(io.BytesIO(photo("chelsea.png"))) as image:
        buffer = io.BytesIO()
        image.convert("RGB").resize((900, 700)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def upload(base: str, data: bytes) -> dict[str, str]:
    request = urllib.request.Request(
        f"{base}/api/images?filename=cat.jpg", data=data, headers={**HEADERS, "Content-Type": "image/jpeg"}
    )
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


def start_nginx(tmp: Path, root: Path, port: int) -> tuple[subprocess.Popen[bytes], list[int]]:
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""daemon off; worker_processes 1; {"user root; " if os.geteuid() == 0 else ""} pid {tmp}/nginx.pid; error_log {tmp}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; sendfile on; tcp_nopush on;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
  uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  server {{ listen 127.0.0.1:{port}; root {root};
    location / {{ default_type image/jpeg; add_header Cache-Control "private, max-age=86400, immutable"; }} }} }}
"""
    )
    nginx = subprocess.Popen(["nginx", "-c", str(conf)])
    time.sleep(0.5)
    children = Path(f"/proc/{nginx.pid}/task/{nginx.pid}/children").read_text().split()
    return nginx, [int(pid) for pid in children]


def main() -> None:
    if not shutil.which("wrk") or not shutil.which("nginx"):
        sys.exit("this benchmark needs wrk and nginx (apt-get install wrk nginx-light)")
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    # One image-store per loop named, each measured against its own /livez in the same rounds.
    loops = os.environ.get("BENCH_EVENT_LOOPS", "uvloop").split(",")
    admin_url = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    data = sample_jpeg()
    results: dict[str, list[float]] = {}
    kernel: dict[str, list[float]] = {}  # share of the CPU time spent in the kernel (stime)
    with tempfile.TemporaryDirectory() as raw_tmp, scratch_database(admin_url) as url, ExitStack() as stack:
        tmp = Path(raw_tmp)
        targets: dict[str, tuple[str, dict[str, str], list[int]]] = {}
        for loop in loops:
            port = free_port()
            env = store_env(url, tmp / "images", EVENT_LOOP=loop)
            store = stack.enter_context(service("image-store", port, env))
            base = f"http://127.0.0.1:{port}"
            record = upload(base, data)
            targets[f"{loop}: livez"] = (f"{base}/livez", {}, [store.pid])
            targets[f"{loop}: image (token)"] = (f"{base}/api/images/{record['id']}", HEADERS, [store.pid])
            targets[f"{loop}: image (signed URL)"] = (f"{base}{record['url']}", {}, [store.pid])
        sha = record["sha256"]
        nginx_port = free_port()
        nginx, workers = start_nginx(tmp, tmp / "images", nginx_port)
        targets["nginx"] = (f"http://127.0.0.1:{nginx_port}/{sha[:2]}/{sha[2:4]}/{sha}", {}, workers)
        served = len((tmp / "images" / sha[:2] / sha[2:4] / sha).read_bytes())
        try:
            for target, headers, _ in targets.values():  # warm up every path once
                wrk(target, headers, 1)
            for _ in range(rounds):
                for name, (target, headers, pids) in targets.items():
                    user_before, system_before = cpu_seconds(pids)
                    requests = wrk(target, headers, seconds)
                    user_after, system_after = cpu_seconds(pids)
                    user, system = user_after - user_before, system_after - system_before
                    results.setdefault(name, []).append((user + system) * 1000 / requests * 1000)
                    kernel.setdefault(name, []).append(system / max(user + system, 1e-9))
        finally:
            nginx.terminate()
            nginx.wait(10)
    print(
        f"{len(data) / 1024:.0f} KiB JPEG uploaded, {served / 1024:.0f} KiB stored and served;"
        f" wrk -t2 -c32 -d{seconds}s, {rounds} interleaved rounds"
    )
    print("server CPU ms per 1,000 requests (each round) | median | median / its livez | kernel share")
    for name, values in results.items():
        livez = statistics.median(results[f"{name.split(':')[0]}: livez" if ":" in name else f"{loops[0]}: livez"])
        median = statistics.median(values)
        rounds_text = " ".join(f"{v:.0f}" for v in values)
        share = statistics.median(kernel[name]) * 100
        print(f"{name:28s} {rounds_text} | {median:.0f} | {median / livez:.2f}x | {share:.0f}%")


if __name__ == "__main__":
    main()
