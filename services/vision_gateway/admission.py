"""Admission control of the vision-gateway: who may start a stream now, and how much image memory.

Three limits, all per replica and in memory (a user spread over N replicas gets up to N times
each limit; a global limit would need a store shared by the replicas):

- `StreamAdmission`: concurrent `stream-message` requests per user (VISION_MAX_STREAMS_PER_USER)
  and requests per user per minute (VISION_STREAM_RATE_PER_MINUTE, common.rate_limit's token
  bucket). Both answer 429 `rate_limited` with Retry-After, before anything is uploaded, fetched
  or written.
- `PrepBudget`: bytes of images between download and encode, and of `/v1` bodies that carry
  images inline (VISION_PREP_BUDGET_MB). A request waits briefly for room, then gets 503 `busy`
  with Retry-After; this is what bounds the gateway's memory when many different large images
  are asked about at once, whichever entry they came through.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from common.errors import Busy, RateLimited
from common.rate_limit import RateLimiter

# Peak bytes per pixel of prepare_for_model, measured on 40 MP PNGs: RGB and RGBA are held in 4
# bytes a pixel, a palette image converted to RGB in 1 + 4, plus the reduced copy thumbnail()
# makes (RGB +178 MiB, RGBA +192 MiB, P +217 MiB; 6 x 40 M = 229 MiB). The file's bytes count
# twice (aiohttp's read buffer and the bytes object made from it).
DECODED_BYTES_PER_PIXEL = 6
FILE_COPIES = 2
# A /v1 body while it is parsed and its data: URLs decoded: the bytes read, the str json makes of
# each image's base64, and the decoded image (3/4 of that), with slack for the upload's chunks.
BODY_COPIES = 3
# How long a request waits for budget before 503 busy, and the Retry-After it then gets.
PREP_WAIT_SECONDS = 5.0
PREP_RETRY_AFTER_SECONDS = 2


def prep_cost(size_bytes: int, width: int, height: int) -> int:
    """Peak memory of fetching and preparing one image, from its metadata (before downloading)."""
    return FILE_COPIES * size_bytes + DECODED_BYTES_PER_PIXEL * width * height


class PrepBudget:
    """A byte budget with a short wait. An image costing more than the whole budget runs alone."""

    def __init__(self, limit_bytes: int, *, wait_seconds: float = PREP_WAIT_SECONDS) -> None:
        self.limit_bytes = limit_bytes
        self.in_use = 0
        self._wait_seconds = wait_seconds
        self._freed = asyncio.Event()

    @contextlib.asynccontextmanager
    async def reserve(self, cost: int) -> AsyncIterator[None]:
        reservation = await self.hold(cost)
        try:
            yield
        finally:
            reservation.release()

    async def hold(self, cost: int) -> Reservation:
        """Room for `cost` bytes until the reservation is released (for a hold that ends mid-block)."""
        cost = min(cost, self.limit_bytes)
        await self._admit(cost)
        return Reservation(self, cost)

    def _give_back(self, cost: int) -> None:
        self.in_use -= cost  # synchronous: a cancelled holder always gives its bytes back
        self._freed.set()
        self._freed = asyncio.Event()

    async def _admit(self, cost: int) -> None:
        deadline = time.monotonic() + self._wait_seconds
        while self.in_use + cost > self.limit_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Busy(
                    "the gateway is busy preparing other images; retry shortly", retry_after=PREP_RETRY_AFTER_SECONDS
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._freed.wait(), remaining)
        self.in_use += cost


class Reservation:
    """Bytes held in a PrepBudget; `release()` may be called any number of times."""

    def __init__(self, budget: PrepBudget, cost: int) -> None:
        self._budget: PrepBudget | None = budget
        self.cost = cost

    def release(self) -> None:
        if self._budget is not None:
            self._budget._give_back(self.cost)
            self._budget = None


class StreamAdmission:
    """Per-user concurrent streams and a per-user token bucket of stream requests."""

    def __init__(self, *, max_streams: int, rate_per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_streams = max_streams
        self._open: dict[str, int] = {}
        self._rate = RateLimiter(
            rate_per_minute,
            refusal="at most {per_minute} stream requests per minute per user; retry in {retry_after} s",
            clock=clock,
        )

    def open_streams(self, user_id: str) -> int:
        return self._open.get(user_id, 0)

    def enter(self, user_id: str) -> None:
        """Take one of the user's stream slots, for the request's whole life (upload to last event);
        `leave()` gives it back. A pair of calls, not a generator context manager: the slot is held
        as long as the stream, and a suspended generator would be three objects and a frame per stream."""
        if self._max_streams and self.open_streams(user_id) >= self._max_streams:
            raise RateLimited(
                f"at most {self._max_streams} streams at once per user; wait for one to finish", retry_after=1
            )
        self._rate.take(user_id)
        self._open[user_id] = self.open_streams(user_id) + 1

    def leave(self, user_id: str) -> None:
        left = self._open[user_id] - 1
        if left:
            self._open[user_id] = left
        else:
            del self._open[user_id]
