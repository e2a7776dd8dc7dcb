"""Admission by decoded bytes, and the memory model the shipped defaults are checked against.

Counting decodes is not enough: a 38-byte WebP can declare 40 MP, and two of them at once took
1.3 GiB. So each decode is charged what its header says it will hold (width x height x bytes
per pixel, dimensions.decoded_bytes) and waits, briefly, until that fits under the budget.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Final

from services.image_store.imaging.dimensions import WIDE_PIXEL_BYTES

MIB: Final = 1024 * 1024

# Measured on the image-store process tree (bench/RESULTS.md, "Decode memory"), rounded up: the
# server process after start-up (53-70 MiB) plus multiprocessing's resource tracker (12 MiB);
# each idle decode worker (51 MiB); and the peak resident bytes of one decode per byte it is
# charged: a 40 MP lossless WebP (152.6 MiB charged) added 723 MiB = 4.74x (libwebp's decode
# buffer, Pillow's image, the encoder's ARGB copy and its working set). Under a loaded machine the
# whole suite saw +880 MiB for the same four-bomb burst (5.77x: a worker keeps part of its peak
# resident after a decode while the next one starts), so the factor is 6.
SERVER_BASELINE_BYTES: Final = 96 * MIB
WORKER_BASELINE_BYTES: Final = 56 * MIB
DECODE_PEAK_FACTOR: Final = 6.0


class BudgetExhausted(Exception):
    """The decode did not fit under the byte budget within the wait allowed."""


class ByteBudget:
    """A weighted semaphore over the decoded bytes of the decodes running.

    A decode charged more than the whole budget is clamped to it, so it runs alone rather than
    never. Waiters are woken on every release and retry; a large decode can lose to a stream of
    small ones, but only for `wait_seconds`, after which the client is told to retry.
    """

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes < 1:
            raise ValueError("the decode budget must be at least one byte")
        self.limit = limit_bytes
        self._used = 0
        self._waiters: set[asyncio.Future[None]] = set()

    @property
    def used(self) -> int:
        return self._used

    @contextlib.asynccontextmanager
    async def reserve(self, cost: int, *, wait_seconds: float) -> AsyncIterator[int]:
        """Hold `cost` bytes (clamped to the limit) for the block; raises BudgetExhausted."""
        charged = max(0, min(cost, self.limit))
        await self._acquire(charged, wait_seconds)
        try:
            yield charged
        finally:
            self._release(charged)

    async def _acquire(self, charged: int, wait_seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while self._used + charged > self.limit:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BudgetExhausted(
                    f"{self._used} of {self.limit} decode bytes are in use; this image needs {charged}"
                )
            waiter = loop.create_future()
            self._waiters.add(waiter)
            try:
                await asyncio.wait({waiter}, timeout=remaining)
            finally:
                self._waiters.discard(waiter)
        self._used += charged

    def _release(self, charged: int) -> None:
        # Synchronous on purpose: it runs in `finally` even while the task is being cancelled.
        self._used -= charged
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


def worst_case_resident_bytes(*, workers: int, budget_bytes: int, max_pixels: int) -> int:
    """The most the image-store's processes can hold at once under these settings.

    Decodes in flight are bounded by the budget, except that one image up to IMAGE_MAX_PIXELS is
    always admitted alone, and by the worker count (one decode per worker).
    """
    largest = max_pixels * WIDE_PIXEL_BYTES
    in_flight = min(max(budget_bytes, largest), workers * largest)
    return int(SERVER_BASELINE_BYTES + workers * WORKER_BASELINE_BYTES + DECODE_PEAK_FACTOR * in_flight)
