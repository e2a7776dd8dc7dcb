"""Bounded, time-limited image decoding in worker processes.

Pillow work is CPU-bound and a hostile file can be slow or memory-hungry, so it runs in separate
processes (spawned, never forked from the event loop's threaded process) with an address-space
cap. A semaphore bounds concurrency to the worker count, and a limit on decodes running plus
waiting turns overload into an immediate DecoderBusy (503) instead of an ever-growing queue.

A worker that is stuck or dies cannot be interrupted, so the whole executor is replaced: its
processes are killed and fresh ones spawned. Decodes that were running next to it on the old
executor are retried once on the new one; they were not at fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import resource
import signal
from collections.abc import Coroutine
from concurrent.futures import Future as ConcurrentFuture
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Final

from PIL import Image, ImageFile

from services.image_store.validation import (
    ImageRejected,
    ProcessedImage,
    ValidationLimits,
    process_image_file,
    warm_up,
)

DEFAULT_MEMORY_LIMIT_BYTES: Final = 1536 * 1024 * 1024
# Pillow's own decompression-bomb threshold inside workers (its warning is an error there). Our
# ValidationLimits.max_pixels is the real limit; this backstop sits at the highest value the
# settings accept (IMAGE_MAX_PIXELS) so it never overrides an operator's choice.
DEFAULT_PILLOW_MAX_PIXELS: Final = 500_000_000


class DecoderBusy(Exception):
    """More decodes are running and waiting than the configured limit (or the pool is closed)."""


class DecodeTimeout(Exception):
    """A decode took longer than the limit; its worker was killed and replaced."""


def _init_worker(memory_limit_bytes: int, pillow_max_pixels: int) -> None:
    """Runs once in each new worker process."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_limit_bytes > 0:
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = memory_limit_bytes if hard == resource.RLIM_INFINITY else min(memory_limit_bytes, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    Image.MAX_IMAGE_PIXELS = pillow_max_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark an outcome nobody may await any more as seen (no 'exception never retrieved' noise)."""
    if not future.cancelled():
        future.exception()


class DecodePool:
    def __init__(
        self,
        workers: int,
        timeout_seconds: float,
        max_pending: int,
        *,
        memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
        pillow_max_pixels: int = DEFAULT_PILLOW_MAX_PIXELS,
    ) -> None:
        """`max_pending` counts decodes running plus waiting; `memory_limit_bytes` is each
        worker's RLIMIT_AS (0 disables it)."""
        if workers < 1 or max_pending < 1 or timeout_seconds <= 0:
            raise ValueError("workers and max_pending must be >= 1 and timeout_seconds > 0")
        self._workers = workers
        self._timeout = timeout_seconds
        self._max_pending = max_pending
        self._memory_limit = memory_limit_bytes
        self._pillow_max_pixels = pillow_max_pixels
        self._slots = asyncio.Semaphore(workers)
        self._in_flight = 0
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False
        self._background: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Decodes running or waiting for a worker right now."""
        return self._in_flight

    async def start(self) -> None:
        """Spawn the workers now (each imports Pillow and libmagic), not on the first upload."""
        if self._closed:
            raise RuntimeError("DecodePool was closed")
        if self._executor is None:
            executor = self._new_executor()
            try:
                await self._warm(executor, strict=True)
            except BaseException:
                _kill_workers(executor)
                await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
                raise
            self._executor = executor

    async def close(self) -> None:
        """Let running decodes finish (for at most one timeout), then stop the workers."""
        self._closed = True
        executor, self._executor = self._executor, None
        if self._background:
            await asyncio.wait(self._background, timeout=self._timeout)
        if executor is None:
            return
        shutdown = asyncio.ensure_future(asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True))
        done, _ = await asyncio.wait({shutdown}, timeout=self._timeout)
        if not done:
            _kill_workers(executor)
        await shutdown

    async def process(self, source: Path, destination: Path, limits: ValidationLimits) -> ProcessedImage:
        """Run process_image_file in a worker. Raises ImageRejected (as raised there),
        DecoderBusy at once when overloaded, DecodeTimeout after `timeout_seconds`."""
        if self._executor is None and not self._closed:
            raise RuntimeError("DecodePool.start() was not called")
        if self._in_flight >= self._max_pending:
            raise DecoderBusy(f"{self._in_flight} image decodes are already running or waiting")
        self._in_flight += 1
        try:
            async with self._slots:
                return await self._run(source, destination, limits)
        finally:
            self._in_flight -= 1

    # ---- internals -----------------------------------------------------------------------

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._workers,
            # Not fork: the parent runs an event loop and threads, which fork would copy mid-flight.
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self._memory_limit, self._pillow_max_pixels),
        )

    async def _warm(self, executor: ProcessPoolExecutor, *, strict: bool) -> None:
        """Start every worker (submitting them concurrently makes the executor spawn them all).

        `strict` (at start-up) raises if a worker cannot start, e.g. the memory cap is too low.
        """
        futures = [asyncio.wrap_future(executor.submit(warm_up)) for _ in range(self._workers)]
        await asyncio.wait(futures, timeout=max(self._timeout, 30.0))
        for future in futures:
            if future.done():
                _retrieve(future)
            else:
                future.add_done_callback(_retrieve)
        if strict:
            for future in futures:
                if future.done():
                    future.result()

    def _current_executor(self) -> ProcessPoolExecutor:
        if self._executor is None:
            raise DecoderBusy("the image decoder is shutting down")
        return self._executor

    async def _run(self, source: Path, destination: Path, limits: ValidationLimits) -> ProcessedImage:
        for attempt in (1, 2):
            executor = self._current_executor()
            try:
                submitted: ConcurrentFuture[ProcessedImage] = executor.submit(
                    process_image_file, source, destination, limits
                )
                return await self._await_result(asyncio.wrap_future(submitted), executor)
            except BrokenProcessPool as exc:
                # A worker died: ours (hostile input, memory cap) or a neighbour's timeout kill.
                await self._replace(executor)
                if attempt == 2:
                    raise ImageRejected(
                        422, "invalid_image", "the image could not be decoded (the decoder process failed)"
                    ) from exc
        raise AssertionError("unreachable")

    async def _await_result(
        self, future: asyncio.Future[ProcessedImage], executor: ProcessPoolExecutor
    ) -> ProcessedImage:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        try:
            done, _ = await asyncio.wait({future}, timeout=self._timeout)
        except asyncio.CancelledError:
            # The caller gave up (client went away). The worker cannot be interrupted and would
            # write `destination` after the caller cleaned it up, so let it finish (or kill it
            # at the deadline) before the cancellation goes on.
            future.add_done_callback(_retrieve)
            settle = self._spawn(self._settle(future, executor, deadline))
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(settle)
            raise
        if not done:
            future.add_done_callback(_retrieve)
            await self._replace(executor)
            raise DecodeTimeout(f"decoding took longer than {self._timeout:g} s")
        return future.result()

    async def _settle(
        self,
        future: asyncio.Future[Any],
        executor: ProcessPoolExecutor,
        deadline: float,
    ) -> None:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining > 0:
            await asyncio.wait({future}, timeout=remaining)
        if not future.done():
            await self._replace(executor)

    async def _replace(self, executor: ProcessPoolExecutor) -> None:
        """Kill `executor`'s workers and put a fresh executor in its place (once per executor)."""
        if self._executor is not executor:
            return  # already replaced by a concurrent failure, or the pool is closing
        fresh = self._new_executor()
        self._executor = fresh
        _kill_workers(executor)
        await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        if self._executor is fresh:
            # Spawn now so the next decode's time limit does not include process start-up.
            await self._warm(fresh, strict=False)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


def _kill_workers(executor: ProcessPoolExecutor) -> None:
    """ProcessPoolExecutor (before Python 3.14) cannot stop a running task; kill its processes."""
    processes = getattr(executor, "_processes", None) or {}
    for process in list(processes.values()):
        with contextlib.suppress(Exception):
            process.kill()
