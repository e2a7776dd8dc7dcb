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
from collections.abc import Iterable, Iterator
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
def service(command: str, port: int, env: dict[str, str], *, root: Path = ROOT) -> Iterator[subprocess.Popen[bytes]]:
    """`retina <command>` as its own process, until its /readyz answers 200.

    `root`: the checkout whose code runs (another commit's, to compare before and after)."""
    args = ["-m", "cli.main", command, "--host", "127.0.0.1", "--port", str(port)]
    with python_process(args, port, env, name=command, root=root) as process:
        yield process


@contextlib.contextmanager
def python_process(
    args: list[str], port: int, env: dict[str, str] | None = None, *, name: str = "", root: Path = ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    """`python <args>` from `root` (the repository's by default), until http://127.0.0.1:<port>/readyz answers 200."""
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=root,
        env={**os.environ, **(env or {})},
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
        raise RuntimeError(f"{name or args} did not become ready")
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Iterable[int]) -> tuple[float, float]:
    """(utime, stime) of the given processes (fields 14 and 15 of /proc/<pid>/stat).

    Server CPU per unit of work is what the benchmarks compare: on a shared machine throughput
    and latency mostly measure the neighbours, a process's own CPU time much less so. A process
    that has exited counts 0.
    """
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def database_backend_pids(admin_url: str, database_url: str) -> set[int]:
    """PostgreSQL backend processes connected to the database of `database_url` (same machine)."""
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,)).fetchall()
    return {int(row[0]) for row in rows}


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
