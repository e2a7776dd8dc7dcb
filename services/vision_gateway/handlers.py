"""HTTP handlers of the vision-gateway: parse, call ChatService, stream or answer JSON."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from common.app import AUTH_KEY
from common.errors import ConversationNotFound, StreamNotFound, UnsupportedMediaType
from common.http.json_body import read_json_object
from common.http.media_type import media_type
from common.http.request_context import request_id_of
from common.ids import parse_uuid
from services.vision_gateway.ask_form import read_ask_form
from services.vision_gateway.chat import Ask, ChatService
from services.vision_gateway.entry import OPEN_GRACE_SECONDS, body_clocks, stream_turn
from services.vision_gateway.history import HistoryImages, message_with_images

CHAT_SERVICE_KEY = web.AppKey("chat_service", ChatService)
HISTORY_IMAGES_KEY = web.AppKey("history_images", HistoryImages)


async def stream_message(request: web.Request) -> web.StreamResponse:
    # The handler's locals live as long as the stream: only what the stream needs is kept in them.
    user_id = request.app[AUTH_KEY].caller(request).user_id
    service = request.app[CHAT_SERVICE_KEY]
    # Per-user stream and rate limits come first: a refused request uploads, fetches and writes nothing.
    async with service.admit(user_id, request_id_of(request)) as ask:
        turn = await ask.begin(ask.parse(await _ask_fields(request, service, ask)), grace_seconds=OPEN_GRACE_SECONDS)
        # The IDs as headers too, so a client (or an OpenAPI link) can stop the stream or read the history
        # without parsing the event stream.
        ids = {"X-Stream-Id": str(turn.stream_id), "X-Conversation-Id": str(turn.turn.conversation_id)}
        return await stream_turn(request, service, turn, headers=ids)


async def _ask_fields(request: web.Request, service: ChatService, ask: Ask) -> dict[str, Any]:
    """The ask's fields from its body, read under the body clocks. A function of its own so that
    the clocks and the parsed body are not locals of the handler, which lives as long as the stream."""
    async with body_clocks(request, service) as clocks:
        content_type = media_type(request)
        if content_type == "multipart/form-data":
            return await read_ask_form(request, ask, clocks)
        if content_type == "application/json":
            return await read_json_object(request, max_bytes=request.client_max_size)
        raise UnsupportedMediaType("send application/json or multipart/form-data")


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
