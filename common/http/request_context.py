"""Request IDs: accepted from `X-Request-ID` or generated, echoed, logged and forwarded."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_KEY = web.RequestKey("request_id", str)
SERVICE_NAME_KEY = web.AppKey("service_name", str)

# Anything else is replaced: a request ID ends up in logs and other services' headers.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_id_of(request: web.Request) -> str:
    # aiohttp types `Request.get` as Any even for a RequestKey; the key's type is what is stored.
    request_id: str = request.get(REQUEST_ID_KEY, "")
    return request_id


@web.middleware
async def request_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
    request[REQUEST_ID_KEY] = request_id
    with structlog.contextvars.bound_contextvars(
        service=request.app.get(SERVICE_NAME_KEY, ""),
        request_id=request_id,
        method=request.method,
        path=request.path,
    ):
        return await handler(request)


async def add_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare hook: also covers streamed responses, whose headers go out early."""
    request_id = request.get(REQUEST_ID_KEY)
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id
