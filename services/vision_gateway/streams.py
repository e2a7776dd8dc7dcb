"""Live streams on this replica, and stop requests that reach them from any replica.

A stop is a Postgres NOTIFY on a dedicated connection (pooled connections UNLISTEN on release);
the listener reconnects with backoff. NOTIFY is a hint, not a queue: the database row says
whether a stream is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import structlog

from common.pg_listen import listening
from services.vision_gateway.repository import STOP_CHANNEL

log = structlog.get_logger("retina.vision_gateway.streams")


@dataclass
class LiveStream:
    stream_id: uuid.UUID
    owner_id: str
    stop_reason: str | None = None
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.wakeup.set()


class StreamRegistry:
    def __init__(self) -> None:
        self._streams: dict[uuid.UUID, LiveStream] = {}

    @contextlib.contextmanager
    def register(self, stream_id: uuid.UUID, owner_id: str) -> Iterator[LiveStream]:
        live = LiveStream(stream_id, owner_id)
        self._streams[stream_id] = live
        try:
            yield live
        finally:
            self._streams.pop(stream_id, None)

    def stop_local(self, stream_id: uuid.UUID, reason: str = "stopped") -> bool:
        live = self._streams.get(stream_id)
        if live is None:
            return False
        live.stop(reason)
        return True

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


def listen_for_stops(registry: StreamRegistry, dsn: str) -> contextlib.AbstractAsyncContextManager[asyncio.Event]:
    """A LISTEN connection for stop requests for the app's lifetime; the event is set while listening.

    Start-up waits up to 5 s for it; readiness reports it when the database does not allow that.
    """
    return listening(dsn, STOP_CHANNEL, registry._on_notify)
