"""Bounded, time-limited image decoding in worker processes.

Pillow work is CPU-bound and a hostile file can be slow or memory-hungry, so it runs in separate
processes (spawned, never forked from the event loop's process) with an address-space cap; a
semaphore bounds concurrency and a queue limit turns overload into 503 instead of memory growth.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from services.image_store.validation import ProcessedImage, ValidationLimits, process_image_file

DEFAULT_MEMORY_LIMIT_BYTES = 1536 * 1024 * 1024


class DecoderBusy(Exception):
    """More decodes are running and waiting than the configured limit."""


class DecodeTimeout(Exception):
    """A decode took longer than the limit; its worker was terminated."""


def _init_worker(memory_limit: int, max_pixels: int) -> None:
    if memory_limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    Image.MAX_IMAGE_PIXELS = max_pixels


class DecodePool:
    def __init__(
        self,
        workers: int,
        timeout_seconds: float,
        max_pending: int,
        *,
        memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
        max_pixels: int = 100_000_000,
    ) -> None:
        self._workers = workers
        self._timeout = timeout_seconds
        self._max_pending = max_pending
        self._memory_limit = memory_limit_bytes
        self._max_pixels = max_pixels
        self._semaphore = asyncio.Semaphore(workers)
        self._pending = 0
        self._executor: ProcessPoolExecutor | None = None

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self._memory_limit, self._max_pixels),
        )

    async def start(self) -> None:
        self._executor = self._new_executor()
        # Spawn the workers now (they import Pillow), not on the first upload.
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._executor, _noop) for _ in range(self._workers)))

    async def close(self) -> None:
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    async def process(self, source: Path, destination: Path, limits: ValidationLimits) -> ProcessedImage:
        if self._pending >= self._max_pending:
            raise DecoderBusy(f"{self._pending} decodes already running or waiting")
        self._pending += 1
        try:
            async with self._semaphore:
                if self._executor is None:
                    raise RuntimeError("DecodePool.start() was not called")
                loop = asyncio.get_running_loop()
                future = loop.run_in_executor(self._executor, process_image_file, source, destination, limits)
                try:
                    return await asyncio.wait_for(future, self._timeout)
                except TimeoutError as exc:
                    await self._replace_executor()
                    raise DecodeTimeout(f"decoding took longer than {self._timeout:g} s") from exc
        finally:
            self._pending -= 1

    async def _replace_executor(self) -> None:
        """A stuck worker cannot be cancelled; kill its processes and start fresh ones."""
        old, self._executor = self._executor, self._new_executor()
        if old is not None:
            for process in list(getattr(old, "_processes", {}).values()):
                process.kill()
            await asyncio.to_thread(old.shutdown, wait=True, cancel_futures=True)


def _noop() -> None:
    return None
