"""Bounded, time-limited image decoding in worker processes.

Pillow work is CPU-bound and a hostile file can be slow or memory-hungry, so it runs in worker
processes (spawned, never forked from the event loop's threaded process; limits and the tie to
the server in decode_worker). Admission, in order:
1. count: decodes running plus waiting stay under `max_pending`, else DecoderBusy (503) at once;
2. a free worker (a semaphore sized to the pool, so pebble's own queue stays empty);
3. bytes: the decoded size the header announces must fit the ByteBudget within a brief wait,
   else DecoderBusy. Charged only once a worker is free: a queued upload is a file on disk and
   holds no memory, so a burst of ordinary photos queues as before instead of being refused.

pebble's ProcessPool does the process work: a task past its timeout, or cancelled while it
runs, has its worker (and only that worker) killed and replaced. ProcessPoolExecutor could not
stop a running task, which cost ~110 lines of executor replacement and neighbour re-runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Final

from pebble import ProcessExpired, ProcessFuture, ProcessPool

from common.errors import InvalidImage
from common.retry import attempts
from services.image_store.imaging.decode_budget import BudgetExhausted, ByteBudget
from services.image_store.imaging.decode_worker import decode_task, init_worker
from services.image_store.imaging.dimensions import decoded_bytes
from services.image_store.imaging.pipeline import ProcessedImage, ValidationLimits

DEFAULT_MEMORY_LIMIT_BYTES: Final = 1536 * 1024 * 1024
# Pillow's own decompression-bomb threshold inside workers (its warning is an error there). Our
# ValidationLimits.max_pixels is the real limit; this backstop sits at the highest value the
# settings accept (IMAGE_MAX_PIXELS) so it never overrides an operator's choice.
DEFAULT_PILLOW_MAX_PIXELS: Final = 500_000_000
# Without a budget the pool admits by count only (tests of other behaviour use this).
UNLIMITED_BUDGET_BYTES: Final = 2**62
DEFAULT_BUDGET_WAIT_SECONDS: Final = 2.0
START_TIMEOUT_SECONDS: Final = 60.0
# A worker killed by its CPU allowance (RLIMIT_CPU's soft limit sends SIGXCPU) timed out.
_CPU_LIMIT_EXITCODE: Final = -signal.SIGXCPU


def _died_innocently(exc: BaseException) -> bool:
    """A worker died, not of its CPU limit: worth one more try on a fresh worker."""
    return isinstance(exc, ProcessExpired) and exc.exitcode != _CPU_LIMIT_EXITCODE


class DecoderBusy(Exception):
    """Too many decodes (by count or by bytes) are running and waiting, or the pool is closed."""


class DecodeTimeout(Exception):
    """A decode took longer than the limit; its worker was killed and replaced."""


def worker_processes(
    workers: int,
    *,
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
    pillow_max_pixels: int = DEFAULT_PILLOW_MAX_PIXELS,
) -> ProcessPool:
    """The decode worker processes (started on first use); `memory_limit_bytes` is each worker's
    RLIMIT_AS (0 disables it)."""
    return ProcessPool(
        max_workers=workers,
        # Not fork: the parent runs an event loop and threads, which fork would copy mid-flight.
        context=multiprocessing.get_context("spawn"),
        initializer=init_worker,
        initargs=(os.getpid(), memory_limit_bytes, pillow_max_pixels),
    )


class DecodePool:
    def __init__(
        self,
        workers: int,
        timeout_seconds: float,
        max_pending: int,
        *,
        budget_bytes: int = UNLIMITED_BUDGET_BYTES,
        budget_wait_seconds: float = DEFAULT_BUDGET_WAIT_SECONDS,
        memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
        pillow_max_pixels: int = DEFAULT_PILLOW_MAX_PIXELS,
        processes: ProcessPool | None = None,
    ) -> None:
        """`max_pending` counts decodes running plus waiting; `budget_bytes` caps the decoded
        bytes they may hold; `memory_limit_bytes` is each worker's RLIMIT_AS (0 disables it).
        `processes` (from worker_processes) are workers someone else owns, e.g. one set shared by
        a test process: they replace the pool's own, and close() leaves them running."""
        if workers < 1 or max_pending < 1 or timeout_seconds <= 0:
            raise ValueError("workers and max_pending must be >= 1 and timeout_seconds > 0")
        self._workers = workers
        self._timeout = timeout_seconds
        self._max_pending = max_pending
        self._budget = ByteBudget(budget_bytes)
        self._budget_wait = budget_wait_seconds
        self._slots = asyncio.Semaphore(workers)
        self._in_flight = 0
        self._owns_processes = processes is None
        self._pool = (
            processes
            if processes is not None
            else worker_processes(workers, memory_limit_bytes=memory_limit_bytes, pillow_max_pixels=pillow_max_pixels)
        )
        self._started = False
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Decodes running or waiting for a worker right now."""
        return self._in_flight

    @property
    def budget(self) -> ByteBudget:
        """The byte budget decodes are admitted by (metrics read it; tests can hold part of it)."""
        return self._budget

    @property
    def budget_used_bytes(self) -> int:
        return self._budget.used

    async def start(self) -> None:
        """Spawn the workers now and prove each one starts (e.g. the memory cap is not too low).

        PR_SET_PDEATHSIG fires when the *thread* that spawned a worker exits, not the process.
        The first schedule starts pebble's pool, and its first workers, from the event loop's
        thread (it lives as long as the server); replacements come from pebble's manager
        thread, which lives as long as the pool.
        """
        if self._closed:
            raise RuntimeError("DecodePool was closed")
        if self._started:
            return
        futures = [self._pool.schedule(os.getpid) for _ in range(self._workers)]
        try:
            for future in futures:
                await asyncio.wait_for(asyncio.wrap_future(future), START_TIMEOUT_SECONDS)
        except BaseException:
            await self.close()
            raise
        self._started = True

    async def close(self) -> None:
        """Let running decodes finish (for at most one timeout), then stop the workers; shared
        workers are left running (the server has finished its requests before it closes this)."""
        self._closed = True
        if not self._owns_processes:
            return
        self._pool.close()
        try:
            await asyncio.to_thread(self._pool.join, self._timeout)
        except TimeoutError:
            self._pool.stop()
            await asyncio.to_thread(self._pool.join)

    async def process(self, source: Path, destination: Path, limits: ValidationLimits) -> ProcessedImage:
        """Run process_image_file in a worker. Raises the content's refusal (as raised there),
        DecoderBusy when overloaded, DecodeTimeout after `timeout_seconds`."""
        if not self._started and not self._closed:
            raise RuntimeError("DecodePool.start() was not called")
        if self._closed:
            raise DecoderBusy("the image decoder is shutting down")
        if self._in_flight >= self._max_pending:
            raise DecoderBusy(f"{self._in_flight} image decodes are already running or waiting")
        self._in_flight += 1
        try:
            cost = await asyncio.to_thread(
                decoded_bytes, source, max_pixels=limits.max_pixels, max_frames=limits.max_frames
            )
            async with self._slots, self._budget.reserve(cost, wait_seconds=self._budget_wait):
                return await self._run(source, destination, limits)
        except BudgetExhausted as exc:
            raise DecoderBusy(str(exc)) from exc
        finally:
            self._in_flight -= 1

    # ---- internals -----------------------------------------------------------------------

    async def _run(self, source: Path, destination: Path, limits: ValidationLimits) -> ProcessedImage:
        """One retry after a worker died: the kernel's OOM killer may have picked an innocent one;
        a file that kills its worker twice is refused."""
        try:
            return await attempts(2, retry_on=_died_innocently)(self._attempt, source, destination, limits)
        except ProcessExpired as exc:
            if exc.exitcode == _CPU_LIMIT_EXITCODE:
                raise DecodeTimeout(f"decoding used more than {self._cpu_seconds} s of CPU") from exc
            raise InvalidImage("the image could not be decoded (the decoder process failed)") from exc

    @property
    def _cpu_seconds(self) -> int:
        """The per-task CPU allowance: the wall-clock limit, rounded up, plus a second (pebble's
        timeout should fire first; this one still fires when nobody is left to enforce it)."""
        return math.ceil(self._timeout) + 1

    async def _attempt(self, source: Path, destination: Path, limits: ValidationLimits) -> ProcessedImage:
        if self._closed:
            raise DecoderBusy("the image decoder is shutting down")
        try:
            future: ProcessFuture[ProcessedImage] = self._pool.schedule(
                decode_task, args=(source, destination, limits, self._cpu_seconds), timeout=self._timeout
            )
        except RuntimeError as exc:  # pebble's pool is closed or broken (workers cannot start)
            raise DecoderBusy("the image decoder is unavailable") from exc
        try:
            return await asyncio.wrap_future(future)
        except concurrent.futures.TimeoutError as exc:
            # pebble killed the worker before failing the future: nothing is written after this.
            raise DecodeTimeout(f"decoding took longer than {self._timeout:g} s") from exc
        except asyncio.CancelledError:
            # The caller gave up and will delete its temp files; wrap_future has cancelled the
            # task, so pebble kills its worker. Wait until it has (pebble notifies the future's
            # waiters only then), so the worker cannot write `destination` after the cleanup.
            await asyncio.shield(asyncio.to_thread(concurrent.futures.wait, [future], self._timeout + 5))
            raise
