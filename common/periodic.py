"""A background job that runs every N seconds for an application's lifetime (a cleanup_ctx helper)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog

from common.background import in_background

log = structlog.get_logger("retina.periodic")


@contextlib.asynccontextmanager
async def run_periodically(
    job: Callable[[], Awaitable[object]],
    *,
    interval: float,
    name: str,
    run_at_start: bool = False,
) -> AsyncIterator[None]:
    """Run `job` every `interval` seconds until the context exits; interval <= 0 disables it.

    A failing round is logged (`periodic_job_failed` with the job's name) and the next round tries
    again, so a database outage only delays the work.
    """
    if interval <= 0:
        yield
        return

    async def loop() -> None:
        if not run_at_start:
            await asyncio.sleep(interval)
        while True:
            try:
                await job()
            except Exception:
                log.exception("periodic_job_failed", job=name)
            await asyncio.sleep(interval)

    async with in_background(loop(), name=name):
        yield
