"""A LISTEN connection that outlives database restarts.

Pooled connections drop their LISTENs on release, so a listener needs a connection of its own.
It reconnects with backoff and tells its owner when it starts and stops listening: whoever
relies on notifications (a cache) must not trust what it holds while none can arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import asyncpg
import structlog

log = structlog.get_logger("retina.pg_listen")

# asyncpg types listener arguments loosely (connection or pool proxy; payload as object).
Handler = Callable[[object, int, str, object], None]


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

    async def run() -> None:
        delay = 0.5
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(dsn)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(channel, handler)
                set_state(True)
                delay = 0.5
                await lost.wait()
                log.warning("listener_disconnected", channel=channel)
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("listener_unavailable", channel=channel, error=str(exc), retry_in=delay)
            finally:
                set_state(False)
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    task = asyncio.create_task(run(), name=f"listen-{channel}")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(connected.wait(), 5)
    try:
        yield connected
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
