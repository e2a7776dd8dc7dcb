"""Request IDs: accepted from `X-Request-ID` or generated, echoed, logged and forwarded."""

from __future__ import annotations

import os
import re
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
    """Binds the request's ID, service, method and path to every log line the request causes.

    This runs on every request, `/livez` and image GETs included, so it binds with tokens and
    resets them (structlog's `bound_contextvars` first copies the whole context to save what it
    overwrites), and a new ID is 16 random bytes in hex (no UUID object in between).
    """
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else os.urandom(16).hex()
    request[REQUEST_ID_KEY] = request_id
    tokens = structlog.contextvars.bind_contextvars(
        service=request.app.get(SERVICE_NAME_KEY, ""),
        request_id=request_id,
        method=request.method,
        path=request.path,
    )
    try:
        return await handler(request)
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


async def add_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare hook: also covers streamed responses, whose headers go out early."""
    request_id = request.get(REQUEST_ID_KEY)
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id
