"""Finished answers this replica could not store in time: kept in memory, stored when PostgreSQL is back.

AnswerWriter (progress.py) retries a final write for STREAM_SAVE_RETRY_SECONDS, then tells the
client `"saved": false` (true at that moment) and hands the answer here. A background task tries
again (0.5 s doubling to 5 s), oldest answer first, and stores each as soon as the database
answers, for up to STREAM_SAVE_QUEUE_SECONDS. Meanwhile the registry holds the row, so this
replica's liveness statement keeps touching it and no sweeper closes it; should one close it all
the same (a stop request, a replica cut off from the database for longer than the sweep
threshold), the final write still wins: it sets the row whatever its status.

Bounded: at most MAX_PENDING answers and STREAM_SAVE_QUEUE_MB of their text. An answer that does
not fit, outlives the queue time, cannot be written (a bug) or is still here when shutdown's last
attempts fail is lost: counted (vision_gateway_answer_saves_total{result="lost"}) and logged
(`answer_lost`, with its message ID); its row is then swept as `interrupted` with the last
progress save. A crash loses everything held here, as it loses the streams themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog

from common.background import in_background
from common.errors import DatabaseUnavailable
from services.vision_gateway.metrics import GatewayMetrics
from services.vision_gateway.repository import ConversationRepository
from services.vision_gateway.streams import StreamRegistry

log = structlog.get_logger("retina.vision_gateway.answers")

MAX_PENDING = 10_000
# What an answer costs besides its text (its record, IDs, stats), counted against the byte budget.
ENTRY_OVERHEAD_BYTES = 512
RETRY_FIRST_DELAY = 0.5
RETRY_MAX_DELAY = 5.0
# One write attempt; a database that hangs is retried like one that refuses.
ATTEMPT_SECONDS = 10.0
# Shutdown keeps trying this long (the pods' grace period allows for it: docs/operations.md).
SHUTDOWN_DRAIN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class PendingFinal:
    """A final write as AnswerWriter meant it (repository.finish_turn's arguments)."""

    message_id: uuid.UUID
    content: str
    thinking: str
    status: str
    error: str | None
    stats: dict[str, Any] | None

    @property
    def size(self) -> int:
        text = len(self.content.encode()) + len(self.thinking.encode()) + len((self.error or "").encode())
        return text + ENTRY_OVERHEAD_BYTES


class PendingAnswers:
    def __init__(
        self,
        repository: ConversationRepository,
        registry: StreamRegistry,
        metrics: GatewayMetrics,
        *,
        keep_seconds: float,
        max_bytes: int,
        max_count: int = MAX_PENDING,
    ) -> None:
        self._repository = repository
        self._registry = registry
        self._metrics = metrics
        self._keep_seconds = keep_seconds
        self._max_bytes = max_bytes
        self._max_count = max_count
        self._queue: dict[uuid.UUID, tuple[PendingFinal, float]] = {}  # oldest first, with the time queued
        self._bytes = 0
        self._wakeup = asyncio.Event()

    def __len__(self) -> int:
        return len(self._queue)

    def holding(self, message_id: uuid.UUID) -> contextlib.AbstractContextManager[None]:
        """Keep the row alive (never swept) while its final write is tried."""
        return self._registry.holding(message_id)

    def put(self, final: PendingFinal) -> bool:
        """Keep `final` until it is stored; False (and counted lost) when it does not fit."""
        if self._keep_seconds <= 0:
            self._lost(final, "not_kept")
            return False
        if len(self._queue) >= self._max_count or self._bytes + final.size > self._max_bytes:
            self._lost(final, "queue_full")
            return False
        self._queue[final.message_id] = (final, asyncio.get_running_loop().time())
        self._bytes += final.size
        self._registry.hold(final.message_id)
        self._metrics.answer_saves.labels("queued").inc()
        log.warning("answer_queued", message_id=str(final.message_id), pending=len(self._queue))
        self._wakeup.set()
        return True

    async def write_pending(self) -> bool:
        """One pass, oldest first; False when the database is still unreachable (the rest wait)."""
        loop = asyncio.get_running_loop()
        for final, queued_at in list(self._queue.values()):
            waited = loop.time() - queued_at
            if waited > self._keep_seconds:
                self._remove(final)
                self._lost(final, "kept_too_long")
                continue
            try:
                async with asyncio.timeout(ATTEMPT_SECONDS):
                    await self._repository.finish_turn(
                        final.message_id,
                        content=final.content,
                        thinking=final.thinking,
                        status=final.status,
                        error=final.error,
                        stats=final.stats,
                    )
            except (DatabaseUnavailable, TimeoutError):
                return False
            except Exception:
                log.exception("store_answer_failed", message_id=str(final.message_id))
                self._remove(final)
                self._lost(final, "write_failed")
                continue
            self._remove(final)
            self._metrics.answer_saves.labels("saved_late").inc()
            log.info("answer_saved_late", message_id=str(final.message_id), waited_seconds=round(waited, 1))
        return True

    async def _retry(self) -> None:
        delay = RETRY_FIRST_DELAY
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                delay = RETRY_FIRST_DELAY
            if await self.write_pending():
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Retry in the background for the block's lifetime; at its end, try for a few more seconds."""
        try:
            async with in_background(self._retry(), name="pending-answers"):
                yield
        finally:
            await self._drain(SHUTDOWN_DRAIN_SECONDS)

    async def _drain(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while self._queue:
                    if not await self.write_pending():
                        await asyncio.sleep(RETRY_FIRST_DELAY)
        for final, _queued_at in list(self._queue.values()):
            self._remove(final)
            self._lost(final, "shutdown")

    def _remove(self, final: PendingFinal) -> None:
        if self._queue.pop(final.message_id, None) is not None:
            self._bytes -= final.size
            self._registry.release(final.message_id)

    def _lost(self, final: PendingFinal, reason: str) -> None:
        self._metrics.answer_saves.labels("lost").inc()
        log.error(
            "answer_lost",
            message_id=str(final.message_id),
            reason=reason,
            characters=len(final.content),
            pending=len(self._queue),
        )
