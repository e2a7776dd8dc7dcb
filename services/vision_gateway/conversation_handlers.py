"""HTTP handlers of the conversation list: `GET /api/conversations`, `DELETE /api/conversations/{id}`."""

from __future__ import annotations

from aiohttp import web

from common.app import AUTH_KEY
from common.errors import BadRequest, ConversationNotFound
from common.http.paging import page_params
from common.http.request_context import request_id_of
from common.ids import parse_uuid
from services.vision_gateway.conversations import DEFAULT_PAGE, IMAGE_RULES, MAX_PAGE, ConversationService

CONVERSATION_SERVICE_KEY = web.AppKey("conversation_service", ConversationService)


async def list_conversations(request: web.Request) -> web.Response:
    caller = request.app[AUTH_KEY].caller(request)
    wanted = page_params(request.query, default=DEFAULT_PAGE, maximum=MAX_PAGE)
    page = await request.app[CONVERSATION_SERVICE_KEY].list(caller.user_id, limit=wanted.limit, cursor=wanted.cursor)
    return web.json_response(page.to_json())


async def delete_conversation(request: web.Request) -> web.Response:
    caller = request.app[AUTH_KEY].caller(request)
    images = request.query.get("images", "unlink")
    if images not in IMAGE_RULES:
        raise BadRequest(f"images must be one of {', '.join(IMAGE_RULES)}")
    conversation_id = parse_uuid(request.match_info["conversation_id"])
    if conversation_id is None:
        raise ConversationNotFound()
    await request.app[CONVERSATION_SERVICE_KEY].delete(
        conversation_id, caller.user_id, images=images, request_id=request_id_of(request)
    )
    return web.Response(status=204)


def add_conversation_routes(app: web.Application) -> None:
    app.router.add_get("/api/conversations", list_conversations, name="conversations")
    app.router.add_delete("/api/conversations/{conversation_id}", delete_conversation, name="conversation")
