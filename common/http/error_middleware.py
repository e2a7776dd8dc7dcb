"""Every error leaves as JSON with a stable code; tracebacks go to the log only."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

from common.errors import ApiError, json_error
from common.http.request_context import Handler, request_id_of

log = structlog.get_logger("retina.http")

# aiohttp raises these itself (routing, body limits); give them our codes.
_HTTP_EXCEPTION_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return json_error(exc.status, exc.code, exc.message, headers=exc.headers, **exc.details)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and 304s are not errors
        code = _HTTP_EXCEPTION_CODES.get(exc.status, "http_error")
        message = exc.reason if exc.status != 404 else "no such route"
        if exc.status == 405:
            message = f"method {request.method} is not allowed here"
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return json_error(exc.status, code, message, headers=headers)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        request_id = request_id_of(request)
        log.exception("unhandled_error")
        return json_error(
            500,
            "internal_error",
            f"internal error; quote request ID {request_id} when reporting it",
            request_id=request_id,
        )
