"""AnswerWriter: where one stream's answer goes in PostgreSQL, while it streams and when it ends.

While streaming it saves the text so far every PROGRESS_SAVE_SECONDS when it grew: what a crash
can lose. These saves go through the pool and may fall behind under load; that only risks more
text on a crash, never the stream: the row is kept alive by the replica's one liveness statement
(streams.StreamLiveness), which covers it for as long as the registry holds it (the stream, its
final write, and a final waiting in memory).

The final write happens once. If PostgreSQL is unreachable it is retried (waits of 0.2 s doubling
to 2 s, common.retry's `until`) while the next attempt would start within `retry_seconds`; the
result (saved or not) goes to the client in the final event, so an answer is never lost silently.
An answer not saved by then is handed to PendingAnswers (pending.py), which stores it when the
database is back (within STREAM_SAVE_QUEUE_SECONDS): `"saved": false` says what was true when
the client was told.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

import structlog

from common.errors import DatabaseUnavailable
from common.retry import until
from services.vision_gateway.chat.pending import PendingAnswers, PendingFinal
from services.vision_gateway.metrics import GatewayMetrics
from services.vision_gateway.repository import ConversationRepository

log = structlog.get_logger("retina.vision_gateway.answers")

# How often the partial answer is written while it streams (what a crash can lose).
PROGRESS_SAVE_SECONDS = 2.0
# How long stopping waits for an in-flight progress save before abandoning it.
PROGRESS_STOP_SECONDS = 5.0
RETRY_FIRST_DELAY = 0.2
RETRY_MAX_DELAY = 2.0


class Answer(NamedTuple):
    """What a stream has produced so far: the answer and, kept apart from it, the model's thinking."""

    content: str
    thinking: str = ""


class AnswerWriter:
    def __init__(
        self,
        repository: ConversationRepository,
        message_id: uuid.UUID,
        metrics: GatewayMetrics,
        pending: PendingAnswers,
        *,
        retry_seconds: float,
    ) -> None:
        self._repository = repository
        self._message_id = message_id
        self._metrics = metrics
        self._pending = pending
        self._retry_seconds = retry_seconds
        self._progress: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._saved: bool | None = None

    def start_progress(self, answer: Callable[[], Answer]) -> None:
        self._progress = asyncio.create_task(self._save_progress(answer), name=f"progress-{self._message_id}")

    async def _save_progress(self, answer: Callable[[], Answer]) -> None:
        # Both parts only grow while streaming, so their combined length tells whether anything is new.
        saved_length = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), PROGRESS_SAVE_SECONDS)
                return
            current = answer()
            length = len(current.content) + len(current.thinking)
            if length == saved_length:
                continue
            try:
                await self._repository.save_progress(self._message_id, current.content, current.thinking)
                saved_length = length
            except Exception as exc:  # noqa: BLE001 - progress is best effort; the final write retries
                log.warning("progress_save_failed", message_id=str(self._message_id), error=repr(exc))

    async def _stop_progress(self) -> None:
        self._stopping.set()
        if self._progress is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._progress), PROGRESS_STOP_SECONDS)
        except TimeoutError:
            # A late progress save is harmless: it only updates rows still `streaming`.
            self._progress.cancel()

    async def finish(self, answer: Answer, status: str, error: str | None, stats: dict[str, Any] | None) -> bool:
        """Store the final answer once; True when it is in the database now (else it waits in memory)."""
        if self._saved is not None:
            return self._saved
        self._saved = False
        with self._pending.holding(self._message_id):  # alive until written, even if the stream is gone
            return await self._finish(answer, status, error, stats)

    async def _finish(self, answer: Answer, status: str, error: str | None, stats: dict[str, Any] | None) -> bool:
        await self._stop_progress()
        policy = until(
            self._retry_seconds,
            retry_on=DatabaseUnavailable,
            first_delay=RETRY_FIRST_DELAY,
            max_delay=RETRY_MAX_DELAY,
            on_retry=lambda _failure, delay: log.warning(
                "store_answer_retrying", message_id=str(self._message_id), retry_in=delay
            ),
        )
        try:
            await policy(
                self._repository.finish_turn,
                self._message_id,
                content=answer.content,
                thinking=answer.thinking,
                status=status,
                error=error,
                stats=stats,
            )
        except DatabaseUnavailable as exc:
            # Not lost yet: kept in memory and stored when the database is back (answer_lost if never).
            log.warning("store_answer_failed", message_id=str(self._message_id), error=repr(exc.__cause__))
            final = PendingFinal(self._message_id, answer.content, answer.thinking, status, error, stats)
            self._pending.put(final)  # counts it queued, or lost when it does not fit
            return False
        except Exception:
            log.exception("store_answer_failed", message_id=str(self._message_id))
            self._metrics.answer_saves.labels("lost").inc()
            return False
        self._saved = True
        self._metrics.answer_saves.labels("saved").inc()
        return True
