"""ChatService: the gateway's use cases, independent of HTTP.

admit() is the one way in: it holds the user's stream slot and yields an Ask (chat/ask.py) through
which every entry uploads images and begins its turn. prepare() does everything that can refuse a
request (model, images, ownership) before any row is written; begin() opens Ollama's request and
records the turn; relay() hands the stream to a StreamRelay. The request's rules live in request.py,
the decisions in policy.py, images in image_source.py, the prompt in prompt.py, the turn in
turn.py, the stream in relay.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.errors import ApiError, ConversationNotFound, StreamNotFound
from services.vision_gateway.admission import PrepBudget, StreamAdmission
from services.vision_gateway.capabilities import ModelCapabilities, VisionModelService
from services.vision_gateway.chat import policy, prompt, thinking
from services.vision_gateway.chat.ask import Ask
from services.vision_gateway.chat.image_source import ImageSource
from services.vision_gateway.chat.pending import PendingAnswers
from services.vision_gateway.chat.progress import Answer, AnswerProgress, AnswerWriter
from services.vision_gateway.chat.prompt import HistoryEntry
from services.vision_gateway.chat.relay import EventSink, StreamRelay
from services.vision_gateway.chat.request import ChatRequest, RequestLimits, Think
from services.vision_gateway.chat.trace_span import ask_span
from services.vision_gateway.chat.turn import Caller, OpenTurn, PreparedChat, SentMessage, open_turn
from services.vision_gateway.fleet.fleet import OllamaFleet
from services.vision_gateway.image_store_client import ImageMeta, ImageStoreClient
from services.vision_gateway.metrics import GatewayMetrics
from services.vision_gateway.repository import ConversationRepository, NewTurn, StoredMessage
from services.vision_gateway.settings import GatewaySettings
from services.vision_gateway.streams import StreamRegistry

# How long a stop request waits for the replica running the stream to record the stop.
STOP_CONFIRM_SECONDS = 3.0


@dataclass(frozen=True, slots=True)
class StopResult:
    stream_id: uuid.UUID
    stopped: bool
    status: str | None  # the message's final status when the stream had already ended

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"stream_id": str(self.stream_id), "stopped": self.stopped}
        if self.status is not None:
            body["status"] = self.status
        return body


class ChatService:
    def __init__(
        self,
        settings: GatewaySettings,
        *,
        ollama: OllamaFleet,
        models: VisionModelService,
        store: ImageStoreClient,
        images: ImageSource,
        repository: ConversationRepository,
        registry: StreamRegistry,
        pending: PendingAnswers,
        progress: AnswerProgress,
        metrics: GatewayMetrics,
        admission: StreamAdmission,
        budget: PrepBudget,
    ) -> None:
        self.settings = settings
        self._admission = admission
        self.budget = budget  # image bytes in the gateway's memory, whichever entry brought them
        self._ollama = ollama
        self._models = models
        self._store = store
        self._images = images
        self._repository = repository
        self.registry = registry
        self._pending = pending
        self._progress = progress
        self._metrics = metrics

    def limits(self, *, blank_message_with_images: bool = False) -> RequestLimits:
        settings = self.settings
        return RequestLimits(
            max_images=settings.max_images_per_message,
            max_keep_alive_seconds=settings.max_keep_alive_seconds,
            max_num_ctx=settings.max_num_ctx,
            blank_message_with_images=blank_message_with_images,
        )

    def admit(self, user_id: str, request_id: str) -> Ask:
        """The one way in, `async with service.admit(...) as ask`: the user's stream slot for the
        request's whole life (upload to last event); images uploaded through the Ask are deleted
        again if no turn was begun, a turn begun but never relayed is abandoned (chat/ask.py)."""
        return Ask(self, Caller(user_id, request_id), self._admission)

    async def prepare(
        self,
        request: ChatRequest,
        caller: Caller,
        *,
        history: Sequence[SentMessage] | None = None,
        choice: policy.ModelChoice | None = None,
        known: Mapping[uuid.UUID, ImageMeta] | None = None,
    ) -> PreparedChat:
        """`history`: the client's own (stateless clients); else the stored conversation's.
        `choice`: the model check an early look already made; `known`: images this request uploaded."""
        settings = self.settings
        past_history: Sequence[HistoryEntry] = []
        if history is not None:
            past_history = history
        elif request.conversation_id is not None:
            if not await self._repository.conversation_owned(request.conversation_id, caller.user_id):
                raise ConversationNotFound()
            past_history = await self._repository.history(request.conversation_id, settings.history_messages)
        past_ids = policy.history_image_ids(
            past_history,
            new_images=len(request.image_ids),
            history_images=settings.history_images,
            max_per_request=settings.max_images_per_request,
        )
        wants_images = bool(request.image_ids or past_ids)
        if choice is None or choice.send_images != wants_images:
            choice = await self.choose_model(request.model, request.think, wants_images=wants_images)
        user, request_id = caller.user_id, caller.request_id
        if choice.send_images:
            current = await self._images.prepare_all(
                request.image_ids, user, request_id, skip_missing=False, known=known
            )
            # Stored history may name images deleted since; images the client sends now must exist.
            past = await self._images.prepare_all(past_ids, user, request_id, skip_missing=history is None, known=known)
        else:
            await self._images.check_access(request.image_ids, user, request_id)  # still refuse others' images
            current, past = {}, {}
        current_images = [current[i] for i in request.image_ids] if choice.send_images else []
        messages = prompt.build_messages(past_history, past, request.message, current_images)
        self._metrics.image_bytes_sent.inc(prompt.image_bytes(messages))
        return PreparedChat(request, caller, choice.model, choice.vision, messages, choice.notices)

    async def choose_model(self, model: str, think: Think | None, *, wants_images: bool) -> policy.ModelChoice:
        """The model that answers (a fallback may stand in), refusing one that is unknown, blind when
        images must be seen, or unable to think when asked to."""
        requested = await self._models.get(model)
        fallback_policy = self.settings.fallback_policy
        fallback = None
        if policy.needs_fallback_lookup(requested, wants_images=wants_images, policy=fallback_policy):
            fallback = await self._models.get(self.settings.fallback_model)
        choice = policy.choose_model(requested, wants_images=wants_images, policy=fallback_policy, fallback=fallback)
        # The model that answers must be able to think; with detection off we cannot know, so Ollama decides.
        if self.settings.model_detection_enabled:
            answering = fallback if fallback is not None and choice.model == fallback.name else requested
            thinking.check_can_think(answering, think)
        return choice

    async def begin(self, prepared: PreparedChat, *, grace_seconds: float) -> OpenTurn:
        """Open Ollama's request and record the turn; the images' links start once the rows are
        recorded, alongside Ollama's opening (the caller awaits them: `OpenTurn.linked()`)."""
        image_ids = prepared.image_ids
        caller = prepared.caller

        async def link_images(turn: NewTurn) -> None:
            # Tell the image-store which message each image belongs to.
            for image_id in image_ids:
                with contextlib.suppress(ApiError):  # the link is bookkeeping; the turn is recorded either way
                    await self._store.link(image_id, turn.user_message_id, caller.user_id, caller.request_id)

        return await open_turn(
            prepared,
            ollama=self._ollama,
            repository=self._repository,
            grace_seconds=grace_seconds,
            then=link_images if image_ids else None,
        )

    async def abandon(self, turn: OpenTurn) -> None:
        """The client went away before streaming started: close Ollama's request, record the stop."""
        async with turn:
            pass
        writer = self._writer(turn)
        await asyncio.shield(writer.finish(Answer(""), "stopped", "client disconnected", None))

    async def relay(self, turn: OpenTurn, sink: EventSink) -> str:
        """Stream the answer to `sink`; returns the outcome. The (partial) answer is always stored."""
        async with turn:
            with self.registry.register(turn.stream_id, turn.caller.user_id, turn.message_id) as live:
                relay = StreamRelay(turn, sink, live, self._writer(turn), self._metrics)
                try:
                    with ask_span(relay):
                        return await relay.run()
                finally:
                    # Affinity: the next turn goes where this one ran (its prompt cache is there).
                    self._ollama.remember(turn.turn.conversation_id, turn.backend)

    def _writer(self, turn: OpenTurn) -> AnswerWriter:
        return AnswerWriter(
            self._repository,
            turn.message_id,
            self._metrics,
            self._pending,
            self._progress,
            retry_seconds=self.settings.stream_save_retry_seconds,
        )

    async def stop(self, stream_id: uuid.UUID, user_id: str) -> StopResult:
        """Stop a stream on any replica. Idempotent: an ended stream reports its final status."""
        state = await self._repository.stream_state(stream_id)
        if state is None or state.owner_id != user_id:
            raise StreamNotFound()
        if state.status != "streaming":
            return StopResult(stream_id, stopped=False, status=state.status)
        if self.registry.stop_local(stream_id):
            return StopResult(stream_id, stopped=True, status=None)
        await self._repository.notify_stop(stream_id)
        deadline = time.monotonic() + STOP_CONFIRM_SECONDS
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            state = await self._repository.stream_state(stream_id)
            if state is None or state.status != "streaming":
                return StopResult(stream_id, stopped=True, status=None)
        # No replica answered: the gateway that ran this stream is gone. Close it as it is.
        status = await self._repository.interrupt_stream(state.message_id)
        return StopResult(stream_id, stopped=False, status=status)

    async def upload_image(
        self, caller: Caller, chunks: AsyncIterator[bytes], *, filename: str | None, content_type: str
    ) -> ImageMeta:
        record = await self._store.upload(
            caller.user_id, chunks, filename=filename, content_type=content_type, request_id=caller.request_id
        )
        meta = ImageMeta.from_record(record)
        self._images.remember(caller.user_id, meta)
        return meta

    async def discard_uploads(self, image_ids: Sequence[uuid.UUID], caller: Caller) -> None:
        for image_id in image_ids:
            await self._store.delete(image_id, caller.user_id, caller.request_id)

    async def list_models(self) -> list[ModelCapabilities]:
        return await self._models.list_models()

    async def messages(self, conversation_id: uuid.UUID, user_id: str) -> list[StoredMessage]:
        messages = await self._repository.messages(conversation_id, user_id)
        if messages is None:
            raise ConversationNotFound()
        return messages
