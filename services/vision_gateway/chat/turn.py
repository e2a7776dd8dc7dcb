"""A chat turn from the moment it is decided until its Ollama request is closed.

`open_turn` sends the request to Ollama and records the turn in PostgreSQL at the same time. If
Ollama refuses within the grace period the rows are removed again and the caller answers with a
plain JSON error. Otherwise an `OpenTurn` owns the (possibly still opening) upstream request and
closes it on exit, whatever happened in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from common.errors import UpstreamRejected
from services.vision_gateway.chat import events
from services.vision_gateway.chat.request import ChatRequest
from services.vision_gateway.fleet.fleet import OllamaFleet
from services.vision_gateway.ollama_client import ChatStream, OllamaStreamError
from services.vision_gateway.repository import ConversationRepository, NewTurn


@dataclass(frozen=True, slots=True)
class SentMessage:
    """An earlier message the client sent along (stateless clients such as OpenAI's keep the history)."""

    role: str
    content: str
    image_ids: list[uuid.UUID]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks, under which request ID, since when (time to first token counts from here)."""

    user_id: str
    request_id: str = ""
    received_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True, slots=True)
class PreparedChat:
    """Everything that could refuse the request has passed; nothing is written yet."""

    request: ChatRequest
    caller: Caller
    model: str
    vision: bool
    ollama_messages: list[dict[str, Any]]
    notices: tuple[events.NoticeEvent, ...]

    @property
    def image_ids(self) -> list[uuid.UUID]:
        return list(self.request.image_ids)

    def ollama_payload(self) -> dict[str, Any]:
        return {"model": self.model, "messages": self.ollama_messages, **self.request.ollama_fields()}

    def sent(self) -> SentChat:
        """What an open turn keeps of this once Ollama's payload is built."""
        return SentChat(self.caller, self.model, self.vision, tuple(self.request.image_ids), self.notices)


@dataclass(frozen=True, slots=True)
class SentChat:
    """What an open turn keeps of its PreparedChat for its stream's whole life: who asks, which
    model answers, what the events name. Not the request (its message, options, the model
    object's own dict and set) nor the prompt (the history, images inline as base64): Ollama's
    opening request holds those for as long as it needs them."""

    caller: Caller
    model: str
    vision: bool
    image_ids: tuple[uuid.UUID, ...]
    notices: tuple[events.NoticeEvent, ...]


class OpenTurn:
    """A recorded turn and its Ollama request; leaving the context closes the request.

    Once Ollama's stream is open (`upstream()`) the turn keeps the stream, not the task that opened
    it: a turn lives as long as its stream, and a done task still holds its context copy and
    coroutine (and has a place in asyncio's set of tasks). Likewise the links' task once linked.
    """

    __slots__ = ("_linking", "_opening", "_stream", "entered", "prepared", "stream_id", "turn")

    def __init__(
        self,
        prepared: SentChat,
        turn: NewTurn,
        stream_id: uuid.UUID,
        opening: asyncio.Task[ChatStream],
        linking: asyncio.Task[None] | None = None,
    ):
        self.prepared = prepared
        self.turn = turn
        self.stream_id = stream_id
        self._opening: asyncio.Task[ChatStream] | None = opening  # None once the stream is taken from it
        self._stream: ChatStream | None = None
        self._linking = linking
        self.entered = False  # a relay or abandon() owns it now (else ChatService.admit abandons it)

    @property
    def caller(self) -> Caller:
        return self.prepared.caller

    @property
    def message_id(self) -> uuid.UUID:
        return self.turn.assistant_message_id

    def start_event(self) -> events.StartEvent:
        return events.start(
            stream_id=self.stream_id,
            conversation_id=self.turn.conversation_id,
            user_message_id=self.turn.user_message_id,
            message_id=self.turn.assistant_message_id,
            model=self.prepared.model,
            vision=self.prepared.vision,
            image_ids=self.prepared.image_ids,
        )

    async def upstream(self, *, wake: asyncio.Future[None]) -> ChatStream | None:
        """Ollama's open stream, once its first line arrived; None if `wake` was done first.

        Raises what opening raised (unavailable, refused, an error line).
        """
        opening = self._opening
        if opening is None:
            return self._stream
        if not opening.done():
            either: list[asyncio.Future[Any]] = [opening, wake]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not opening.done():
                return None
        self._stream = opening.result()
        self._opening = None
        return self._stream

    async def linked(self) -> None:
        """Wait for the work begun once the turn was recorded (the images' links), which ran
        alongside Ollama's opening; raises what it raised. Cancelling the wait cancels the work."""
        if self._linking is not None:
            await self._linking
            self._linking = None

    @property
    def backend(self) -> str | None:
        """The Ollama backend (host:port) that answers, once its stream opened."""
        if self._stream is not None:
            return self._stream.backend
        opening = self._opening
        if opening is not None and opening.done() and not opening.cancelled() and opening.exception() is None:
            return opening.result().backend
        return None

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        if self._opening is not None:
            _close_opening(self._opening)
        if self._linking is not None:
            self._linking.cancel()

    async def __aenter__(self) -> OpenTurn:
        self.entered = True
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
        if self._opening is not None and not self._opening.done():
            with contextlib.suppress(BaseException):
                await self._opening


async def open_turn(
    prepared: PreparedChat,
    *,
    ollama: OllamaFleet,
    repository: ConversationRepository,
    grace_seconds: float,
    then: Callable[[NewTurn], Awaitable[None]] | None = None,
) -> OpenTurn:
    """Open Ollama's request and record the turn concurrently; undo the rows if Ollama refuses early.

    A model still loading after the grace period keeps us waiting longer than that, so the caller
    starts streaming (and pinging) anyway. `then` (linking the images to the new user message)
    starts as soon as the rows are recorded, while Ollama's first line is still on its way; the
    caller awaits it through `OpenTurn.linked()` before the first event, so its failure is handled
    as if it had run after this returned. If this raises, `then` is cancelled and waited for first.
    """
    request, caller = prepared.request, prepared.caller
    opening = asyncio.create_task(
        ollama.open_chat(
            prepared.ollama_payload(), request_id=caller.request_id, conversation_id=request.conversation_id
        )
    )
    stream_id = uuid.uuid4()
    recording = asyncio.create_task(
        repository.start_turn(
            owner_id=caller.user_id,
            conversation_id=request.conversation_id,
            content=request.message,
            model=prepared.model,
            image_ids=prepared.image_ids,
            stream_id=stream_id,
        )
    )
    linking = asyncio.create_task(_after(recording, then)) if then is not None else None
    try:
        await asyncio.wait_for(asyncio.shield(opening), grace_seconds)
    except TimeoutError:
        pass
    except BaseException as exc:
        # Not just cancel(): a caller cancelled in the loop turn in which the first line arrived
        # finds `opening` done, and the stream it opened must be closed (Ollama stops, and the
        # backend's count of streams in flight comes down).
        _close_opening(opening)
        # Before the rows go: a link that lands after them would name a deleted message.
        await _cancel(linking)
        await _undo_recording(recording, repository, new_conversation=request.conversation_id is None)
        if isinstance(exc, OllamaStreamError):  # an error line before any output (Ollama <= 0.12.5: HTTP 200)
            raise UpstreamRejected(f"Ollama failed before answering: {exc.message}") from exc
        raise
    try:
        turn = await recording
    except BaseException:
        _close_opening(opening)
        await _cancel(linking)
        raise
    return OpenTurn(prepared.sent(), turn, stream_id, opening, linking)


async def _after(recording: asyncio.Task[NewTurn], then: Callable[[NewTurn], Awaitable[None]]) -> None:
    # Shielded: cancelling the link must not cancel the recording (open_turn undoes that itself).
    await then(await asyncio.shield(recording))


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` and wait until it has ended; what it raised is dropped (the caller raises its own)."""
    if task is None:
        return
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


async def _undo_recording(
    recording: asyncio.Task[NewTurn], repository: ConversationRepository, *, new_conversation: bool
) -> None:
    try:
        turn = await recording
    except Exception:  # noqa: BLE001 - nothing was recorded
        return
    await asyncio.shield(repository.discard_turn(turn, new_conversation=new_conversation))


def _close_opening(opening: asyncio.Task[ChatStream]) -> None:
    """Stop Ollama generating: cancel the request if it is still opening, else drop the connection."""
    if not opening.done():
        opening.cancel()
    elif not opening.cancelled() and opening.exception() is None:
        opening.result().close()
