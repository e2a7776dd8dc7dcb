"""OpenAI-compatible routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /v1/models/{model}`.

Thin like every handler: authenticate, read and parse the body, let CompletionService begin the
turn, relay it into an OpenAI-shaped sink. Errors leave in OpenAI's shape
(`{"error": {"message", "type", "param", "code"}}`) because OpenAI clients read that one; the
rest of the service keeps retina's shape, so this is done here and not in the common middleware.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

import structlog
from aiohttp import web

from common.app import AUTH_KEY
from common.auth import USER_ID_HEADER, parse_user_id
from common.errors import (
    ApiError,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnknownModel,
    UnsupportedMediaType,
)
from common.http.error_middleware import API_ERROR_OBSERVER_KEY, STARTED_RESPONSE_KEY
from common.http.request_context import Handler, request_id_of
from common.metrics import EVENT_STREAM_KEY
from services.vision_gateway.handlers import ADMISSION_KEY
from services.vision_gateway.openai_compat.request import CompletionRequest, parse_completion_request
from services.vision_gateway.openai_compat.response import ChunkStream, CompletionCollector, openai_error
from services.vision_gateway.openai_compat.service import CompletionService
from services.vision_gateway.sse import EventStream

log = structlog.get_logger("retina.vision_gateway.openai")

COMPLETION_SERVICE_KEY = web.AppKey("openai_completion_service", CompletionService)
# Images arrive inline as base64 data: URLs, so this body may be far larger than other JSON bodies;
# larger images are uploaded to the image-store first and sent as retina:<image-id>.
MAX_BODY_BYTES = 48 * 1024 * 1024
READ_CHUNK = 1024 * 1024
PARSE_IN_THREAD_BYTES = 256 * 1024  # decoding megabytes of base64 would stall the event loop
OPEN_GRACE_SECONDS = 1.0
# What a completion was recorded as (browsers may read them: exposed through CORS).
RETINA_HEADERS = ("X-Retina-Conversation-Id", "X-Retina-Message-Id", "X-Retina-Stream-Id", "X-Retina-Notices")


def openai_errors(handler: Handler) -> Handler:
    """Render every error of a /v1 route in OpenAI's shape (until a stream has started)."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as error:
            if _started(request):
                raise
            if (observer := request.app.get(API_ERROR_OBSERVER_KEY)) is not None:
                observer(request, error)
            return web.json_response(openai_error(error), status=error.status, headers=error.headers)
        except web.HTTPException:
            raise  # aiohttp's own (redirects, body limits): the common middleware renders them
        except Exception:
            if _started(request):
                raise
            request_id = request_id_of(request)
            log.exception("unhandled_error")
            internal = ApiError(f"internal error; quote request ID {request_id} when reporting it")
            return web.json_response(openai_error(internal), status=500)

    return wrapper


def _started(request: web.Request) -> bool:
    started = request.get(STARTED_RESPONSE_KEY)
    return started is not None and started.prepared


@openai_errors
async def chat_completions(request: web.Request) -> web.StreamResponse:
    request.app[AUTH_KEY].check_token(request)
    service = request.app[COMPLETION_SERVICE_KEY]
    parsed = await _read_completion_request(request, max_images=service.chat.settings.max_images_per_request)
    user_id = _user_of(request, parsed)
    # The same per-user stream and rate limits as /api/stream-message (the body names the user).
    with request.app[ADMISSION_KEY].admit(user_id):
        return await _complete(request, service, parsed, user_id)


async def _complete(
    request: web.Request, service: CompletionService, parsed: CompletionRequest, user_id: str
) -> web.StreamResponse:
    turn = await service.begin(
        parsed, user_id=user_id, request_id=request_id_of(request), grace_seconds=OPEN_GRACE_SECONDS
    )
    conversation, message, stream_id, notices = RETINA_HEADERS
    headers = {
        conversation: str(turn.turn.conversation_id),
        message: str(turn.message_id),
        stream_id: str(turn.stream_id),
    }
    if turn.prepared.notices:
        headers[notices] = ",".join(n["code"] for n in turn.prepared.notices)
    if not parsed.stream:
        collector = CompletionCollector()
        await service.chat.relay(turn, collector)
        return web.json_response(collector.completion(), headers=headers)
    request[EVENT_STREAM_KEY] = True
    stream = EventStream(heartbeat_seconds=service.chat.settings.heartbeat_seconds)
    stream.response.headers.update(headers)
    try:
        await stream.prepare(request)
    except BaseException:  # the client left before the stream began; the turn must not stay "streaming"
        await service.chat.abandon(turn)
        raise
    try:
        await service.chat.relay(turn, ChunkStream(stream, include_usage=parsed.include_usage))
    finally:
        await stream.close()
    return stream.response


async def _read_completion_request(request: web.Request, *, max_images: int) -> CompletionRequest:
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send application/json")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _too_large()
    body = bytearray()
    while chunk := await request.content.read(READ_CHUNK):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _too_large()

    def parse() -> CompletionRequest:
        try:
            fields = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequest("the body is not valid JSON") from exc
        return parse_completion_request(fields, max_images=max_images)

    if len(body) > PARSE_IN_THREAD_BYTES:
        return await asyncio.to_thread(parse)
    return parse()


def _too_large() -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB; "
        "upload large images to the image-store and send them as retina:<image-id>"
    )


def _user_of(request: web.Request, parsed: CompletionRequest) -> str:
    """The X-User-Id header, else the request's `user` field (the header wins when both are sent)."""
    header = request.headers.get(USER_ID_HEADER)
    if header is not None or parsed.user is None:
        if header is None:
            raise BadRequest(
                f"name the user in the {USER_ID_HEADER} header or the request's user field",
                details={"param": "user"},
            )
        return parse_user_id(header)
    return parsed.user


@openai_errors
async def list_models(request: web.Request) -> web.Response:
    request.app[AUTH_KEY].check_token(request)
    models = await request.app[COMPLETION_SERVICE_KEY].chat.list_models()
    return web.json_response({"object": "list", "data": [_model(m.name) for m in models]})


@openai_errors
async def retrieve_model(request: web.Request) -> web.Response:
    request.app[AUTH_KEY].check_token(request)
    name = request.match_info["model"]
    models = await request.app[COMPLETION_SERVICE_KEY].chat.list_models()
    if not any(m.name == name for m in models):
        raise UnknownModel(f"model {name!r} is not available on the Ollama server")
    return web.json_response(_model(name))


def _model(name: str) -> dict[str, Any]:
    # Ollama's own /v1/models reports the same fields; `created` is not known for a local model.
    return {"id": name, "object": "model", "created": 0, "owned_by": "ollama"}


_ALLOWED = {"/v1/chat/completions": "POST", "/v1/models": "GET"}


@openai_errors
async def no_such_route(request: web.Request) -> web.Response:
    """Unknown /v1 paths and wrong methods, in OpenAI's shape (an OpenAI client may probe for them)."""
    allowed = _ALLOWED.get(request.path) or ("GET" if request.path.startswith("/v1/models/") else None)
    if allowed is not None:
        raise MethodNotAllowed(f"method {request.method} is not allowed here", headers={"Allow": allowed})
    raise NotFound(f"no such route: {request.path} (this server offers /v1/chat/completions and /v1/models)")


def add_openai_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions, name="openai_chat_completions")
    app.router.add_get("/v1/models", list_models, name="openai_models")
    app.router.add_get("/v1/models/{model:.+}", retrieve_model, name="openai_model")


def add_openai_fallback_route(app: web.Application) -> None:
    """Last, after CORS is set up: aiohttp-cors cannot wrap a route that takes every method."""
    app.router.add_route("*", "/v1/{tail:.*}", no_such_route, name="openai_no_such_route")
