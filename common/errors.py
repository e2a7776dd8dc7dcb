"""The one error type both services raise, and the JSON shape it leaves as.

Every failure a client can see is an `ApiError`: it carries the HTTP status, a stable snake_case
code clients branch on, a message for people, extra headers (`Retry-After`) and the outcome label
metrics count it under. Services declare their errors as subclasses with class-level `status`,
`code` and `outcome`; one middleware (common/http/error_middleware.py) renders them all as
`{"error": {"code", "message"}}`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from aiohttp import web


class ApiError(Exception):
    """An error with a stable code. Subclasses fix `status`/`code`; ad-hoc ones pass them in."""

    status: int = 500
    code: str = "internal_error"
    # Label for per-service outcome counters; None means "invalid" for 4xx and "error" for 5xx.
    outcome_label: ClassVar[str | None] = None
    # The request body was left unread on purpose (a stalled client): answer, then hang up.
    closes_connection: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.message = message
        self.retry_after = retry_after
        self.extra_headers = dict(headers or {})
        self.details = dict(details or {})

    @property
    def headers(self) -> dict[str, str]:
        headers = dict(self.extra_headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, int(self.retry_after)))
        return headers

    @property
    def outcome(self) -> str:
        if self.outcome_label is not None:
            return self.outcome_label
        return "invalid" if self.status < 500 else "error"

    def __reduce__(self) -> tuple[Any, ...]:
        # Crosses process boundaries (decode workers) as itself, with its instance state.
        return (_rebuild, (type(self), self.message, self.__dict__))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.code!r}, {self.message!r})"


def _rebuild(cls: type[ApiError], message: str, state: dict[str, Any]) -> ApiError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def json_error(
    status: int,
    code: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    return web.json_response(error_body(code, message, **extra), status=status, headers=headers)


# ---- errors both services raise ---------------------------------------------------------------


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class PreconditionFailed(ApiError):
    status, code = 412, "precondition_failed"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"
    outcome_label = "too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class DatabaseUnavailable(ApiError):
    """PostgreSQL cannot be reached: a retryable condition, not a bug (never a 500)."""

    status, code = 503, "database_unavailable"
    outcome_label = "database_unavailable"

    def __init__(self, message: str = "the database is unavailable; retry shortly", *, retry_after: int = 5) -> None:
        super().__init__(message, retry_after=retry_after)
