"""ChatService: one chat turn from request to stored answer, independent of HTTP.

prepare() does everything that can refuse the request (model, images, ownership) before any row
is written or any byte is streamed; begin() opens the Ollama request and records the turn;
relay() streams events to a sink until the answer is done, stopped, failed or abandoned, and
always stores what was said so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import structlog

from common.settings import GatewaySettings
from services.vision_gateway.capabilities import ModelCapabilities, VisionModelService
from services.vision_gateway.errors import (
    ConversationNotFound,
    GatewayError,
    ImageNotFound,
    ModelNotVisionCapable,
    StreamNotFound,
    TooManyImages,
    UploadDisabled,
    UpstreamRejected,
)
from services.vision_gateway.image_prep import ImagePreparer, PreparedImage
from services.vision_gateway.image_store_client import ImageStoreClient
from services.vision_gateway.metrics import GatewayMetrics
from services.vision_gateway.ollama_client import ChatStream, OllamaClient, OllamaStreamError
from services.vision_gateway.repository import ConversationRepository, NewTurn, StoredMessage
from services.vision_gateway.streams import LiveStream, StreamRegistry

log = structlog.get_logger("retina.vision_gateway.chat")

# How often the partial answer is written while it streams (what a crash can lose).
PROGRESS_SAVE_SECONDS = 2.0


class EventSink(Protocol):
    """Where a stream's events go (an SSE response in production)."""

    async def send(self, event: dict[str, Any]) -> None: ...

    async def ping(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ChatRequest:
    user_id: str
    message: str
    model: str
    conversation_id: uuid.UUID | None
    image_ids: list[uuid.UUID]
    options: dict[str, Any] | None
    request_id: str = ""
    received_at: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class PreparedChat:
    request: ChatRequest
    model: str
    vision: bool
    ollama_messages: list[dict[str, Any]]
    notices: list[dict[str, str]]
    image_ids: list[uuid.UUID]


@dataclass(slots=True)
class ChatTurn:
    prepared: PreparedChat
    turn: NewTurn
    stream_id: uuid.UUID
    opening: asyncio.Task[ChatStream]


class ChatService:
    def __init__(
        self,
        settings: GatewaySettings,
        *,
        ollama: OllamaClient,
        models: VisionModelService,
        store: ImageStoreClient,
        preparer: ImagePreparer,
        repository: ConversationRepository,
        registry: StreamRegistry,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self._ollama = ollama
        self._models = models
        self._store = store
        self._preparer = preparer
        self._repository = repository
        self.registry = registry
        self._metrics = metrics
        self._known_sha: OrderedDict[tuple[str, uuid.UUID], str] = OrderedDict()

    # ---- before anything is written -------------------------------------------------------

    async def prepare(self, request: ChatRequest) -> PreparedChat:
        settings = self.settings
        if len(request.image_ids) > settings.max_images_per_message:
            raise TooManyImages(
                f"{len(request.image_ids)} images sent; at most {settings.max_images_per_message} per message"
            )
        if request.conversation_id is not None and not await self._repository.conversation_owned(
            request.conversation_id, request.user_id
        ):
            raise ConversationNotFound("conversation not found")
        history = (
            await self._repository.history(request.conversation_id, settings.history_messages)
            if request.conversation_id
            else []
        )
        history_image_ids = [i for m in reversed(history) if m.role == "user" for i in m.image_ids]
        history_image_ids = history_image_ids[
            : max(0, min(settings.history_images, settings.max_images_per_request - len(request.image_ids)))
        ]

        model = request.model
        notices: list[dict[str, str]] = []
        capabilities = await self._models.get(model)
        wants_images = bool(request.image_ids or history_image_ids)
        send_images = wants_images
        if wants_images and not capabilities.vision:
            policy = settings.fallback_policy
            if policy == "reject":
                raise ModelNotVisionCapable(
                    f"model {model!r} cannot see images; choose a vision model or send text only"
                )
            if policy == "fallback_model":
                fallback = await self._models.get(settings.fallback_model)
                if not fallback.vision:
                    raise ModelNotVisionCapable(
                        f"neither {model!r} nor the fallback model {fallback.name!r} can see images"
                    )
                notices.append(
                    {
                        "code": "fallback_model",
                        "message": f"{model} cannot see images; {fallback.name} answers instead",
                    }
                )
                model = fallback.name
            else:
                notices.append(
                    {"code": "images_ignored", "message": f"{model} cannot see images; answering from the text only"}
                )
                send_images = False

        current = await self._prepare_images(request, request.image_ids, skip_missing=False) if send_images else []
        if not send_images and request.image_ids:
            await self._check_owned(request)  # still refuse someone else's image IDs
        past = await self._prepare_images(request, history_image_ids, skip_missing=True) if send_images else {}

        messages: list[dict[str, Any]] = []
        for stored in history:
            entry: dict[str, Any] = {"role": stored.role, "content": stored.content}
            images = [past[i].base64 for i in stored.image_ids if i in past]
            if images:
                entry["images"] = images
            messages.append(entry)
        user_entry: dict[str, Any] = {"role": "user", "content": request.message}
        if current:
            user_entry["images"] = [current[i].base64 for i in request.image_ids]
        messages.append(user_entry)
        sent = sum(len(img) for m in messages for img in m.get("images", []))
        self._metrics.image_bytes_sent.inc(sent)
        return PreparedChat(request, model, capabilities.vision, messages, notices, list(request.image_ids))

    async def _check_owned(self, request: ChatRequest) -> None:
        """Images that will not be sent must still be the caller's (404 otherwise), without downloading them."""
        for image_id in request.image_ids:
            await self._store.fetch(image_id, request.user_id, request.request_id, known_sha256="*")

    async def _prepare_images(
        self, request: ChatRequest, image_ids: list[uuid.UUID], *, skip_missing: bool
    ) -> dict[uuid.UUID, PreparedImage]:
        async def one(image_id: uuid.UUID) -> tuple[uuid.UUID, PreparedImage | None]:
            try:
                return image_id, await self._prepare_one(request, image_id)
            except ImageNotFound:
                if skip_missing:
                    return image_id, None
                raise

        results = await asyncio.gather(*(one(i) for i in dict.fromkeys(image_ids)))
        return {image_id: prepared for image_id, prepared in results if prepared is not None}

    async def _prepare_one(self, request: ChatRequest, image_id: uuid.UUID) -> PreparedImage:
        key = (request.user_id, image_id)
        known = self._known_sha.get(key)
        if known is not None and self._preparer.cached(known) is None:
            known = None
        started = time.perf_counter()
        fetched = await self._store.fetch(image_id, request.user_id, request.request_id, known_sha256=known)
        self._metrics.image_prep.labels("fetch").observe(time.perf_counter() - started)
        if fetched.data is None:
            cached = self._preparer.cached(fetched.sha256)
            if cached is not None:
                return cached
            fetched = await self._store.fetch(image_id, request.user_id, request.request_id)
        started = time.perf_counter()
        assert fetched.data is not None
        prepared = await self._preparer.prepare(fetched.sha256, fetched.data)
        self._metrics.image_prep.labels("encode").observe(time.perf_counter() - started)
        self._known_sha[key] = fetched.sha256
        while len(self._known_sha) > 10_000:
            self._known_sha.popitem(last=False)
        return prepared

    # ---- opening the stream ---------------------------------------------------------------

    async def begin(self, prepared: PreparedChat, *, grace_seconds: float) -> ChatTurn:
        """Open the Ollama request and record the turn at the same time.

        If Ollama fails within `grace_seconds` the recorded rows are removed again and the caller
        answers with a plain JSON error. A model still loading after the grace period keeps us
        waiting longer than that, so the caller starts streaming (and pinging) anyway.
        """
        request = prepared.request
        payload: dict[str, Any] = {"model": prepared.model, "messages": prepared.ollama_messages}
        if request.options:
            payload["options"] = request.options
        opening = asyncio.create_task(self._ollama.open_chat(payload, request_id=request.request_id))
        stream_id = uuid.uuid4()
        recording = asyncio.create_task(
            self._repository.start_turn(
                owner_id=request.user_id,
                conversation_id=request.conversation_id,
                content=request.message,
                model=prepared.model,
                image_ids=prepared.image_ids,
                stream_id=stream_id,
            )
        )
        try:
            await asyncio.wait_for(asyncio.shield(opening), grace_seconds)
        except TimeoutError:
            pass
        except BaseException as exc:
            if not opening.done():
                opening.cancel()
            await self._undo_recording(recording, new_conversation=request.conversation_id is None)
            if isinstance(exc, OllamaStreamError):  # an error line before any output (Ollama <= 0.12.5: HTTP 200)
                raise UpstreamRejected(f"Ollama failed before answering: {exc.message}") from exc
            raise
        try:
            turn = await recording
        except BaseException:
            opening.cancel()
            with contextlib.suppress(BaseException):
                (await opening).close()
            raise
        for image_id in prepared.image_ids:
            with contextlib.suppress(GatewayError):
                await self._store.link(image_id, turn.user_message_id, request.user_id)
        return ChatTurn(prepared, turn, stream_id, opening)

    async def abandon(self, chat: ChatTurn) -> None:
        """The client went away before streaming started: close Ollama's request, record the stop."""
        chat.opening.cancel()
        with contextlib.suppress(BaseException):
            (await chat.opening).close()
        await asyncio.shield(
            self._repository.finish_turn(
                chat.turn.assistant_message_id, content="", status="stopped", error="client disconnected", stats=None
            )
        )

    async def _undo_recording(self, recording: asyncio.Task[NewTurn], *, new_conversation: bool) -> None:
        try:
            turn = await recording
        except Exception:  # noqa: BLE001 - nothing was recorded
            return
        await asyncio.shield(self._repository.discard_turn(turn, new_conversation=new_conversation))

    # ---- the rest of the API --------------------------------------------------------------

    async def upload_image(
        self, user_id: str, chunks: Any, *, filename: str | None, content_type: str, request_id: str
    ) -> uuid.UUID:
        if not self.settings.upload_enabled:
            raise UploadDisabled("image uploads are disabled on this server")
        record = await self._store.upload(
            user_id, chunks, filename=filename, content_type=content_type, request_id=request_id
        )
        return uuid.UUID(record["id"])

    async def discard_uploads(self, image_ids: list[uuid.UUID], user_id: str, request_id: str) -> None:
        for image_id in image_ids:
            await self._store.delete(image_id, user_id, request_id)

    async def stop(self, stream_id: uuid.UUID, user_id: str) -> None:
        """Stop a stream running on any replica; unknown or foreign streams are not found."""
        owner = await self._repository.streaming_owner(stream_id)
        if owner != user_id:
            raise StreamNotFound("stream not found")
        if not self.registry.stop_local(stream_id):
            await self._repository.notify_stop(stream_id)

    async def list_models(self) -> list[ModelCapabilities]:
        return await self._models.list_models()

    async def messages(self, conversation_id: uuid.UUID, user_id: str) -> list[StoredMessage]:
        messages = await self._repository.messages(conversation_id, user_id)
        if messages is None:
            raise ConversationNotFound("conversation not found")
        return messages

    # ---- streaming --------------------------------------------------------------------------

    async def relay(self, chat: ChatTurn, sink: EventSink) -> str:
        """Stream the answer to `sink`; returns the outcome. Stores the (partial) answer always."""
        prepared, request = chat.prepared, chat.prepared.request
        label = self._metrics.model_label(prepared.model)
        in_flight = self._metrics.in_flight.labels(label)
        in_flight.inc()
        content: list[str] = []
        state = _StreamState()
        outcome = "upstream_error"
        upstream: ChatStream | None = None
        with self.registry.register(chat.stream_id, request.user_id) as live:
            try:
                await sink.send(
                    {
                        "type": "start",
                        "stream_id": str(chat.stream_id),
                        "conversation_id": str(chat.turn.conversation_id),
                        "user_message_id": str(chat.turn.user_message_id),
                        "message_id": str(chat.turn.assistant_message_id),
                        "model": prepared.model,
                        "vision": prepared.vision,
                        "image_ids": [str(i) for i in prepared.image_ids],
                    }
                )
                for notice in prepared.notices:
                    await sink.send({"type": "notice", **notice})
                upstream = await self._await_open(chat, live, sink)
                if upstream is None:
                    outcome = self._stop_outcome(live)
                    await self._finish_stopped(chat, sink, live, content, state)
                    return outcome
                self._metrics.upstream_ttfc.labels(label).observe(upstream.first_chunk_seconds)
                outcome = await self._pump(chat, upstream, live, sink, content, state)
                return outcome
            except OllamaStreamError as exc:
                outcome = "upstream_error"
                await self._finish_error(chat, sink, content, state, "upstream_error", exc.message)
                return outcome
            except GatewayError as exc:
                outcome = "upstream_error"
                await self._finish_error(chat, sink, content, state, exc.code, exc.message)
                return outcome
            except (asyncio.CancelledError, ConnectionResetError):
                outcome = "client_disconnected"
                await asyncio.shield(self._store_partial(chat, content, "stopped", "client disconnected", state))
                raise
            finally:
                if upstream is not None:
                    upstream.close()
                if not chat.opening.done():
                    chat.opening.cancel()
                elif not chat.opening.cancelled() and chat.opening.exception() is None and upstream is None:
                    chat.opening.result().close()
                in_flight.dec()
                self._metrics.streams.labels(label, outcome).inc()
                self._metrics.stream_duration.labels(label, outcome).observe(time.perf_counter() - request.received_at)
                self._record_token_metrics(label, state)

    async def _await_open(self, chat: ChatTurn, live: LiveStream, sink: EventSink) -> ChatStream | None:
        """Wait for Ollama's first line, pinging the client; None if stopped meanwhile."""
        while True:
            if live.stop_reason is not None:
                return None
            wake = asyncio.ensure_future(live.wakeup.wait())
            done, _ = await asyncio.wait(
                {chat.opening, wake}, timeout=self.settings.heartbeat_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            wake.cancel()
            if chat.opening in done:
                return chat.opening.result()
            if not done:
                await sink.ping()

    async def _pump(
        self,
        chat: ChatTurn,
        upstream: ChatStream,
        live: LiveStream,
        sink: EventSink,
        content: list[str],
        state: _StreamState,
    ) -> str:
        """Relay chunks as they arrive. A stop closes the upstream response, which ends the loop."""
        label = self._metrics.model_label(chat.prepared.model)
        received_at = chat.prepared.request.received_at
        heartbeat = asyncio.create_task(self._heartbeat(sink, state))
        stop_watch = asyncio.create_task(live.wakeup.wait())
        stop_watch.add_done_callback(lambda _: upstream.close())
        try:
            async for chunk in upstream.chunks():
                if chunk.content:
                    now = time.perf_counter()
                    if state.first_at is None:
                        state.first_at = now
                        self._metrics.ttft.labels(label).observe(now - received_at)
                    state.last_at = now
                    state.chunks += 1
                    content.append(chunk.content)
                    await sink.send({"type": "chunk", "content": chunk.content})
                    self._maybe_save_progress(chat, content, state, now)
                if chunk.done:
                    state.upstream_stats = chunk.stats
                    stats = self._stats(chat, state)
                    await asyncio.shield(self._store_partial(chat, content, "complete", None, state, stats=stats))
                    await sink.send(
                        {
                            "type": "done",
                            "message_id": str(chat.turn.assistant_message_id),
                            "done_reason": chunk.done_reason or "stop",
                            "stats": stats,
                        }
                    )
                    return "completed"
        except (OllamaStreamError, aiohttp.ClientError):
            if live.stop_reason is None:
                raise
        finally:
            heartbeat.cancel()
            stop_watch.cancel()
        # Only a stop ends the loop without a done chunk or an error.
        await self._finish_stopped(chat, sink, live, content, state)
        return self._stop_outcome(live)

    async def _heartbeat(self, sink: EventSink, state: _StreamState) -> None:
        """`: ping` when the model has been silent for a heartbeat interval."""
        interval = self.settings.heartbeat_seconds
        while True:
            await asyncio.sleep(interval)
            last = state.last_at or 0.0
            if time.perf_counter() - last >= interval:
                await sink.ping()

    @staticmethod
    def _stop_outcome(live: LiveStream) -> str:
        return "shutdown" if live.stop_reason == "shutdown" else "stopped"

    async def _finish_stopped(
        self, chat: ChatTurn, sink: EventSink, live: LiveStream, content: list[str], state: _StreamState
    ) -> None:
        stats = self._stats(chat, state)
        if live.stop_reason == "shutdown":
            await asyncio.shield(self._store_partial(chat, content, "stopped", "server shutting down", state))
            await sink.send(
                {
                    "type": "error",
                    "code": "shutting_down",
                    "message": "the server is shutting down; the partial answer was saved",
                    "partial": bool(content),
                }
            )
            return
        await asyncio.shield(self._store_partial(chat, content, "stopped", None, state, stats=stats))
        await sink.send(
            {
                "type": "done",
                "message_id": str(chat.turn.assistant_message_id),
                "done_reason": "stopped",
                "stats": stats,
            }
        )

    async def _finish_error(
        self, chat: ChatTurn, sink: EventSink, content: list[str], state: _StreamState, code: str, message: str
    ) -> None:
        await asyncio.shield(self._store_partial(chat, content, "error", message, state))
        await sink.send({"type": "error", "code": code, "message": message, "partial": bool(content)})

    def _maybe_save_progress(self, chat: ChatTurn, content: list[str], state: _StreamState, now: float) -> None:
        """At most one background save every PROGRESS_SAVE_SECONDS, never two at once."""
        if not state.saved_at:  # short answers finish before their first save is due
            state.saved_at = now
            return
        if now - state.saved_at < PROGRESS_SAVE_SECONDS or (state.saving and not state.saving.done()):
            return
        state.saved_at = now
        state.saving = asyncio.create_task(
            self._repository.save_progress(chat.turn.assistant_message_id, "".join(content))
        )

    async def _store_partial(
        self,
        chat: ChatTurn,
        content: list[str],
        status: str,
        error: str | None,
        state: _StreamState,
        *,
        stats: dict[str, Any] | None = None,
    ) -> None:
        if state.stored:
            return
        state.stored = True
        if state.saving is not None:  # the final write must land after any progress save
            with contextlib.suppress(Exception):
                await state.saving
        try:
            await self._repository.finish_turn(
                chat.turn.assistant_message_id,
                content="".join(content),
                status=status,
                error=error,
                stats=stats if stats is not None else self._stats(chat, state),
            )
        except Exception:
            log.exception("store_answer_failed", message_id=str(chat.turn.assistant_message_id))

    def _stats(self, chat: ChatTurn, state: _StreamState) -> dict[str, Any]:
        received = chat.prepared.request.received_at
        upstream = state.upstream_stats
        return {
            "prompt_tokens": upstream.get("prompt_eval_count", 0),
            "completion_tokens": upstream.get("eval_count", state.chunks),
            "time_to_first_token_ms": round((state.first_at - received) * 1000, 2) if state.first_at else None,
            "total_duration_ms": round((time.perf_counter() - received) * 1000, 2),
        }

    def _record_token_metrics(self, label: str, state: _StreamState) -> None:
        upstream = state.upstream_stats
        if "prompt_eval_count" in upstream:
            self._metrics.tokens.labels(label, "input").inc(upstream["prompt_eval_count"])
        if "eval_count" in upstream:
            self._metrics.tokens.labels(label, "output").inc(upstream["eval_count"])
        if state.first_at is not None and state.last_at is not None and state.chunks > 1:
            self._metrics.tpot.labels(label).observe((state.last_at - state.first_at) / (state.chunks - 1))


@dataclass(slots=True)
class _StreamState:
    saved_at: float = 0.0
    saving: asyncio.Task[None] | None = None
    first_at: float | None = None
    last_at: float | None = None
    chunks: int = 0
    upstream_stats: dict[str, int] = field(default_factory=dict)
    stored: bool = False
