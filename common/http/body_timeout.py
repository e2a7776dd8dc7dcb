"""Time limits for reading a request body, and closing the connection of a client that broke them.

aiohttp's server has no timeout for reading a request body: a client sending one byte per second
holds a connection, a handler and a temp file for as long as it likes. `read_limits` bounds the
body by two clocks: an idle clock (no new body byte for `idle_seconds`) and an overall deadline.
When either runs out, the reading task is cancelled (so every `finally`, temp-file clean-up
included, runs) and `BodyReadTimeout` is raised in its place.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from aiohttp import web

# The idle clock is checked this many times per idle period: a stall is noticed at most a quarter
# of the idle time late, at the cost of one timer callback per check and upload.
IDLE_CHECKS_PER_PERIOD = 4
MIN_CHECK_INTERVAL = 0.05
# After the 408 and a FIN, how long to keep absorbing bytes the client had already sent.
CLOSE_GRACE_SECONDS = 2.0


class BodyReadTimeout(Exception):
    """The body did not arrive in time; `reason` is "idle" or "deadline"."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


class BodyClocks:
    """The idle check and the deadline of one body; `pause()` stops both while the handler waits
    on someone else (the gateway waiting for the image-store to process a forwarded image)."""

    def __init__(self, progress: Callable[[], int], idle_seconds: float, deadline_seconds: float) -> None:
        self._progress = progress
        self.idle_seconds = idle_seconds
        self.deadline_seconds = deadline_seconds
        self._loop = asyncio.get_running_loop()
        self._interval = max(MIN_CHECK_INTERVAL, idle_seconds / IDLE_CHECKS_PER_PERIOD)
        self._deadline_at = self._loop.time() + deadline_seconds
        self.timeout = asyncio.timeout_at(self._deadline_at)
        self._seen = progress()
        self._moved_at = self._loop.time()
        self._paused_at: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self.idle_fired = False

    def start(self) -> None:
        self._handle = self._loop.call_later(self._interval, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def pause(self) -> None:
        if self._paused_at is not None or self.timeout.expired():
            return
        self._paused_at = self._loop.time()
        self.stop()
        self.timeout.reschedule(None)

    def resume(self) -> None:
        """Restart both clocks where they stopped: the paused time counts against neither."""
        if self._paused_at is None or self.timeout.expired():
            return
        now = self._loop.time()
        self._deadline_at += now - self._paused_at
        self._paused_at = None
        self._seen, self._moved_at = self._progress(), now
        self.timeout.reschedule(self._deadline_at)
        self.start()

    def _check(self) -> None:
        if self.timeout.expired():
            return  # the deadline fired in this same loop iteration; it stands
        now = self._loop.time()
        current = self._progress()
        if current != self._seen:
            self._seen, self._moved_at = current, now
        elif now - self._moved_at >= self.idle_seconds:
            self.idle_fired = True
            self.timeout.reschedule(now)  # expire now: cancels the reading task
            return
        self._handle = self._loop.call_later(self._interval, self._check)


@contextlib.asynccontextmanager
async def read_limits(
    progress: Callable[[], int], *, idle_seconds: float, deadline_seconds: float
) -> AsyncIterator[BodyClocks]:
    """Run a body-reading block under both clocks; `progress()` counts the body bytes received.

    Nothing blocks: the clocks are a timer callback and an `asyncio.timeout`, so a hundred slow
    clients cost a hundred timer handles, and the cancellation reaches whatever read is pending.
    """
    clocks = BodyClocks(progress, idle_seconds, deadline_seconds)
    try:
        async with clocks.timeout:
            clocks.start()
            try:
                yield clocks
            finally:
                clocks.stop()
    except TimeoutError:
        if not clocks.timeout.expired():
            raise  # someone else's timeout
        if clocks.idle_fired:
            raise BodyReadTimeout(f"no upload data arrived for {idle_seconds:g} s", reason="idle") from None
        raise BodyReadTimeout(f"the upload did not complete within {deadline_seconds:g} s", reason="deadline") from None


def close_after_response(request: web.Request) -> None:
    """Hang up on the client as soon as the response to `request` has been written.

    `Connection: close` alone is not enough: aiohttp then keeps reading ("lingering") the rest of
    an unread body for up to 10 s, which is what a slow client must not get. Closing the socket
    outright is not right either: bytes the client still has in flight would hit a closed socket,
    and the kernel's reset can destroy the 408 before the client reads it (seen with 13 of 101
    clients sending 1 byte/s). So: send FIN right after the response (the client sees the answer
    and end-of-stream at once), absorb what is still arriving for CLOSE_GRACE_SECONDS, then close.
    """
    task = asyncio.current_task()
    protocol = request.protocol
    transport = request.transport
    if task is None or protocol is None or transport is None:
        return

    def hang_up(_: object) -> None:
        if transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()  # after the buffered response: asyncio flushes first
            asyncio.get_running_loop().call_later(CLOSE_GRACE_SECONDS, protocol.force_close)
        else:
            protocol.force_close()

    task.add_done_callback(hang_up)
