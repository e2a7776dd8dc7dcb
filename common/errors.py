"""Every error a client of either service can see: one class per error code, and its JSON shape.

Each class fixes the HTTP `status`, the stable snake_case `code` clients branch on, and the
`outcome` label the image-store's `image_store_uploads_total{outcome}` counts it under (the
gateway counts refusals by `code`). No code is declared by two classes: a subclass may only give
its parent's code a default message. One middleware (common/http/error_middleware.py) renders
them all as `{"error": {"code", "message"}}`, with `Retry-After` where a class sets it.

    ApiError                    500 internal_error          error
    ├── BadRequest              400 bad_request             invalid
    ├── EmptyUpload             400 empty_upload            invalid
    ├── TooManyImages           400 too_many_images         invalid
    ├── Unauthorized            401 unauthorized            invalid
    ├── Forbidden               403 forbidden               invalid
    ├── NotFound                404 not_found               invalid
    │   ├── StoredImageNotFound     (the image-store's "image not found")
    │   ├── ConversationNotFound    ("conversation not found")
    │   └── StreamNotFound          ("stream not found")
    ├── ImageNotFound           404 image_not_found         invalid
    ├── UnknownModel            404 unknown_model           invalid
    ├── MethodNotAllowed        405 method_not_allowed      invalid
    ├── RequestTimeout          408 request_timeout         timeout
    ├── LengthRequired          411 length_required         invalid
    ├── PreconditionFailed      412 precondition_failed     invalid
    ├── PayloadTooLarge         413 payload_too_large       too_large
    ├── UnsupportedMediaType    415 unsupported_media_type  unsupported_type
    ├── RangeNotSatisfiable     416 range_not_satisfiable   invalid
    ├── InvalidImage            422 invalid_image           invalid
    ├── ImageTooLarge           422 image_too_large         too_large
    ├── TooManyFrames           422 too_many_frames         invalid
    ├── ModelNotVisionCapable   422 model_not_vision_capable invalid
    ├── ModelCannotThink        422 model_cannot_think      invalid
    ├── RateLimited             429 rate_limited            rate_limited
    ├── UpstreamRejected        502 upstream_error          error
    ├── Busy                    503 busy                    busy
    ├── UploadDisabled          503 upload_disabled         disabled
    ├── DatabaseUnavailable     503 database_unavailable    database_unavailable
    ├── StorageUnavailable      503 storage_unavailable     error
    ├── UpstreamUnavailable     503 upstream_unavailable    error
    ├── Unavailable             503 unavailable             error
    ├── InsufficientStorage     507 insufficient_storage    insufficient_storage
    └── StoreRefusedUpload      the image-store's own status and code, passed on by the gateway

`ApiError` itself is the 500 `internal_error`. Its `status=`/`code=` arguments exist only to pass on
a code another part already chose (the image-store's refusal of a forwarded upload, an `error`
event of a stream); a new error code gets a class here.

A message is a plain sentence for the person using the client: never an exception's text, class
name or errno, a host or an internal path. What went wrong underneath is chained (`raise ... from
exc`) or given as `detail=`; common/failures.py logs it with the request ID.
"""

from __future__ import annotations

from typing import Any, ClassVar

from aiohttp import web


class ApiError(Exception):
    """An error with a stable code: the 500 `internal_error`, and the base of every other code."""

    status: int = 500
    code: str = "internal_error"
    # The label of image_store_uploads_total{outcome} (docs/metrics.md lists the values).
    outcome: ClassVar[str] = "error"
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
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.message = message
        self.retry_after = retry_after
        self.extra_headers = dict(headers or {})
        self.details = dict(details or {})  # extra fields of the JSON error body
        self.detail = detail  # for the log only (common/failures.py), never sent to a client

    @property
    def headers(self) -> dict[str, str]:
        headers = dict(self.extra_headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, int(self.retry_after)))
        return headers

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


# ---- 4xx: the request cannot be served as sent ---------------------------------------------------


class BadRequest(ApiError):
    """A malformed request or field; the message names what is wrong."""

    status, code, outcome = 400, "bad_request", "invalid"


class EmptyUpload(ApiError):
    """An upload with no bytes."""

    status, code, outcome = 400, "empty_upload", "invalid"


class TooManyImages(ApiError):
    """More images on a message or request than VISION_MAX_IMAGES_PER_MESSAGE / _PER_REQUEST allow."""

    status, code, outcome = 400, "too_many_images", "invalid"


class Unauthorized(ApiError):
    """No valid service token, no valid signed URL, or no user named."""

    status, code, outcome = 401, "unauthorized", "invalid"


class Forbidden(ApiError):
    """A browser request from an origin that is not allowed (CORS)."""

    status, code, outcome = 403, "forbidden", "invalid"


class NotFound(ApiError):
    """No such route or resource for this caller; the subclasses below only give it a default message."""

    status, code, outcome = 404, "not_found", "invalid"


class StoredImageNotFound(NotFound):
    """The image-store has no such image for the caller: someone else's, expired, deleted or malformed alike."""

    def __init__(self, message: str = "image not found") -> None:
        super().__init__(message)


class ConversationNotFound(NotFound):
    """The gateway has no such conversation of the caller's."""

    def __init__(self, message: str = "conversation not found") -> None:
        super().__init__(message)


class StreamNotFound(NotFound):
    """No stream of the caller's with that ID is known."""

    def __init__(self, message: str = "stream not found") -> None:
        super().__init__(message)


class ImageNotFound(ApiError):
    """The gateway cannot find an image an ask names (the image-store answered 404)."""

    status, code, outcome = 404, "image_not_found", "invalid"


class UnknownModel(ApiError):
    """Ollama does not have the model asked for."""

    status, code, outcome = 404, "unknown_model", "invalid"


class MethodNotAllowed(ApiError):
    """The route exists but not for this method."""

    status, code, outcome = 405, "method_not_allowed", "invalid"


class RequestTimeout(ApiError):
    """The request body stalled or took too long; the connection is closed after the answer."""

    status, code, outcome = 408, "request_timeout", "timeout"
    closes_connection = True


class LengthRequired(ApiError):
    """A body without a length where one is needed (raised by aiohttp)."""

    status, code, outcome = 411, "length_required", "invalid"


class PreconditionFailed(ApiError):
    """An `If-Match` that does not match the image's ETag."""

    status, code, outcome = 412, "precondition_failed", "invalid"


class PayloadTooLarge(ApiError):
    """A request body over its size limit."""

    status, code, outcome = 413, "payload_too_large", "too_large"


class UnsupportedMediaType(ApiError):
    """A body type, or an image type found in the bytes, that is not accepted."""

    status, code, outcome = 415, "unsupported_media_type", "unsupported_type"


class RangeNotSatisfiable(ApiError):
    """A byte range that selects nothing of the image."""

    status, code, outcome = 416, "range_not_satisfiable", "invalid"

    def __init__(self, size: int) -> None:
        # RFC 9110 §15.5.17: a 416 names the current length in an unsatisfied Content-Range.
        super().__init__("the requested range is not within the image", headers={"Content-Range": f"bytes */{size}"})


class InvalidImage(ApiError):
    """Bytes that do not decode as an intact image of the type they claim."""

    status, code, outcome = 422, "invalid_image", "invalid"


class ImageTooLarge(ApiError):
    """An image over the side, pixel or decoder-memory limits."""

    status, code, outcome = 422, "image_too_large", "too_large"


class TooManyFrames(ApiError):
    """An animation with more frames than IMAGE_MAX_FRAMES allows."""

    status, code, outcome = 422, "too_many_frames", "invalid"


class ModelNotVisionCapable(ApiError):
    """Images sent to a model (and fallback) that cannot see."""

    status, code, outcome = 422, "model_not_vision_capable", "invalid"


class ModelCannotThink(ApiError):
    """`think` asked of a model without the `thinking` capability (Ollama refuses it too)."""

    status, code, outcome = 422, "model_cannot_think", "invalid"


class RateLimited(ApiError):
    """Too many requests from this user; `Retry-After` says when to try again."""

    status, code, outcome = 429, "rate_limited", "rate_limited"


# ---- 5xx: the server cannot serve it now ----------------------------------------------------------


class UpstreamRejected(ApiError):
    """Ollama or the image-store refused a request of ours with a 4xx, passed on as 502."""

    status, code, outcome = 502, "upstream_error", "error"


class Busy(ApiError):
    """Decoders (image-store) or the image memory budget (gateway) are full; retry shortly."""

    status, code, outcome = 503, "busy", "busy"


class UploadDisabled(ApiError):
    """Image uploads are switched off on this server (IMAGE_UPLOAD_ENABLED=false)."""

    status, code, outcome = 503, "upload_disabled", "disabled"


class DatabaseUnavailable(ApiError):
    """PostgreSQL cannot be reached: a retryable condition, not a bug (never a 500)."""

    status, code, outcome = 503, "database_unavailable", "database_unavailable"

    def __init__(self, message: str = "the database is unavailable; retry shortly", *, retry_after: int = 5) -> None:
        super().__init__(message, retry_after=retry_after)


class StorageUnavailable(ApiError):
    """The object store did not answer (down, 5xx after retries, timeout); nothing was half-written."""

    status, code, outcome = 503, "storage_unavailable", "error"

    def __init__(self, message: str = "the image storage is unavailable; retry shortly") -> None:
        super().__init__(message, retry_after=2)


class UpstreamUnavailable(ApiError):
    """Ollama or the image-store cannot be reached (after retries)."""

    status, code, outcome = 503, "upstream_unavailable", "error"


class Unavailable(ApiError):
    """aiohttp's own 503 (the server is shutting down)."""

    status, code, outcome = 503, "unavailable", "error"


class InsufficientStorage(ApiError):
    """The image volume is full."""

    status, code, outcome = 507, "insufficient_storage", "insufficient_storage"


class StoreRefusedUpload(ApiError):
    """The image-store's refusal of a forwarded upload, passed on unchanged (status, code, message, Retry-After)."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: int | None = None) -> None:
        # A 429 must stay a 429 and a 408 must still close the connection, not become a 503.
        super().__init__(message, status=status, code=code, retry_after=retry_after)
        self.closes_connection = status == 408
