"""HTTP handlers of the vision-gateway: parse, call ChatService, stream or answer JSON."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, MultipartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from common.app import AUTH_KEY
from common.content_disposition import parse_form_data_disposition
from common.errors import (
    BadRequest,
    ConversationNotFound,
    RequestTimeout,
    StreamNotFound,
    TooManyImages,
    UnsupportedMediaType,
)
from common.http.body_timeout import BodyClocks, BodyReadTimeout, read_limits
from common.http.multipart import read_small_field
from common.http.request_context import request_id_of
from common.ids import parse_uuid
from common.metrics import EVENT_STREAM_KEY
from services.vision_gateway.admission import StreamAdmission
from services.vision_gateway.chat import ChatService
from services.vision_gateway.chat.ollama_request_fields import keep_alive_from_text
from services.vision_gateway.chat.thinking import think_from_form
from services.vision_gateway.chat_fields import (
    fields_before_images,
    format_text,
    json_text,
    parse_chat_fields,
    parse_image_ids_part,
)
from services.vision_gateway.history import HistoryImages, message_with_images
from services.vision_gateway.sse import EventStream

if TYPE_CHECKING:  # typing.TypeIs arrives in 3.13; only the checker needs it
    pass

CHAT_SERVICE_KEY = web.AppKey("chat_service", ChatService)
HISTORY_IMAGES_KEY = web.AppKey("history_images", HistoryImages)
ADMISSION_KEY = web.AppKey("stream_admission", StreamAdmission)

MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 32
UPLOAD_CHUNK = 256 * 1024
# How long to wait for Ollama before committing to a stream (and pinging while it loads).
OPEN_GRACE_SECONDS = 1.0


async def stream_message(request: web.Request) -> web.StreamResponse:
    caller = request.app[AUTH_KEY].caller(request)
    # Per-user stream and rate limits come first: a refused request uploads, fetches and writes nothing.
    with request.app[ADMISSION_KEY].admit(caller.user_id):
        return await _stream_message(request, caller.user_id)


async def _stream_message(request: web.Request, user_id: str) -> web.StreamResponse:
    service = request.app[CHAT_SERVICE_KEY]
    request_id = request_id_of(request)
    uploaded: list[uuid.UUID] = []
    try:
        fields = await _read_body(request, service, user_id, request_id, uploaded)
        chat_request = parse_chat_fields(fields, user_id, request_id)
        if uploaded:
            chat_request = dataclasses.replace(chat_request, image_ids=[*chat_request.image_ids, *uploaded])
        prepared = await service.prepare(chat_request)
        turn = await service.begin(prepared, grace_seconds=OPEN_GRACE_SECONDS)
    except BaseException:
        await service.discard_uploads(uploaded, user_id, request_id)  # a refused request keeps none
        raise
    request[EVENT_STREAM_KEY] = True
    # The IDs as headers too, so a client (or an OpenAPI link) can stop the stream or read the history
    # without parsing the event stream.
    ids = {"X-Stream-Id": str(turn.stream_id), "X-Conversation-Id": str(turn.turn.conversation_id)}
    stream = EventStream(heartbeat_seconds=service.settings.heartbeat_seconds, headers=ids)
    try:
        await stream.prepare(request)
    except BaseException:  # the client left before the stream began; the turn must not stay "streaming"
        await service.abandon(turn)
        raise
    try:
        await service.relay(turn, stream)
    finally:
        await stream.close()
    return stream.response


async def _read_body(
    request: web.Request, service: ChatService, user_id: str, request_id: str, uploaded: list[uuid.UUID]
) -> dict[str, Any]:
    """The request's fields, read under the same idle and overall clocks as the image-store's
    (IMAGE_UPLOAD_IDLE_TIMEOUT_SECONDS, IMAGE_UPLOAD_DEADLINE_SECONDS): a stalled client gets 408
    here, whichever of its parts it stalls in, instead of holding the request open for ever."""
    settings = service.settings
    try:
        async with read_limits(
            lambda: request.content.total_bytes,
            idle_seconds=settings.upload_idle_timeout_seconds,
            deadline_seconds=settings.upload_deadline_seconds,
        ) as clocks:
            if request.content_type == "multipart/form-data":
                return await _read_multipart(request, service, user_id, request_id, uploaded, clocks)
            if request.content_type == "application/json":
                try:
                    fields = await request.json()
                # RecursionError: nesting deeper than the parser goes is no JSON we can read either.
                except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
                    raise BadRequest("the body is not valid JSON") from exc
                if not isinstance(fields, dict):
                    raise BadRequest("the body must be a JSON object")
                return fields
            raise UnsupportedMediaType("send application/json or multipart/form-data")
    except BodyReadTimeout as exc:
        raise RequestTimeout(exc.message) from exc


# How each text part of the form becomes the value the JSON body would hold.
_FORM_TEXT: dict[str, Callable[[str], Any]] = {
    "message": str,
    "model": str,
    "conversation_id": str,
    "options": lambda text: json_text(text, "options"),
    "think": think_from_form,
    "format": format_text,
    "keep_alive": keep_alive_from_text,
}


async def _read_multipart(
    request: web.Request,
    service: ChatService,
    user_id: str,
    request_id: str,
    uploaded: list[uuid.UUID],
    clocks: BodyClocks,
) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    try:
        reader = await request.multipart()
        parts = 0
        while (part := await reader.next()) is not None:
            parts += 1
            if parts > MAX_PARTS or isinstance(part, MultipartReader):
                raise BadRequest("too many or nested multipart parts")
            # Not part.name / part.filename: aiohttp's parser splits quoted names at ';'.
            disposition = parse_form_data_disposition(part.headers.get(hdrs.CONTENT_DISPOSITION))
            name = disposition.name or ""
            if name == "images":
                if len(uploaded) >= service.settings.max_images_per_message:  # refused before its bytes are sent on
                    raise TooManyImages(f"at most {service.settings.max_images_per_message} images per message")
                if not uploaded:
                    await _check_before_images(service, fields, clocks)
                uploaded.append(await _upload_part(part, disposition.filename, service, user_id, request_id, clocks))
            elif name == "image_ids":
                ids = parse_image_ids_part(await read_small_field(part, MAX_FIELD_BYTES))
                fields.setdefault("image_ids", []).extend(ids)
            elif name in _FORM_TEXT:
                fields[name] = _FORM_TEXT[name](await read_small_field(part, MAX_FIELD_BYTES))
            else:
                raise BadRequest(f"unexpected multipart field {name!r}" if name else "a multipart part has no name")
    except (ValueError, AssertionError, HttpProcessingError) as exc:
        raise BadRequest("malformed multipart body") from exc
    return fields


async def _check_before_images(service: ChatService, fields: dict[str, Any], clocks: BodyClocks) -> None:
    """Judge the fields sent so far before the first image moves. The model lookup may wait on
    Ollama: that wait is the gateway's, so it must not count against the client's body clocks."""
    early = fields_before_images(fields)
    clocks.pause()
    try:
        await service.check_before_images(early.model, early.think, early.ollama)
    finally:
        clocks.resume()


async def _upload_part(
    part: BodyPartReader,
    filename: str | None,
    service: ChatService,
    user_id: str,
    request_id: str,
    clocks: BodyClocks,
) -> uuid.UUID:
    """Forward one image part to the image-store as it arrives; its ID once stored."""
    content_type = part.headers.get("Content-Type", "application/octet-stream")
    try:
        return await service.upload_image(
            user_id, _chunks(part, clocks), filename=filename, content_type=content_type, request_id=request_id
        )
    finally:
        clocks.resume()


async def _chunks(part: BodyPartReader, clocks: BodyClocks) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(UPLOAD_CHUNK):
        yield chunk
    # The image is forwarded; until the store has checked and stored it, the client's remaining
    # bytes wait in buffers, and that wait must not count as the client being idle or slow.
    clocks.pause()


async def stop_stream(request: web.Request) -> web.Response:
    caller = request.app[AUTH_KEY].caller(request)
    service = request.app[CHAT_SERVICE_KEY]
    raw = request.match_info["stream_id"]
    stream_id = parse_uuid(raw)
    if stream_id is None:
        raise StreamNotFound("stream not found")
    result = await service.stop(stream_id, caller.user_id)
    return web.json_response(result.to_json())


async def list_models(request: web.Request) -> web.Response:
    request.app[AUTH_KEY].check_token(request)
    models = await request.app[CHAT_SERVICE_KEY].list_models()
    return web.json_response(
        {"models": [{"name": m.name, "vision": m.vision, "capabilities": list(m.capabilities)} for m in models]}
    )


async def conversation_messages(request: web.Request) -> web.Response:
    caller = request.app[AUTH_KEY].caller(request)
    raw = request.match_info["conversation_id"]
    conversation_id = parse_uuid(raw)
    if conversation_id is None:
        raise ConversationNotFound()
    messages = await request.app[CHAT_SERVICE_KEY].messages(conversation_id, caller.user_id)
    urls = await request.app[HISTORY_IMAGES_KEY].urls(messages, caller.user_id, request_id_of(request))
    return web.json_response({"messages": [message_with_images(m, urls) for m in messages]})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/stream-message", stream_message, name="stream_message")
    app.router.add_post("/api/stream-message/{stream_id}/stop", stop_stream, name="stop_stream")
    app.router.add_get("/api/models", list_models, name="models")
    app.router.add_get("/api/conversations/{conversation_id}/messages", conversation_messages, name="messages")
