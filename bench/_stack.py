"""Helpers for benchmarks: a database, a running service process, resident memory."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-service-token-0123456789"
SIGNING_KEY = "bench-signing-key-0123456789abcdef0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    """A migrated throwaway database on the server at `admin_url` (BENCH_DATABASE_URL)."""
    from common.migrations import apply_migrations

    name = f"retina_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    apply_migrations(url, ROOT / "migrations")
    try:
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def service(command: str, port: int, env: dict[str, str], root: Path = ROOT) -> Iterator[subprocess.Popen[bytes]]:
    """`retina <command>` as its own process; `root`: the checkout whose code it runs (another
    worktree runs a before/after comparison in one benchmark)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", command, "--host", "127.0.0.1", "--port", str(port)],
        cwd=root,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError(f"{command} did not become ready")
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children (decode workers)."""
    import psutil

    parent = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])


def store_env(database_url: str, storage: Path, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "SERVICE_TOKENS": TOKEN,
        "IMAGE_SIGNING_KEYS": SIGNING_KEY,
        "IMAGE_STORAGE_PATH": str(storage),
        "IMAGE_UPLOAD_RATE_PER_MINUTE": "0",
        "LOG_LEVEL": "warning",
        **extra,
    }
