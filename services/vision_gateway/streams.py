"""Live streams on this replica: stop requests that reach them from any replica, and their liveness.

A stop is a Postgres NOTIFY on a dedicated connection (pooled connections UNLISTEN on release);
the listener reconnects with backoff. NOTIFY is a hint, not a queue: the database row says
whether a stream is still running.

Liveness and progress: the registry knows every `streaming` row this replica still owes a final
write (its live streams, and finals being written). StreamLiveness touches all of them at once,
one statement per STREAM_SWEEP_AFTER_SECONDS / 3, and in between saves the text so far of every
stream that grew, one statement per progress interval for all of them (chat/progress.py's
AnswerProgress says which), both on the one connection of its own: per replica, not per stream.
The sweeper (sweeper.py) closes only rows that no replica touches any more.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from types import TracebackType
from typing import Protocol

import asyncpg
import structlog

from common.background import in_background
from common.db import close_quietly, connect
from common.pg_listen import listening
from services.vision_gateway.repository import STOP_CHANNEL, ProgressRow, save_progress, touch_streams

log = structlog.get_logger("retina.vision_gateway.streams")

# Waits after a failed touch: 0.5 s doubling, capped at the touch interval.
TOUCH_RETRY_FIRST_SECONDS = 0.5
# Start-up waits this long for the first touch (readiness reports it until then).
TOUCH_STARTUP_WAIT_SECONDS = 5.0


class LiveStream:
    """A stream running on this replica: why it was asked to stop, and who acts on that right away.

    Lean on purpose (a replica holds thousands): no event, no watcher task; whoever waits for a
    stop (the relay) registers a callback, which `stop()` calls at once. It is its own context
    manager (`StreamRegistry.register`), not a generator one held for the stream's whole life.
    """

    __slots__ = ("_on_stop", "_registry", "message_id", "owner_id", "stop_reason", "stream_id")

    def __init__(self, registry: StreamRegistry, stream_id: uuid.UUID, owner_id: str, message_id: uuid.UUID) -> None:
        self._registry = registry
        self.stream_id = stream_id
        self.owner_id = owner_id
        self.message_id = message_id
        self.stop_reason: str | None = None
        self._on_stop: Callable[[], object] | None = None

    def __enter__(self) -> LiveStream:
        self._registry._add(self)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._registry._remove(self)

    def stop(self, reason: str) -> bool:
        """Ask the stream to stop; True when this is the first request (the others change nothing)."""
        first = self.stop_reason is None
        if first:
            self.stop_reason = reason
        if self._on_stop is not None:
            self._on_stop()
        return first

    def on_stop(self, callback: Callable[[], object] | None) -> None:
        """Call `callback` when a stop is asked for (now, if it was already); None: no longer."""
        self._on_stop = callback
        if callback is not None and self.stop_reason is not None:
            callback()


class StreamRegistry:
    def __init__(self) -> None:
        self._streams: dict[uuid.UUID, LiveStream] = {}
        # Rows (message IDs) this replica keeps alive; counted, as a stream and its final write overlap.
        self._held: collections.Counter[uuid.UUID] = collections.Counter()

    def register(self, stream_id: uuid.UUID, owner_id: str, message_id: uuid.UUID) -> LiveStream:
        """`with registry.register(...) as live`: the stream runs here, its row held, for the block."""
        return LiveStream(self, stream_id, owner_id, message_id)

    def _add(self, live: LiveStream) -> None:
        self._streams[live.stream_id] = live
        self.hold(live.message_id)

    def _remove(self, live: LiveStream) -> None:
        try:
            self.release(live.message_id)
        finally:
            self._streams.pop(live.stream_id, None)

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


class ProgressSource(Protocol):
    """The partial answers this replica has not saved yet (chat/progress.py's AnswerProgress)."""

    interval: float  # seconds between saves: what a crash can lose

    def unsaved(self, limit: int | None = None) -> Sequence[ProgressRow]: ...

    def saved(self, rows: Sequence[ProgressRow]) -> None: ...


class StreamLiveness:
    """This replica's proof of life and its progress saves, on one connection of its own.

    Every `interval` one UPDATE touches every row it holds; every `progress.interval` in between,
    one UPDATE saves the text of all streams that grew since their last save. The connection is
    not the pool's (reconnected after any failure), so requests queueing for the pool cannot delay
    either. The two statements take turns, never overlap: a slow progress save (it times out
    after its interval, or the touch's timeout if shorter) delays the next touch by at most that
    long and never makes it skip a row, so however slow saves get, a held row's `progress_at`
    stays within the sweep threshold (touch interval + save timeout + touch timeout: 42 s of 60
    with the defaults).
    `unbroken_seconds()` is how long every touch has succeeded on time; the sweeper on this replica
    waits for that to reach the sweep threshold, so after an outage that kept every replica from
    touching, none sweeps before all had a chance. Progress saves are best effort: a failed one is
    logged and its streams are tried again at the next interval (and their final writes still
    come); it does not count against liveness, and none is tried while touches fail (they own
    reconnecting). After a save timed out, the next ones take fewer
    streams (halving per timeout, doubling back per success), least recently saved first.
    """

    def __init__(
        self,
        dsn: str,
        held: Callable[[], Collection[uuid.UUID]],
        *,
        interval: float,
        progress: ProgressSource | None = None,
        transaction_pooler: bool = False,
    ) -> None:
        self._dsn = dsn
        self._transaction_pooler = transaction_pooler  # DATABASE_URL is a transaction pooler: no statement cache
        self._held = held
        self._progress = progress
        self.interval = interval
        # A touch (or connect) slower than this failed; at least 1 s, so a tiny interval still works.
        self._timeout = max(1.0, interval)
        self._conn: asyncpg.Connection | None = None
        # Streams per progress save after one timed out (halved per timeout, doubled per success); None: all.
        self._save_limit: int | None = None
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
            await touch_streams(await self._connection(), self._held(), within=self._timeout)
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

    async def save_progress_once(self) -> int:
        """Save every stream's text that grew since its last save, in one statement; how many were written."""
        if self._progress is None or not self.touched.is_set():
            return 0  # the database is not answering touches: they reconnect; saves resume with them
        rows = self._progress.unsaved(self._save_limit)
        if not rows:
            return 0
        try:
            # Done before the next is due, or it counts as too slow: a touch waits for it at most that long.
            within = min(self._timeout, self._progress.interval)
            written = await save_progress(await self._connection(), rows, within=within)
        except Exception as exc:  # noqa: BLE001 - progress is best effort; the next interval and the final write follow
            if isinstance(exc, TimeoutError):  # a database too slow for all: fewer next time, in turn
                self._save_limit = max(1, len(rows) // 2)
            log.warning("progress_save_failed", streams=len(rows), error=repr(exc))
            await self._close()
            return 0
        # Rows not written (locked for a moment, or no longer streaming) stay unsaved: offered again.
        self._progress.saved([row for row in rows if row.message_id in written])
        if self._save_limit is not None:
            self._save_limit = None if self._save_limit >= len(rows) * 2 else self._save_limit * 2
        return len(written)

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await connect(
                self._dsn, transaction_pooler=self._transaction_pooler, connect_timeout=self._timeout
            )
        return self._conn

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        retry = TOUCH_RETRY_FIRST_SECONDS
        next_touch = next_save = loop.time()
        while True:
            started = loop.time()
            if started >= next_touch:
                if await self.touch_once():
                    retry = TOUCH_RETRY_FIRST_SECONDS
                    next_touch = started + self.interval
                else:
                    next_touch = loop.time() + min(retry, self.interval)
                    retry = min(retry * 2, self.interval)
            if self._progress is not None and started >= next_save:
                next_save = started + self._progress.interval
                await self.save_progress_once()
            wake = next_touch if self._progress is None else min(next_touch, next_save)
            await asyncio.sleep(max(0.0, wake - loop.time()))

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
        if conn is not None:
            await close_quietly(conn)
