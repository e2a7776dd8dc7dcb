"""Live streams on this replica: stop requests that reach them from any replica, and their liveness.

A stop is a Postgres NOTIFY on a dedicated connection (pooled connections UNLISTEN on release);
the listener reconnects with backoff. NOTIFY is a hint, not a queue: the database row says
whether a stream is still running.

Liveness: the registry knows every `streaming` row this replica still owes a final write (its
live streams, and finals being written). StreamLiveness touches all of them at once, one
statement per STREAM_SWEEP_AFTER_SECONDS / 3 on a connection of its own, however many there are
and however far behind their progress saves are: the sweeper (sweeper.py) closes only rows that
no replica touches any more.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from dataclasses import dataclass, field

import asyncpg
import structlog

from common.background import in_background
from common.db import connect
from common.pg_listen import listening
from services.vision_gateway.repository import STOP_CHANNEL, touch_streams

log = structlog.get_logger("retina.vision_gateway.streams")

# Waits after a failed touch: 0.5 s doubling, capped at the touch interval.
TOUCH_RETRY_FIRST_SECONDS = 0.5
# Start-up waits this long for the first touch (readiness reports it until then).
TOUCH_STARTUP_WAIT_SECONDS = 5.0


@dataclass
class LiveStream:
    stream_id: uuid.UUID
    owner_id: str
    stop_reason: str | None = None
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self, reason: str) -> bool:
        """Ask the stream to stop; True when this is the first request (the others change nothing)."""
        first = self.stop_reason is None
        if first:
            self.stop_reason = reason
        self.wakeup.set()
        return first


class StreamRegistry:
    def __init__(self) -> None:
        self._streams: dict[uuid.UUID, LiveStream] = {}
        # Rows (message IDs) this replica keeps alive; counted, as a stream and its final write overlap.
        self._held: collections.Counter[uuid.UUID] = collections.Counter()

    @contextlib.contextmanager
    def register(self, stream_id: uuid.UUID, owner_id: str, message_id: uuid.UUID) -> Iterator[LiveStream]:
        live = LiveStream(stream_id, owner_id)
        self._streams[stream_id] = live
        try:
            with self.holding(message_id):
                yield live
        finally:
            self._streams.pop(stream_id, None)

    @contextlib.contextmanager
    def holding(self, message_id: uuid.UUID) -> Iterator[None]:
        """Keep the row alive (touched, never swept) while the block runs."""
        self.hold(message_id)
        try:
            yield
        finally:
            self.release(message_id)

    def hold(self, message_id: uuid.UUID) -> None:
        self._held[message_id] += 1

    def release(self, message_id: uuid.UUID) -> None:
        self._held[message_id] -= 1
        if self._held[message_id] <= 0:
            del self._held[message_id]

    def running_ids(self) -> list[uuid.UUID]:
        """The streams running on this replica right now that nothing has asked to stop (stop_catchup.py)."""
        return [stream_id for stream_id, live in self._streams.items() if live.stop_reason is None]

    def held(self) -> list[uuid.UUID]:
        """The rows this replica keeps alive right now."""
        return list(self._held)

    def stop_local(self, stream_id: uuid.UUID, reason: str = "stopped") -> bool:
        """Stop the stream if it runs here; True when it does (whether or not it was stopping already)."""
        live = self._streams.get(stream_id)
        if live is None:
            return False
        live.stop(reason)
        return True

    def stop_running(self, stream_id: uuid.UUID, reason: str = "stopped") -> bool:
        """Stop the stream if it runs here; True only when nothing had asked it to stop before."""
        live = self._streams.get(stream_id)
        return live is not None and live.stop(reason)

    def stop_all(self, reason: str) -> int:
        for live in list(self._streams.values()):
            live.stop(reason)
        return len(self._streams)

    def _on_notify(self, connection: object, pid: int, channel: str, payload: object) -> None:
        """asyncpg listener; NOTIFY payloads arrive as str (asyncpg types them as object)."""
        del connection, pid, channel
        text = str(payload)
        try:
            self.stop_local(uuid.UUID(text))
        except ValueError:
            log.warning("bad_stop_notification", payload=text[:64])


def listen_for_stops(
    registry: StreamRegistry, dsn: str, on_state: Callable[[bool], None] | None = None
) -> contextlib.AbstractAsyncContextManager[asyncio.Event]:
    """A LISTEN connection for stop requests for the app's lifetime; the event is set while listening.

    `dsn` is DATABASE_DIRECT_URL when set (LISTEN needs a session of its own). Start-up waits up to
    5 s for it; readiness reports it when the database does not allow that. `on_state` hears every
    connect and disconnect (stop_catchup.py makes up for stops missed meanwhile).
    """
    return listening(dsn, STOP_CHANNEL, registry._on_notify, on_state)


class StreamLiveness:
    """This replica's proof of life: every `interval`, one UPDATE touches every row it holds.

    The statement runs on a connection of its own (reconnected after any failure), so a pool whose
    queue is full of progress saves cannot delay it. `unbroken_seconds()` is how long every touch
    has succeeded on time; the sweeper on this replica waits for that to reach the sweep threshold,
    so after an outage that kept every replica from touching, none sweeps before all had a chance.
    """

    def __init__(
        self, dsn: str, held: Callable[[], Collection[uuid.UUID]], *, interval: float, transaction_pooler: bool = False
    ) -> None:
        self._dsn = dsn
        self._transaction_pooler = transaction_pooler  # DATABASE_URL is a transaction pooler: no statement cache
        self._held = held
        self.interval = interval
        # A touch (or connect) slower than this failed; at least 1 s, so a tiny interval still works.
        self._timeout = max(1.0, interval)
        self._conn: asyncpg.Connection | None = None
        self._unbroken_since: float | None = None
        self._last_touch: float | None = None
        self.touched = asyncio.Event()  # set while the last touch succeeded

    def unbroken_seconds(self) -> float:
        """Seconds since the start of the current run of successful, timely touches (0: none)."""
        if self._unbroken_since is None:
            return 0.0
        return asyncio.get_running_loop().time() - self._unbroken_since

    async def touch_once(self) -> bool:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await connect(
                    self._dsn, transaction_pooler=self._transaction_pooler, connect_timeout=self._timeout
                )
            await touch_streams(self._conn, self._held(), within=self._timeout)
        except Exception as exc:  # noqa: BLE001 - any failure: not alive as far as others can see
            log.warning("stream_liveness_failed", error=repr(exc))
            self.touched.clear()
            self._unbroken_since = None
            await self._close()
            return False
        late = self._last_touch is not None and started - self._last_touch > 2 * self._timeout + self.interval
        if self._unbroken_since is None or late:
            self._unbroken_since = started
        self._last_touch = started
        self.touched.set()
        return True

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        retry = TOUCH_RETRY_FIRST_SECONDS
        while True:
            started = loop.time()
            if await self.touch_once():
                retry = TOUCH_RETRY_FIRST_SECONDS
                wait = self.interval - (loop.time() - started)
            else:
                wait, retry = min(retry, self.interval), min(retry * 2, self.interval)
            await asyncio.sleep(max(0.0, wait))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Touch for the block's lifetime; start-up waits a few seconds for the first touch."""
        try:
            async with in_background(self._run(), name="stream-liveness"):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.touched.wait(), TOUCH_STARTUP_WAIT_SECONDS)
                yield
        finally:
            await self._close()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=2)
            except Exception:  # noqa: BLE001 - a connection that cannot close cleanly is cut
                conn.terminate()
