"""yoyo-migrations wrapper: apply to head or roll back the newest, always under yoyo's lock.

yoyo is synchronous (psycopg 3), so callers on an event loop run these in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from yoyo import get_backend, read_migrations

# A second deployer waits behind a long migration instead of failing after yoyo's 10 s default.
LOCK_TIMEOUT_SECONDS = 300


@dataclass(frozen=True, slots=True)
class MigrationResult:
    applied: list[str]
    rolled_back: list[str]


def yoyo_url(database_url: str) -> str:
    """yoyo picks its driver from the scheme; psycopg 3 is the one we install."""
    parts = urlsplit(database_url)
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


def migration_ids(migrations_path: Path) -> list[str]:
    """IDs in apply order: file names without `.sql`, rollback files excluded."""
    return sorted(
        path.name.removesuffix(".sql")
        for path in migrations_path.glob("*.sql")
        if not path.name.endswith(".rollback.sql")
    )


def apply_migrations(database_url: str, migrations_path: Path) -> MigrationResult:
    backend = get_backend(yoyo_url(database_url))
    try:
        migrations = read_migrations(str(migrations_path))
        with backend.lock(timeout=LOCK_TIMEOUT_SECONDS):
            to_apply = backend.to_apply(migrations)  # decided inside the lock
            backend.apply_migrations(to_apply)
        return MigrationResult(applied=[m.id for m in to_apply], rolled_back=[])
    finally:
        backend.connection.close()


def rollback_last(database_url: str, migrations_path: Path, count: int = 1) -> MigrationResult:
    backend = get_backend(yoyo_url(database_url))
    try:
        migrations = read_migrations(str(migrations_path))
        with backend.lock(timeout=LOCK_TIMEOUT_SECONDS):
            applied = backend.to_rollback(migrations)  # newest first
            chosen = applied[:count]
            backend.rollback_migrations(chosen)
        return MigrationResult(applied=[], rolled_back=[m.id for m in chosen])
    finally:
        backend.connection.close()
