"""The one error path of both services: every failure leaves as JSON with a stable code.

`ApiError` (and its per-service subclasses) render as-is; aiohttp's own HTTP exceptions get our
codes; a database that cannot be reached is `503 database_unavailable` with `Retry-After`;
anything else is a logged `500 internal_error` whose traceback stays in the log. What a client is
told, and what is logged instead (with the request ID), is common/failures.py's `for_client`.

Once a streamed response (SSE) has sent its headers, no error response may be written: the
status line is gone and a second one would corrupt the chunked body. Such failures are logged
and the started response is returned so aiohttp can end it cleanly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from common.errors import (
    ApiError,
    BadRequest,
    Forbidden,
    LengthRequired,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    json_error,
)
from common.failures import failure_detail, for_client
from common.http.body_timeout import close_after_response
from common.http.request_context import Handler, request_id_of

log = structlog.get_logger("retina.http")

# Set by on_response_prepare: the response whose headers have been sent for this request.
STARTED_RESPONSE_KEY = web.RequestKey("started_response", web.StreamResponse)
# Optional per-app observer, told about every ApiError a request ends with (e.g. a rejection counter).
ApiErrorObserver = Callable[[web.Request, ApiError], None]
API_ERROR_OBSERVER_KEY: web.AppKey[ApiErrorObserver] = web.AppKey("api_error_observer")

# aiohttp raises these itself (routing, body limits); each status answers with its class's code.
_HTTP_EXCEPTION_CODES = {
    error.status: error.code
    for error in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        RequestTimeout,
        LengthRequired,
        PayloadTooLarge,
        UnsupportedMediaType,
        RateLimited,
        Unavailable,
    )
}


async def remember_started_response(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare hook: after this, the request can no longer answer with an error."""
    request[STARTED_RESPONSE_KEY] = response


Renderer = Callable[[ApiError], web.Response]


def render_json(error: ApiError) -> web.Response:
    """retina's shape: `{"error": {"code", "message", ...details}}`."""
    return json_error(error.status, error.code, error.message, headers=error.headers, **error.details)


def error_middleware_rendering(render: Renderer, *, not_found: str = "no such route") -> Middleware:
    """The one error path, with `render` deciding the body's shape (a sub-application such as the
    gateway's /v1 renders OpenAI's). Every failure becomes an ApiError first: aiohttp's own HTTP
    exceptions get their class's code, anything unexpected is a logged 500 `internal_error`; and
    once a streamed response has started, nothing is rendered at all."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except web.HTTPException as exc:
            if exc.status < 400:
                raise  # redirects and 304s are not errors
            if (started := _already_started(request, exc)) is not None:
                return started
            return render(_from_http_exception(request, exc, not_found))
        except Exception as exc:  # noqa: BLE001 - every failure is answered; for_client logs it
            if (started := _already_started(request, exc)) is not None:
                return started
            error = for_client(exc, request_id=request_id_of(request))
            if error is not exc:  # an unexpected failure: the 500 names only the request ID
                return render(error)
            if (observer := request.config_dict.get(API_ERROR_OBSERVER_KEY)) is not None:
                observer(request, error)
            if error.closes_connection:
                error.extra_headers["Connection"] = "close"
                close_after_response(request)
            return render(error)

    return middleware


error_middleware = error_middleware_rendering(render_json)


def _already_started(request: web.Request, exc: BaseException) -> web.StreamResponse | None:
    # aiohttp types `Request.get` as Any even for a RequestKey; the key's type is what is stored.
    started: web.StreamResponse | None = request.get(STARTED_RESPONSE_KEY)
    if started is None or not started.prepared:
        return None
    log.error("error_after_response_started", detail=failure_detail(exc), exc_info=exc)
    return started


def _from_http_exception(request: web.Request, exc: web.HTTPException, not_found: str) -> ApiError:
    code = _HTTP_EXCEPTION_CODES.get(exc.status, "http_error")
    message = exc.reason if exc.status != 404 else not_found
    if exc.status == 405:
        message = f"method {request.method} is not allowed here"
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
    return ApiError(message, status=exc.status, code=code, headers=headers)
