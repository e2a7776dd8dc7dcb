"""Server-Sent Events on an aiohttp StreamResponse, with keep-alive pings built in.

Like aiohttp-sse's EventSourceResponse, the response object owns the heartbeat: whenever
nothing has been written for `heartbeat_seconds` it writes a `: ping` comment, so proxies and
browsers keep a silent stream (a model loading, a database write being retried) open.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

SSE_HEADERS = {
    # The charset named, as OpenAI's API does: a client that honours the header (requests'
    # iter_lines(decode_unicode=True)) would otherwise read UTF-8 answers as Latin-1.
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    # nginx (and ingress-nginx) would otherwise buffer the stream.
    "X-Accel-Buffering": "no",
}


class _HeadersWithFirstEvent(web.StreamResponse):
    """Status line and headers leave with the first event (the `start` event, written right after
    prepare) in one send, not in a packet of their own: aiohttp's web.Response does the same with its
    body through this class attribute."""

    _send_headers_immediately = False


class EventStream:
    """One SSE response: `send()` events as `data: <json>` lines; pings while idle."""

    def __init__(self, *, heartbeat_seconds: float, headers: Mapping[str, str] | None = None) -> None:
        self.response = _HeadersWithFirstEvent(headers={**SSE_HEADERS, **(headers or {})})
        self._heartbeat_seconds = heartbeat_seconds
        self._last_write = time.monotonic()
        self._keepalive: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def prepare(self, request: web.Request) -> None:
        await self.response.prepare(request)
        self._last_write = time.monotonic()
        self._keepalive = asyncio.create_task(self._ping_while_idle(), name="sse-keepalive")

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
            self._last_write = time.monotonic()

    async def _ping_while_idle(self) -> None:
        while True:
            idle = time.monotonic() - self._last_write
            if idle < self._heartbeat_seconds:
                await asyncio.sleep(self._heartbeat_seconds - idle)
                continue
            try:
                await self.ping()
            except (ConnectionError, RuntimeError):
                return  # the client is gone; the next send() tells the relay

    async def close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
