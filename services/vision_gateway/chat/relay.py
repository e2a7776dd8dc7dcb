"""StreamRelay: one stream from its `start` event to its final event, and the answer stored once.

Every way a stream can end goes through one of four endings, each of which stores the answer
so far exactly once and then tells the client whether that worked (`saved`):

- completed: Ollama's done line arrived -> `done`, status `complete`;
- stopped: a stop request or shutdown -> `done` (done_reason `stopped`) or `error shutting_down`;
- failed: anything else while relaying (Ollama reset, truncated body, read timeout, a non-JSON or
  error line, a bug) -> `error` with `partial`, status `error`; the event and the stored message
  carry the same plain sentence, the failure behind it is logged (common/failures.py);
- client gone: no event can be sent; status `stopped`, error "client disconnected".

Nothing here writes HTTP status lines: once `start` is sent the response is an event stream and
stays one (the error middleware enforces the same for anything that escapes).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from common.failures import for_client
from services.vision_gateway.chat import events
from services.vision_gateway.chat.answer_text import AnswerText
from services.vision_gateway.chat.progress import Answer, AnswerWriter
from services.vision_gateway.chat.turn import OpenTurn
from services.vision_gateway.metrics import GatewayMetrics
from services.vision_gateway.ollama_client import ChatStream
from services.vision_gateway.streams import LiveStream


class EventSink(Protocol):
    """Where a stream's events go (an SSE response in production)."""

    async def send(self, event: events.Event) -> None: ...


class StreamRelay:
    """Holds one stream's answer and timing; `run()` relays it and returns the outcome label."""

    __slots__ = (
        "answer_length",
        "chunks",
        "content",
        "first_at",
        "label",
        "last_at",
        "live",
        "metrics",
        "outcome",
        "sink",
        "thinking",
        "turn",
        "upstream_stats",
        "writer",
    )

    def __init__(
        self, turn: OpenTurn, sink: EventSink, live: LiveStream, writer: AnswerWriter, metrics: GatewayMetrics
    ) -> None:
        self.turn = turn
        self.sink = sink
        self.live = live
        self.writer = writer
        self.metrics = metrics
        self.label = metrics.model_label(turn.prepared.model)
        self.content = AnswerText()
        self.thinking = AnswerText()
        self.answer_length = 0  # characters of content and thinking: tells the progress batch it grew
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.chunks = 0
        self.upstream_stats: dict[str, int] = {}
        self.outcome = "upstream_error"

    def answer(self) -> Answer:
        return Answer(self.content.text(), self.thinking.text())

    @property
    def partial(self) -> bool:
        """Whether the client has received any of the answer or of the thinking before it."""
        return bool(self.content or self.thinking)

    async def run(self) -> str:
        in_flight = self.metrics.in_flight.labels(self.label)
        in_flight.inc()
        self.writer.start_progress(self)
        try:
            await self.sink.send(self.turn.start_event())
            for notice in self.turn.prepared.notices:
                await self.sink.send(notice)
            upstream = await self._upstream()
            if upstream is not None:
                self.metrics.upstream_ttfc.labels(self.label).observe(upstream.first_chunk_seconds)
                # Relayed here, not in a method of its own: a held stream waits in this loop for its
                # whole life, and every coroutine it waits in is one more frame per stream.
                self.live.on_stop(upstream.close)  # a stop closes the upstream at once
                try:
                    async for chunk in upstream:
                        # Ollama sends thinking and answer in separate lines; relay each as its own event type.
                        if chunk.thinking:
                            self._count_token()
                            self.thinking.append(chunk.thinking)
                            self.answer_length += len(chunk.thinking)
                            await self.sink.send(events.thinking(chunk.thinking))
                        if chunk.content:
                            self._count_token()
                            self.content.append(chunk.content)
                            self.answer_length += len(chunk.content)
                            await self.sink.send(events.chunk(chunk.content))
                        if chunk.done:
                            self.upstream_stats = chunk.stats
                            await self._end_completed(chunk.done_reason or "stop")
                            return self.outcome
                finally:
                    self.live.on_stop(None)
            await self._end_stopped()  # only a stop ends the loop without done or an error
        except (asyncio.CancelledError, ConnectionResetError):
            self.outcome = "client_disconnected"
            await asyncio.shield(self.writer.finish(self.answer(), "stopped", "client disconnected", self.stats()))
            raise
        except Exception as exc:  # noqa: BLE001 - every failure ends the stream with an error event
            if self.live.stop_reason is not None:  # closing the upstream to stop it raised
                await self._end_stopped()
            else:
                await self._end_failed(exc)
        finally:
            in_flight.dec()
            self._record_metrics()
        return self.outcome

    async def _upstream(self) -> ChatStream | None:
        """Ollama's open stream; None when a stop came first."""
        stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not stopped.done():
                stopped.set_result(None)

        self.live.on_stop(wake)
        try:
            return await self.turn.upstream(wake=stopped)
        finally:
            self.live.on_stop(None)

    def _count_token(self) -> None:
        """Timing per generated piece; thinking counts: it is what the model spends its first tokens on."""
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at = now
            self.metrics.ttft.labels(self.label).observe(now - self.turn.caller.received_at)
        self.last_at = now
        self.chunks += 1

    async def _end_completed(self, done_reason: str) -> None:
        self.outcome = "completed"
        stats = self.stats()
        saved = await asyncio.shield(self.writer.finish(self.answer(), "complete", None, stats))
        await self.sink.send(
            events.done(message_id=self.turn.message_id, done_reason=done_reason, stats=stats, saved=saved)
        )

    async def _end_stopped(self) -> None:
        stats = self.stats()
        if self.live.stop_reason == "shutdown":
            self.outcome = "shutdown"
            saved = await asyncio.shield(self.writer.finish(self.answer(), "stopped", "server shutting down", stats))
            message = "the server is shutting down; " + ("the partial answer was saved" if saved else "nothing saved")
            await self.sink.send(events.error(code="shutting_down", message=message, partial=self.partial, saved=saved))
            return
        self.outcome = "stopped"
        saved = await asyncio.shield(self.writer.finish(self.answer(), "stopped", None, stats))
        await self.sink.send(
            events.done(message_id=self.turn.message_id, done_reason="stopped", stats=stats, saved=saved)
        )

    async def _end_failed(self, exc: Exception) -> None:
        # The client and the history get the same plain sentence; the failure behind it is logged.
        error = for_client(exc, request_id=self.turn.caller.request_id, event="stream_failed")
        self.outcome = "upstream_error" if error.code != "internal_error" else "internal_error"
        saved = await asyncio.shield(self.writer.finish(self.answer(), "error", error.message, self.stats()))
        await self.sink.send(events.error(code=error.code, message=error.message, partial=self.partial, saved=saved))

    def stats(self) -> dict[str, Any]:
        received = self.turn.caller.received_at
        upstream = self.upstream_stats
        return {
            "prompt_tokens": upstream.get("prompt_eval_count", 0),
            "completion_tokens": upstream.get("eval_count", self.chunks),
            "time_to_first_token_ms": round((self.first_at - received) * 1000, 2) if self.first_at else None,
            "total_duration_ms": round((time.perf_counter() - received) * 1000, 2),
        }

    def _record_metrics(self) -> None:
        metrics, label = self.metrics, self.label
        metrics.streams.labels(label, self.outcome).inc()
        elapsed = time.perf_counter() - self.turn.caller.received_at
        metrics.stream_duration.labels(label, self.outcome).observe(elapsed)
        if "prompt_eval_count" in self.upstream_stats:
            metrics.tokens.labels(label, "input").inc(self.upstream_stats["prompt_eval_count"])
        if "eval_count" in self.upstream_stats:
            metrics.tokens.labels(label, "output").inc(self.upstream_stats["eval_count"])
        if self.first_at is not None and self.last_at is not None and self.chunks > 1:
            metrics.tpot.labels(label).observe((self.last_at - self.first_at) / (self.chunks - 1))
