"""Ports for the servers tests start, and waiting for a started one to listen.

One copy for every test that starts a process (PgBouncer, moto, emulators, the services): a port
nothing listens on, and the wait that tells "listening" from "exited" and "too slow", with the end
of the process's log in the failure.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(
    process: subprocess.Popen[Any], port: int, *, name: str, within: float = 10.0, log: Path | None = None
) -> None:
    """Return once something accepts connections on 127.0.0.1:`port`; RuntimeError when `process`
    exits first or `within` seconds pass (with the last lines of `log`, if given)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited at start-up (code {process.returncode}){_tail(log)}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on {port} within {within:g} s{_tail(log)}")


def _tail(log: Path | None) -> str:
    return f":\n{log.read_text(errors='replace')[-2000:]}" if log is not None and log.exists() else ""
