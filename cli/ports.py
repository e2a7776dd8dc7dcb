"""A taken port: one line naming it, what holds it (when this machine says) and the flag to pick another."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path


class PortInUse(Exception):
    """Printed as is by `retina` (exit status 2)."""

    def __init__(self, host: str, port: int, service: str, flag: str) -> None:
        holder = port_holder(port)
        held = f" by {holder}" if holder else ""
        super().__init__(f"port {port} on {host} ({service}) is already in use{held}; pick another with {flag} PORT")


def ensure_free(host: str, port: int, service: str, flag: str) -> None:
    """Raise PortInUse when nothing could listen on host:port now (as aiohttp binds: SO_REUSEADDR on)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return  # an unresolvable host is the server's error to report
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(host, port, service, flag) from None


def port_holder(port: int, proc: Path = Path("/proc")) -> str | None:
    """ "name (pid N)" of the process listening on `port`, from /proc (Linux; processes we may inspect)."""
    inodes = _listening_inodes(port, proc)
    if not inodes:
        return None
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (pid_dir / "fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        name = (pid_dir / "comm").read_text().strip() or "a process"
                        return f"{name} (pid {pid_dir.name})"
    return "another user's process"


def _listening_inodes(port: int, proc: Path) -> set[str]:
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (proc / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes
