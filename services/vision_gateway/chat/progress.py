"""Where a stream's answer goes in PostgreSQL: its text so far while it streams, and once when it ends.

While streaming, the text so far is saved every PROGRESS_SAVE_SECONDS when it grew: what a crash
can lose. Not by each stream: AnswerProgress is the replica's one book of streams, and the
replica's StreamLiveness (streams.py) writes all that grew in one statement per interval, on its
own connection, between its liveness touches (which keep every held row alive, saved or not).
A save that fails or falls behind only risks more text on a crash, never the stream. The book is
gathered and updated SLICE_STREAMS streams at a time, the event loop running other work between
slices: at 8,000 streams one pass is ~25 ms of CPU, which every stream's next chunk would wait for.

The final write happens once. If PostgreSQL is unreachable it is retried (waits of 0.2 s doubling
to 2 s, common.retry's `until`) while the next attempt would start within `retry_seconds`; the
result (saved or not) goes to the client in the final event, so an answer is never lost silently.
An answer not saved by then is handed to PendingAnswers (pending.py), which stores it when the
database is back (within STREAM_SAVE_QUEUE_SECONDS): `"saved": false` says what was true when
the client was told. A stream leaves the progress book before its final write; a batch already
on its way cannot overwrite the final answer, as it writes only rows still `streaming`.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import structlog

from common.errors import DatabaseUnavailable
from common.retry import until
from common.slices import in_slices
from services.vision_gateway.chat.pending import PendingAnswers, PendingFinal
from services.vision_gateway.metrics import GatewayMetrics
from services.vision_gateway.repository import ConversationRepository, ProgressRow

log = structlog.get_logger("retina.vision_gateway.answers")

# How often the partial answers are written while they stream (what a crash can lose).
PROGRESS_SAVE_SECONDS = 2.0
RETRY_FIRST_DELAY = 0.2
RETRY_MAX_DELAY = 2.0
# Streams gathered (or marked saved) between two yields to the event loop: ~1 ms of CPU here.
SLICE_STREAMS = 500


class Answer(NamedTuple):
    """What a stream has produced so far: the answer and, kept apart from it, the model's thinking."""

    content: str
    thinking: str = ""


class AnswerSoFar(Protocol):
    """A stream's growing answer (StreamRelay): its length is cheap to read, the text is joined on demand."""

    @property
    def answer_length(self) -> int: ...

    def answer(self) -> Answer: ...


class _Tracked:
    __slots__ = ("saved_length", "source")

    def __init__(self, source: AnswerSoFar) -> None:
        self.source = source
        self.saved_length = 0


class AnswerProgress:
    """The replica's streams whose text so far is saved in batches (streams.ProgressSource).

    Per stream it keeps a reference and the length last saved; a stream's text is joined only
    when it grew, once per interval. Gathering and marking yield to the event loop every
    SLICE_STREAMS streams; a stream that ends meanwhile is left out.
    """

    def __init__(self, interval: float | None = None) -> None:
        self.interval = PROGRESS_SAVE_SECONDS if interval is None else interval
        self._streams: dict[uuid.UUID, _Tracked] = {}

    def track(self, message_id: uuid.UUID, source: AnswerSoFar) -> None:
        self._streams[message_id] = _Tracked(source)

    def untrack(self, message_id: uuid.UUID) -> None:
        self._streams.pop(message_id, None)

    async def unsaved(self, limit: int | None = None) -> list[ProgressRow]:
        """The streams whose text grew since their last save (at most `limit`, least recently saved first)."""
        rows: list[ProgressRow] = []
        streams = list(self._streams.items())  # streams come and go while this yields
        async with contextlib.aclosing(in_slices(streams, SLICE_STREAMS)) as slices:
            async for part in slices:
                for message_id, tracked in part:
                    if (
                        tracked.source.answer_length != tracked.saved_length
                        and self._streams.get(message_id) is tracked
                    ):
                        content, thinking = tracked.source.answer()
                        rows.append(ProgressRow(message_id, content, thinking))
                        if len(rows) == limit:
                            return rows
        return rows

    async def saved(self, rows: Sequence[ProgressRow]) -> None:
        async for part in in_slices(rows, SLICE_STREAMS):
            for row in part:
                tracked = self._streams.pop(row.message_id, None)
                if tracked is not None:  # a stream that ended meanwhile has left the book
                    tracked.saved_length = len(row.content) + len(row.thinking)
                    self._streams[row.message_id] = tracked  # to the back: a limited save takes others first


class AnswerWriter:
    """One stream's answer: in the replica's progress batch while it streams, then its final write."""

    __slots__ = ("_message_id", "_metrics", "_pending", "_progress", "_repository", "_retry_seconds", "_saved")

    def __init__(
        self,
        repository: ConversationRepository,
        message_id: uuid.UUID,
        metrics: GatewayMetrics,
        pending: PendingAnswers,
        progress: AnswerProgress,
        *,
        retry_seconds: float,
    ) -> None:
        self._repository = repository
        self._message_id = message_id
        self._metrics = metrics
        self._pending = pending
        self._progress = progress
        self._retry_seconds = retry_seconds
        self._saved: bool | None = None

    def start_progress(self, answer: AnswerSoFar) -> None:
        """Save this stream's text so far with the replica's batch, until its final write."""
        self._progress.track(self._message_id, answer)

    async def finish(self, answer: Answer, status: str, error: str | None, stats: dict[str, Any] | None) -> bool:
        """Store the final answer once; True when it is in the database now (else it waits in memory)."""
        if self._saved is not None:
            return self._saved
        self._saved = False
        with self._pending.holding(self._message_id):  # alive until written, even if the stream is gone
            return await self._finish(answer, status, error, stats)

    async def _finish(self, answer: Answer, status: str, error: str | None, stats: dict[str, Any] | None) -> bool:
        self._progress.untrack(self._message_id)
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
