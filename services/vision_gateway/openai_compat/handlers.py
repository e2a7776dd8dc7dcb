"""OpenAI-compatible routes, as the `/v1` sub-application: `POST /v1/chat/completions`, `GET /v1/models`,
`GET /v1/models/{model}`.

An OpenAI body is mapped into the one chat request at the edge (mapping.py) and then goes the
way every ask goes: read under the body clocks, admitted by `ChatService.admit` (per-user limits,
uploads undone on refusal), begun and relayed by ChatService. What is OpenAI's own: the body may
carry images as base64 data: URLs, so it may be far larger than other JSON bodies; its bytes are
reserved from the prep budget (VISION_PREP_BUDGET_MB) before they are read, and a full budget is
`503 busy` with Retry-After, exactly as for images fetched from the store. Errors leave in OpenAI's
shape through this sub-application's own middleware (`openai_error_middleware`).
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from common.app import AUTH_KEY
from common.auth import USER_ID_HEADER, parse_user_id
from common.errors import ApiError, BadRequest, UnknownModel, UnsupportedMediaType
from common.http.error_middleware import error_middleware_rendering
from common.http.json_body import read_json_object
from common.http.media_type import media_type
from common.http.request_context import request_id_of
from services.vision_gateway.admission import BODY_COPIES
from services.vision_gateway.chat import Ask, ChatService, SentMessage
from services.vision_gateway.entry import OPEN_GRACE_SECONDS, body_clocks, stream_turn
from services.vision_gateway.handlers import CHAT_SERVICE_KEY
from services.vision_gateway.openai_compat.mapping import Completion, ImagePart, map_completion, openai_params
from services.vision_gateway.openai_compat.response import ChunkStream, CompletionCollector, openai_error

# Images arrive inline as base64 data: URLs, so this body may be far larger than other JSON bodies;
# larger images are uploaded to the image-store first and sent as retina:<image-id>.
MAX_BODY_BYTES = 48 * 1024 * 1024
UPLOAD_CHUNK = 256 * 1024
# What a completion was recorded as (browsers may read them: exposed through CORS).
RETINA_HEADERS = ("X-Retina-Conversation-Id", "X-Retina-Message-Id", "X-Retina-Stream-Id", "X-Retina-Notices")


def _render_openai(error: ApiError) -> web.Response:
    return web.json_response(openai_error(error), status=error.status, headers=error.headers)


# Every error of a /v1 route in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`), unknown
# paths and methods included; the decisions (codes, 500s, a started stream) are the services' one error path.
openai_error_middleware = error_middleware_rendering(
    _render_openai,
    not_found="no such route (this server offers /v1/chat/completions, /v1/models and /v1/models/{model})",
)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    request.config_dict[AUTH_KEY].check_token(request)
    service = request.config_dict[CHAT_SERVICE_KEY]
    if media_type(request) != "application/json":
        raise UnsupportedMediaType("send application/json")
    # The body's bytes are held several times while it is parsed and its images uploaded: reserve them first.
    reservation = await service.budget.hold(BODY_COPIES * (request.content_length or MAX_BODY_BYTES))
    try:
        async with body_clocks(request, service):
            body = await read_json_object(request, max_bytes=MAX_BODY_BYTES, too_large=_TOO_LARGE)
        completion = map_completion(body, max_images=service.settings.max_images_per_request)
        del body
        async with service.admit(_user_of(request, completion), request_id_of(request)) as ask:
            with openai_params(completion.params):
                request_fields, history = await _upload_images(ask, completion)
                chat_request = ask.parse(request_fields, blank_message_with_images=True)
            reservation.release()
            turn = await ask.begin(chat_request, history=_kept(service, history), grace_seconds=OPEN_GRACE_SECONDS)
            # The prompt holds the history images now; the copies uploaded for them served only this call.
            uploaded = set(ask.uploaded_ids).difference(chat_request.image_ids)
            await ask.discard([i for m in history for i in m.image_ids if i in uploaded])
            streamed, include_usage = completion.stream, completion.include_usage
            # This frame lives as long as the stream: the client's history and fields are not kept for it.
            del completion, request_fields, history, chat_request, uploaded
            return await _answer(request, service, turn, streamed=streamed, include_usage=include_usage)
    finally:
        reservation.release()


async def _upload_images(ask: Ask, completion: Completion) -> tuple[dict[str, Any], list[SentMessage]]:
    """Judge the fields (and the model) before any image moves, then upload the data: URL images.

    The parts' bytes are dropped as each is uploaded, so the body's memory goes with them.
    """
    placeholders = [part.image_id or uuid.uuid4() for part in completion.last.images]
    ask.parse({**completion.fields, "image_ids": placeholders}, blank_message_with_images=True)
    if any(part.data is not None for m in (*completion.history, completion.last) for part in m.images):
        await ask.check_early({"model": completion.fields["model"], "think": completion.fields.get("think")})
    current = [await _image_id(ask, part) for part in completion.last.images]
    history = [SentMessage(m.role, m.text, [await _image_id(ask, p) for p in m.images]) for m in completion.history]
    completion.last.images.clear()
    for message in completion.history:
        message.images.clear()
    return {**completion.fields, "image_ids": current}, history


async def _image_id(ask: Ask, part: ImagePart) -> uuid.UUID:
    if part.image_id is not None:
        return part.image_id
    assert part.data is not None  # a part is an ID or bytes (mapping.image_part)
    # The whole request's images (history included) were counted against VISION_MAX_IMAGES_PER_REQUEST.
    limit = ask.settings.max_images_per_request
    return await ask.upload(_chunks(part.data), filename=None, content_type=part.media_type, max_images=limit)


async def _chunks(data: bytes) -> Any:
    view = memoryview(data)
    for start in range(0, len(view), UPLOAD_CHUNK):
        yield bytes(view[start : start + UPLOAD_CHUNK])


def _kept(service: ChatService, history: list[SentMessage]) -> list[SentMessage]:
    """System messages and the newest VISION_HISTORY_MESSAGES others, in their order."""
    limit = service.settings.history_messages
    others = [i for i, m in enumerate(history) if m.role != "system"]
    dropped = set(others[: max(0, len(others) - limit)])
    return [m for i, m in enumerate(history) if i not in dropped]


async def _answer(
    request: web.Request, service: ChatService, turn: Any, *, streamed: bool, include_usage: bool
) -> web.StreamResponse:
    conversation, message, stream_id, notices = RETINA_HEADERS
    headers = {
        conversation: str(turn.turn.conversation_id),
        message: str(turn.message_id),
        stream_id: str(turn.stream_id),
    }
    if turn.prepared.notices:
        headers[notices] = ",".join(n["code"] for n in turn.prepared.notices)
    if not streamed:
        collector = CompletionCollector()
        await service.relay(turn, collector)
        return web.json_response(collector.completion(), headers=headers)
    return await stream_turn(
        request, service, turn, headers=headers, sink=lambda stream: ChunkStream(stream, include_usage=include_usage)
    )


_TOO_LARGE = (
    f"the request body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB; "
    "upload large images to the image-store and send them as retina:<image-id>"
)


def _user_of(request: web.Request, completion: Completion) -> str:
    """The X-User-Id header, else the request's `user` field (the header wins when both are sent)."""
    header = request.headers.get(USER_ID_HEADER)
    if header is not None or completion.user is None:
        if header is None:
            raise BadRequest(
                f"name the user in the {USER_ID_HEADER} header or the request's user field",
                details={"param": "user"},
            )
        return parse_user_id(header)
    return completion.user


async def list_models(request: web.Request) -> web.Response:
    request.config_dict[AUTH_KEY].check_token(request)
    models = await request.config_dict[CHAT_SERVICE_KEY].list_models()
    return web.json_response({"object": "list", "data": [_model(m.name) for m in models]})


async def retrieve_model(request: web.Request) -> web.Response:
    request.config_dict[AUTH_KEY].check_token(request)
    name = request.match_info["model"]
    models = await request.config_dict[CHAT_SERVICE_KEY].list_models()
    if not any(m.name == name for m in models):
        raise UnknownModel(f"model {name!r} is not available on the Ollama server")
    return web.json_response(_model(name))


def _model(name: str) -> dict[str, Any]:
    # Ollama's own /v1/models reports the same fields; `created` is not known for a local model.
    return {"id": name, "object": "model", "created": 0, "owned_by": "ollama"}


def create_openai_app() -> web.Application:
    """The /v1 sub-application; the gateway mounts it with `app.add_subapp("/v1", ...)`."""
    v1 = web.Application(middlewares=[openai_error_middleware])
    v1.router.add_post("/chat/completions", chat_completions, name="openai_chat_completions")
    v1.router.add_get("/models", list_models, name="openai_models", allow_head=False)
    v1.router.add_get("/models/{model:.+}", retrieve_model, name="openai_model", allow_head=False)
    return v1
