"""Server-Sent Events on an aiohttp StreamResponse, with keep-alive pings.

Like aiohttp-sse's EventSourceResponse, a stream is kept alive while silent: whenever nothing has
been written for SSE_HEARTBEAT_SECONDS a `: ping` comment goes out, so proxies and browsers keep a
silent stream (a model loading, a database write being retried) open. Not by a timer task per
stream: the replica's one Heartbeat looks at all its open streams a few times per interval and
starts a short ping task only for a stream that is due, PING_SLICE streams at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from aiohttp import web

from common.background import in_background
from common.slices import in_slices

SSE_HEADERS = {
    # The charset named, as OpenAI's API does: a client that honours the header (requests'
    # iter_lines(decode_unicode=True)) would otherwise read UTF-8 answers as Latin-1.
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    # nginx (and ingress-nginx) would otherwise buffer the stream.
    "X-Accel-Buffering": "no",
}


# Streams looked at (and pinged when due) between two yields to the event loop. Streams that fell
# silent together are due together: 8,000 of them were ~17 ms of task starts and ~10 ms of pings
# (more with real sockets) in one go; 250 are well under a millisecond of each.
PING_SLICE = 250


class _HeadersWithFirstEvent(web.StreamResponse):
    """Status line and headers leave with the first event (the `start` event, written right after
    prepare) in one send, not in a packet of their own: aiohttp's web.Response does the same with its
    body through this class attribute."""

    _send_headers_immediately = False


class Heartbeat:
    """The replica's keep-alive clock for all its event streams (one task, not one per stream).

    Every quarter of `seconds` (at least once a second) it pings each stream silent for `seconds`,
    each ping in a short task of its own, so a client that reads slowly holds up only its own.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._streams: set[EventStream] = set()

    def add(self, stream: EventStream) -> None:
        self._streams.add(stream)

    def discard(self, stream: EventStream) -> None:
        self._streams.discard(stream)

    async def _run(self) -> None:
        period = min(1.0, self.seconds / 4)
        while True:
            await asyncio.sleep(period)
            await self.ping_due()

    async def ping_due(self) -> None:
        """Start a ping for every stream silent for `seconds`; the loop runs between slices of streams."""
        due = time.monotonic() - self.seconds
        streams = list(self._streams)  # streams come and go while this yields
        # Between slices the pings started so far go out, with everything else ready.
        async for part in in_slices(streams, PING_SLICE):
            for stream in part:
                if stream.last_write <= due and stream in self._streams:
                    stream.start_ping()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with in_background(self._run(), name="sse-heartbeat"):
            yield


HEARTBEAT_KEY = web.AppKey("sse_heartbeat", Heartbeat)


class EventStream:
    """One SSE response: `send()` events as `data: <json>` lines; pinged by `heartbeat` while idle."""

    __slots__ = ("_heartbeat", "_lock", "_ping", "last_write", "response")

    def __init__(self, *, heartbeat: Heartbeat | None, headers: Mapping[str, str] | None = None) -> None:
        self.response = _HeadersWithFirstEvent(headers={**SSE_HEADERS, **(headers or {})})
        self._heartbeat = heartbeat
        self.last_write = time.monotonic()
        self._ping: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def prepare(self, request: web.Request) -> None:
        await self.response.prepare(request)
        self.last_write = time.monotonic()
        if self._heartbeat is not None:
            self._heartbeat.add(self)

    async def send(self, event: Mapping[str, Any]) -> None:
        await self._write(b"data: " + orjson.dumps(event) + b"\n\n")

    async def send_data(self, data: str) -> None:
        """A raw `data:` line, for wire formats with non-JSON sentinels (OpenAI's `[DONE]`)."""
        await self._write(f"data: {data}\n\n".encode())

    async def ping(self) -> None:
        await self._write(b": ping\n\n")

    async def _write(self, data: bytes) -> None:
        async with self._lock:  # a ping never lands inside an event
            await self.response.write(data)
            self.last_write = time.monotonic()

    def start_ping(self) -> None:
        """Ping in the background, unless a ping is still on its way."""
        if self._ping is None:
            self._ping = asyncio.create_task(self._ping_once(), name="sse-ping")

    async def _ping_once(self) -> None:
        try:
            await self.ping()
        except (ConnectionError, RuntimeError):
            if self._heartbeat is not None:  # the client is gone; the next send() tells the relay
                self._heartbeat.discard(self)
        finally:
            self._ping = None

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.discard(self)
        ping, self._ping = self._ping, None
        if ping is not None:
            ping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ping
