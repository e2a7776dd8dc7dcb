"""A LISTEN connection that outlives database restarts.

Pooled connections drop their LISTENs on release, so a listener needs a connection of its own.
It reconnects with backoff (common.retry) and tells its owner when it starts and stops listening:
whoever relies on notifications (a cache) must not trust what it holds while none can arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import asyncpg
import structlog

from common.background import in_background
from common.db import close_quietly
from common.retry import forever

log = structlog.get_logger("retina.pg_listen")

# asyncpg types listener arguments loosely (connection or pool proxy; payload as object).
Handler = Callable[[object, int, str, object], None]

# What a connection attempt that may work later raises (PostgreSQL down, restarting, unreachable).
UNAVAILABLE = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
# Waits between attempts: 0.5 s doubling to 10 s (common.retry's `forever`).
FIRST_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 10.0


@contextlib.asynccontextmanager
async def listening(
    dsn: str, channel: str, handler: Handler, on_state: Callable[[bool], None] | None = None
) -> AsyncIterator[asyncio.Event]:
    """Keep `LISTEN channel` open for the block's lifetime; the event is set while it is."""
    connected = asyncio.Event()

    def set_state(state: bool) -> None:
        if state != connected.is_set():
            connected.set() if state else connected.clear()
            if on_state is not None:
                on_state(state)

    async def connect() -> tuple[asyncpg.Connection, asyncio.Event]:
        conn = await asyncpg.connect(dsn)
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(channel, handler)
        except BaseException:
            await close_quietly(conn)
            raise
        return conn, lost

    def unavailable(failure: BaseException, delay: float) -> None:
        log.warning("listener_unavailable", channel=channel, error=str(failure), retry_in=delay)

    async def run() -> None:
        # One turn per connection: a connection that worked starts the backoff afresh.
        while True:
            reconnect = forever(
                retry_on=UNAVAILABLE, first_delay=FIRST_DELAY_SECONDS, max_delay=MAX_DELAY_SECONDS, on_retry=unavailable
            )
            conn, lost = await reconnect(connect)
            try:
                set_state(True)
                await lost.wait()
                log.warning("listener_disconnected", channel=channel)
            finally:
                set_state(False)
                await close_quietly(conn)
            # A dropped connection waits like a failed attempt: a server that accepts and then
            # drops connections at once is not hammered.
            await asyncio.sleep(FIRST_DELAY_SECONDS)

    async with in_background(run(), name=f"listen-{channel}"):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(connected.wait(), 5)
        yield connected
