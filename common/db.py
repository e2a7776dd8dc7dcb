"""asyncpg pool factory and the schema-at-head check used by `/readyz`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg
import orjson

from common.errors import DatabaseUnavailable
from common.migrations import migration_ids

# What repositories receive: a bare connection (tests, scripts) or the pool's proxy for one
# (services). Both expose the same query API; only the proxy can be released back to the pool.
Connection: TypeAlias = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


class _Connection(asyncpg.Connection):
    """A connection that knows whether its last borrower changed any session state.

    asyncpg's pool sends `Connection.get_reset_query()` (CLOSE ALL, UNLISTEN *, RESET ALL,
    advisory unlock...) on every release: one extra round trip and a server-side statement
    per borrow (3-8% of the gateway's CPU per stream). A single statement outside a transaction
    (a read, or one UPDATE/INSERT; `set_config(..., true)` is local to its own implicit
    transaction) cannot leave state behind, so `connection(pool, stateless=True)` marks the borrow
    and `_reset_on_release` skips the query for it. An open transaction is still rolled back by
    asyncpg itself before our hook runs.
    """

    __slots__ = ("_retina_stateless",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._retina_stateless = False

    def mark_stateless(self) -> None:
        self._retina_stateless = True


async def _reset_on_release(conn: asyncpg.Connection) -> None:
    """Pool `reset=` hook: the usual reset query, unless the borrow was marked stateless."""
    stateless = isinstance(conn, _Connection) and conn._retina_stateless
    if isinstance(conn, _Connection):
        conn._retina_stateless = False
    if stateless and not conn.is_in_transaction():
        return
    query = conn.get_reset_query()
    if query:
        await conn.execute(query)


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Pool `reset=` hook behind a transaction pooler: between transactions the client has no
    server session of its own, so there is nothing to reset (and the reset query would run on
    whichever server connection the pooler picks)."""
    del conn


def _json_text(value: Any) -> str:
    # orjson: the stats of every finished answer are encoded here (the stdlib's json.dumps was ~25 us
    # of the gateway's ~2 ms per stream in issue 19's profile). Non-str keys as json.dumps allows them.
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    """jsonb columns round-trip as Python objects instead of strings."""
    await conn.set_type_codec("jsonb", encoder=_json_text, decoder=orjson.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=_json_text, decoder=orjson.loads, schema="pg_catalog")


def session_options(*, transaction_pooler: bool) -> dict[str, Any]:
    """asyncpg connect options for a connection through DATABASE_URL.

    Behind a transaction pooler (DATABASE_POOLER=transaction) consecutive transactions of one
    client connection run on different server connections, so a named prepared statement made on
    one is unknown (or already exists) on the next: asyncpg's statement cache is turned off and it
    prepares unnamed statements instead, which live only as long as the protocol exchange. Every
    connection to DATABASE_URL is made with these options (the pool, the gateway's liveness
    connection); session state (LISTEN, session advisory locks) goes to DATABASE_DIRECT_URL.
    """
    return {"statement_cache_size": 0} if transaction_pooler else {}


async def connect(dsn: str, *, transaction_pooler: bool = False, connect_timeout: float = 60) -> asyncpg.Connection:
    """One connection of its own (not the pool's) to `dsn`, with `session_options`."""
    return await asyncpg.connect(dsn, timeout=connect_timeout, **session_options(transaction_pooler=transaction_pooler))


@asynccontextmanager
async def open_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    transaction_pooler: bool = False,
    on_connect: Callable[[asyncpg.Connection], None] | None = None,
) -> AsyncIterator[asyncpg.Pool]:
    """`on_connect` also runs for each new connection (common/tracing adds its query logger there)."""

    async def init(conn: asyncpg.Connection) -> None:
        await _init_connection(conn)
        if on_connect is not None:
            on_connect(conn)

    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init,
        connection_class=_Connection,
        reset=_no_reset if transaction_pooler else _reset_on_release,
        command_timeout=30,
        **session_options(transaction_pooler=transaction_pooler),
        # Idle connections are returned to Postgres; many replicas must share max_connections.
        max_inactive_connection_lifetime=120,
    )
    try:
        yield pool
    finally:
        await pool.close()


# SQLSTATE classes that mean "the server is not there right now", not "the query is wrong":
# 08 connection exceptions, 57P01-57P03 admin/crash shutdown and "cannot connect now".
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")


def is_database_unavailable(exc: BaseException) -> bool:
    """True for failures that mean PostgreSQL cannot be reached (a retryable 503, never a 500)."""
    if isinstance(exc, asyncpg.PostgresError):
        return str(getattr(exc, "sqlstate", "") or "").startswith(_UNAVAILABLE_SQLSTATES)
    if isinstance(exc, asyncpg.InterfaceError):
        return "closed" in str(exc)  # "connection is closed", "pool is closed"
    # Refused/reset sockets and connect or acquire timeouts; only DB work runs inside connection().
    return isinstance(exc, ConnectionError | TimeoutError | OSError)


def required_row(record: asyncpg.Record | None) -> asyncpg.Record:
    """The row of a query that always returns one (INSERT … RETURNING, aggregates).

    asyncpg types fetchrow as possibly None; for these queries None would be a bug, so it
    fails loudly here instead of as a TypeError at the first column access.
    """
    if record is None:
        raise RuntimeError("query returned no row where one is always expected")
    return record


@asynccontextmanager
async def connection(pool: asyncpg.Pool, *, stateless: bool = False) -> AsyncIterator[Connection]:
    """A pooled connection; a database that cannot be reached surfaces as DatabaseUnavailable.

    Repositories use this instead of `pool.acquire()` so callers (handlers, the stream relay)
    can tell "PostgreSQL is down, retry" from a bug. `stateless=True` is only for one statement
    outside a transaction (no SET, LISTEN, cursors or session locks): the connection then goes
    back to the pool without the reset round trip.
    """
    try:
        async with pool.acquire() as conn:
            if stateless and hasattr(conn, "mark_stateless"):
                conn.mark_stateless()
            yield conn
    except Exception as exc:
        if is_database_unavailable(exc):
            raise DatabaseUnavailable() from exc
        raise


@asynccontextmanager
async def direct_connection(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own for session state (a session advisory lock) for the block's lifetime;
    closing it ends the session and everything held in it. Unreachable: DatabaseUnavailable."""
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except Exception as exc:
        if is_database_unavailable(exc):
            raise DatabaseUnavailable() from exc
        raise
    try:
        yield conn
    finally:
        await close_quietly(conn)


async def close_quietly(conn: asyncpg.Connection) -> None:
    """Close a connection of our own (not the pool's) within 2 s; one that cannot close cleanly is cut."""
    if conn.is_closed():
        return
    try:
        await conn.close(timeout=2)
    except Exception:  # noqa: BLE001 - whatever went wrong, the connection is gone afterwards
        conn.terminate()


async def pending_migrations(conn: Connection, migrations_path: Path) -> list[str]:
    """Migrations on disk that this database has not applied (empty: the schema is at head)."""
    expected = migration_ids(migrations_path)
    exists = await conn.fetchval("SELECT to_regclass('_yoyo_migration') IS NOT NULL")
    if not exists:
        return expected
    applied = {row["migration_id"] for row in await conn.fetch("SELECT migration_id FROM _yoyo_migration")}
    return [mid for mid in expected if mid not in applied]
