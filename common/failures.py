"""What a client is told about a failure, and what only the log is told.

Every client-facing message (a JSON error body, an SSE `error` event, a /v1 error, the
`messages.error` the history returns) is an ApiError's `message`: a plain sentence written for
people, with its stable `code`. The failure behind it (exception class names, a library's text,
errno, hosts, paths, an upstream's raw body) never goes into a message: code that turns an
exception into an ApiError writes its own sentence, chains the exception (`raise ... from exc`)
and may add log-only text as `detail=`.

`for_client` is the one place both are decided, for the error middleware (JSON answers) and for a
stream that fails after it began: it returns the ApiError the client gets and logs, with the
request ID, the failure behind a 5xx (`detail`: the ApiError's own detail, then its causes, each
as `Class: text`). Anything that is not an ApiError is a bug or a failure nobody foresaw: logged
as `unhandled_error` with its traceback, answered as a 500 that quotes the request ID.
"""

from __future__ import annotations

import structlog

from common.errors import ApiError

log = structlog.get_logger("retina.http")


def internal_error(request_id: str) -> ApiError:
    """The 500 a client gets for an unexpected failure: nothing about it but the ID to quote."""
    message = f"internal error; quote request ID {request_id} when reporting it"
    return ApiError(message, details={"request_id": request_id})


def failure_detail(exc: BaseException) -> str:
    """`exc` and what caused it, for the log only: `Class: text <- Cause: text <- ...`."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = " ".join(str(current).split())
        parts.append(f"{type(current).__name__}: {text}" if text else type(current).__name__)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return " <- ".join(parts)


def for_client(exc: BaseException, *, request_id: str, event: str = "request_failed") -> ApiError:
    """The ApiError a client gets for `exc`; what that leaves out is logged here, once.

    A 5xx with a failure behind it (a cause, a `detail`) is logged at warning as `event` with its
    code, status, the message the client got and that failure's `detail`. A 5xx without one (a
    refusal such as `upload_disabled`, or the store's verdict passed on) says all there is; a 4xx
    is the client's to fix and its message says how.
    """
    if not isinstance(exc, ApiError):
        log.error("unhandled_error", request_id=request_id, exc_info=exc)
        return internal_error(request_id)
    behind = [exc.detail] if exc.detail else []
    if exc.__cause__ is not None:
        behind.append(failure_detail(exc.__cause__))
    if exc.status >= 500 and behind:
        log.warning(
            event,
            request_id=request_id,
            code=exc.code,
            status=exc.status,
            message=exc.message,
            detail=" <- ".join(behind),
        )
    return exc
