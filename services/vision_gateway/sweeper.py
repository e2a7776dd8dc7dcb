"""Closes streams nobody is running any more, so no answer stays `streaming` for ever.

What decides is the owner's liveness, not how recent its last progress save is: every replica
touches all the rows it holds (live streams, finals being written) in one statement every
STREAM_SWEEP_AFTER_SECONDS / 3 (streams.StreamLiveness), however late their progress saves are.
A row untouched for longer than STREAM_SWEEP_AFTER_SECONDS belongs to a gateway that died (or
lost the database) without a graceful shutdown: it becomes `interrupted` with the text saved so
far. Every replica runs the sweep, at start-up and then periodically; an advisory lock lets one at
a time do the work. A replica sweeps only once its own touches have succeeded without a break for
the whole threshold: after an outage no replica could touch through, every replica gets that long
to touch its rows again before any row is judged.
"""

from __future__ import annotations

import contextlib

import structlog

from common.periodic import run_periodically
from services.vision_gateway.metrics import GatewayMetrics
from services.vision_gateway.repository import ConversationRepository
from services.vision_gateway.streams import StreamLiveness

log = structlog.get_logger("retina.vision_gateway.sweeper")


async def sweep_once(
    repository: ConversationRepository, metrics: GatewayMetrics, liveness: StreamLiveness, *, after_seconds: float
) -> int:
    if liveness.unbroken_seconds() < after_seconds:
        return 0  # this replica has not seen the database long enough to judge others
    swept = await repository.interrupt_stale_streams(after_seconds)
    if swept:
        metrics.streams_swept.inc(swept)
        log.warning("streams_interrupted", count=swept, silent_for_seconds=after_seconds)
    return swept


def sweeping(
    repository: ConversationRepository, metrics: GatewayMetrics, liveness: StreamLiveness, *, after_seconds: float
) -> contextlib.AbstractAsyncContextManager[None]:
    """Sweep every `after_seconds / 2` while the app runs; a database outage only delays it."""
    return run_periodically(
        lambda: sweep_once(repository, metrics, liveness, after_seconds=after_seconds),
        interval=max(0.5, after_seconds / 2),
        name="stream-sweeper",
        run_at_start=True,
    )
