"""Closes streams nobody is running any more, so no answer stays `streaming` for ever.

A live stream touches `messages.progress_at` at least every STREAM_SWEEP_AFTER_SECONDS / 3
(chat/progress.py). A row whose progress is older than STREAM_SWEEP_AFTER_SECONDS belongs to a
gateway that died without a graceful shutdown: it becomes `interrupted` with the text saved so
far. Every replica runs the sweep, at start-up and then periodically; an advisory lock lets one
at a time do the work.
"""

from __future__ import annotations

import contextlib

import structlog

from common.periodic import run_periodically
from services.vision_gateway.metrics import GatewayMetrics
from services.vision_gateway.repository import ConversationRepository

log = structlog.get_logger("retina.vision_gateway.sweeper")


async def sweep_once(repository: ConversationRepository, metrics: GatewayMetrics, *, after_seconds: float) -> int:
    swept = await repository.interrupt_stale_streams(after_seconds)
    if swept:
        metrics.streams_swept.inc(swept)
        log.warning("streams_interrupted", count=swept, silent_for_seconds=after_seconds)
    return swept


def sweeping(
    repository: ConversationRepository, metrics: GatewayMetrics, *, after_seconds: float
) -> contextlib.AbstractAsyncContextManager[None]:
    """Sweep now and every `after_seconds / 2` while the app runs; a database outage only delays it."""
    return run_periodically(
        lambda: sweep_once(repository, metrics, after_seconds=after_seconds),
        interval=max(0.5, after_seconds / 2),
        name="stream-sweeper",
        run_at_start=True,
    )
