"""asyncpg pool factory and the schema-at-head check used by `/readyz`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from common.migrations import migration_ids


async def _init_connection(conn: asyncpg.Connection) -> None:
    """jsonb columns round-trip as Python objects instead of strings."""
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


@asynccontextmanager
async def open_pool(dsn: str, *, min_size: int, max_size: int) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        command_timeout=30,
        # Idle connections are returned to Postgres; many replicas must share max_connections.
        max_inactive_connection_lifetime=120,
    )
    try:
        yield pool
    finally:
        await pool.close()


async def pending_migrations(conn: asyncpg.Connection, migrations_path: Path) -> list[str]:
    """Migrations on disk that this database has not applied (empty: the schema is at head)."""
    expected = migration_ids(migrations_path)
    exists = await conn.fetchval("SELECT to_regclass('_yoyo_migration') IS NOT NULL")
    if not exists:
        return expected
    applied = {row["migration_id"] for row in await conn.fetch("SELECT migration_id FROM _yoyo_migration")}
    return [mid for mid in expected if mid not in applied]
