"""HTTP handlers of the vision-gateway: parse, call ChatService, stream or answer JSON."""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from common.app import AUTH_KEY
from common.http.request_context import request_id_of
from common.ids import parse_uuid
from common.metrics import EVENT_STREAM_KEY
from services.vision_gateway.admission import StreamAdmission
from services.vision_gateway.chat import ChatRequest, ChatService
from services.vision_gateway.errors import (
    BadRequest,
    ConversationNotFound,
    StreamNotFound,
    TooManyImages,
    UnsupportedMediaType,
)
from services.vision_gateway.sse import EventStream

CHAT_SERVICE_KEY = web.AppKey("chat_service", ChatService)
ADMISSION_KEY = web.AppKey("stream_admission", StreamAdmission)

MAX_MESSAGE_CHARS = 32_000
MAX_MODEL_CHARS = 200
MAX_OPTIONS_BYTES = 8 * 1024
MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 32
UPLOAD_CHUNK = 256 * 1024
# How long to wait for Ollama before committing to a stream (and pinging while it loads).
OPEN_GRACE_SECONDS = 1.0


def _uuid(raw: Any, field: str) -> uuid.UUID:
    value = parse_uuid(raw)
    if value is None:
        if isinstance(raw, str) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", raw):
            raise BadRequest(f"{field} must hold image IDs, not URLs")
        raise BadRequest(f"{field} must be a UUID")
    return value


def parse_chat_fields(fields: dict[str, Any], user_id: str, request_id: str) -> ChatRequest:
    message = fields.get("message")
    if not isinstance(message, str) or not message.strip():
        raise BadRequest("message is required and must be non-empty text")
    if len(message) > MAX_MESSAGE_CHARS:
        raise BadRequest(f"message is longer than {MAX_MESSAGE_CHARS} characters")
    model = fields.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > MAX_MODEL_CHARS:
        raise BadRequest("model is required and must be a model name")
    conversation = fields.get("conversation_id")
    conversation_id = None if conversation in (None, "") else _uuid(conversation, "conversation_id")
    raw_ids = fields.get("image_ids") or []
    if not isinstance(raw_ids, list):
        raise BadRequest("image_ids must be a list of image IDs")
    options = fields.get("options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("options must be a JSON object")
    if options is not None and len(json.dumps(options)) > MAX_OPTIONS_BYTES:
        raise BadRequest(f"options is larger than {MAX_OPTIONS_BYTES} bytes")
    return ChatRequest(
        user_id=user_id,
        message=message,
        model=model.strip(),
        conversation_id=conversation_id,
        image_ids=[_uuid(raw, "image_ids") for raw in raw_ids],
        options=options,
        request_id=request_id,
    )


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
        if request.content_type == "multipart/form-data":
            fields = await _read_multipart(request, service, user_id, request_id, uploaded)
        elif request.content_type == "application/json":
            try:
                fields = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise BadRequest("the body is not valid JSON") from exc
            if not isinstance(fields, dict):
                raise BadRequest("the body must be a JSON object")
        else:
            raise UnsupportedMediaType("send application/json or multipart/form-data")
        chat_request = parse_chat_fields(fields, user_id, request_id)
        if uploaded:
            chat_request = dataclasses.replace(chat_request, image_ids=[*chat_request.image_ids, *uploaded])
        prepared = await service.prepare(chat_request)
        turn = await service.begin(prepared, grace_seconds=OPEN_GRACE_SECONDS)
    except BaseException:
        await service.discard_uploads(uploaded, user_id, request_id)  # a refused request keeps none
        raise
    request[EVENT_STREAM_KEY] = True
    stream = EventStream(heartbeat_seconds=service.settings.heartbeat_seconds)
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


async def _read_multipart(
    request: web.Request, service: ChatService, user_id: str, request_id: str, uploaded: list[uuid.UUID]
) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    try:
        reader = await request.multipart()
        parts = 0
        while (part := await reader.next()) is not None:
            parts += 1
            if parts > MAX_PARTS or isinstance(part, MultipartReader):
                raise BadRequest("too many or nested multipart parts")
            if part.name == "images":
                if len(uploaded) >= service.settings.max_images_per_message:
                    raise TooManyImages(f"at most {service.settings.max_images_per_message} images per message")
                image_id = await service.upload_image(
                    user_id,
                    _chunks(part),
                    filename=part.filename,
                    content_type=part.headers.get("Content-Type", "application/octet-stream"),
                    request_id=request_id,
                )
                uploaded.append(image_id)
            elif part.name in ("message", "model", "conversation_id", "options", "image_ids"):
                text = await _small_text(part)
                if part.name in ("options", "image_ids"):
                    try:
                        fields[part.name] = json.loads(text) if text else None
                    except ValueError as exc:
                        raise BadRequest(f"{part.name} must be JSON text") from exc
                else:
                    fields[part.name] = text
            else:
                raise BadRequest(f"unexpected multipart field {part.name!r}")
    except (ValueError, AssertionError, HttpProcessingError) as exc:
        raise BadRequest("malformed multipart body") from exc
    return fields


async def _chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(UPLOAD_CHUNK):
        yield chunk


async def _small_text(part: BodyPartReader) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(MAX_FIELD_BYTES):
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise BadRequest(f"field {part.name!r} is too large")
    return data.decode("utf-8")


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
    return web.json_response({"messages": [m.to_json() for m in messages]})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/stream-message", stream_message, name="stream_message")
    app.router.add_post("/api/stream-message/{stream_id}/stop", stop_stream, name="stop_stream")
    app.router.add_get("/api/models", list_models, name="models")
    app.router.add_get("/api/conversations/{conversation_id}/messages", conversation_messages, name="messages")
