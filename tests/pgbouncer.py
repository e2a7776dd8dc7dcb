"""A real PgBouncer (Debian's package) in `pool_mode = transaction` in front of the test server.

Started once per test process on a free port; every database of the server is reachable through
it by its own name (`[databases] * = ...`), so `pooled(url)` turns a per-test database URL into the
same database behind the pooler. Clients log in as anybody (`auth_type = any`): the pooler itself
logs in to the server with the user and password of the suite's admin URL, as the test server's
own authentication allows.

PgBouncer refuses to run as root ("PgBouncer should not run as root"). As root (CI containers)
it is started with `-u USER`: it reads its configuration and binds its port first, then drops
to USER, so the configuration may stay in a private (0700) temporary directory. USER is `nobody`
when the server is reached over TCP, and the owner of the socket directory when over a Unix
socket (the embedded server's), so the pooler can still open that socket.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from tests.ports import free_port, wait_listening

PGBOUNCER = os.environ.get("PGBOUNCER", "/usr/sbin/pgbouncer")
INSTALL_HINT = "apt-get install pgbouncer (Debian's package; .ci/run installs it), or set PGBOUNCER=/path/to/pgbouncer"


def find_pgbouncer() -> str | None:
    if Path(PGBOUNCER).is_file() and os.access(PGBOUNCER, os.X_OK):
        return PGBOUNCER
    return shutil.which("pgbouncer")


class PgBouncer:
    """One pgbouncer process in transaction mode; `pooled(url)` is a database's URL through it."""

    def __init__(self, binary: str, server_url: str, workdir: Path, *, pool_size: int = 20) -> None:
        self._binary = binary
        self._workdir = workdir
        self.port = free_port()
        parts = urlsplit(server_url)
        host = parts.hostname or parse_qs(parts.query).get("host", ["127.0.0.1"])[0]
        target = [f"host={host}", f"port={parts.port or 5432}", f"user={unquote(parts.username or 'postgres')}"]
        if parts.password:
            target.append(f"password={unquote(parts.password)}")
        self.config = workdir / "pgbouncer.ini"
        self.config.write_text(
            "[databases]\n"
            f"* = {' '.join(target)}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = any\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\n"
            "max_client_conn = 1000\n"
            # Only what a transaction pooler offers: no server_reset_query between clients.
            "server_reset_query =\n"
            "ignore_startup_parameters = extra_float_digits\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
        )
        self.log = workdir / "pgbouncer.log"
        self._run_as = self._user_for(host)
        self._process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def _user_for(host: str) -> str | None:
        if os.geteuid() != 0:
            return None
        if host.startswith("/"):
            return pwd.getpwuid(os.stat(host).st_uid).pw_name
        return "nobody"

    def start(self) -> None:
        command = [self._binary, *(["-u", self._run_as] if self._run_as else []), str(self.config)]
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_listening(self._process, self.port, name="pgbouncer", log=self.log)

    def pooled(self, database_url: str) -> str:
        """The same database, through the pooler (the user name is ignored: auth_type = any)."""
        parts = urlsplit(database_url)
        return urlunsplit(("postgresql", f"retina@127.0.0.1:{self.port}", parts.path, "", ""))

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()  # SIGTERM: immediate shutdown
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
