"""The image-store's errors: declarations only; common/http/error_middleware.py renders them."""

from __future__ import annotations

from common.errors import ApiError, BadRequest, NotFound, PreconditionFailed

__all__ = [
    "BadRequest",
    "EmptyUpload",
    "ImageNotFound",
    "InsufficientStorage",
    "PayloadTooLarge",
    "PreconditionFailed",
    "RangeNotSatisfiable",
    "RateLimited",
    "StoreBusy",
    "StoreError",
    "UploadDisabled",
    "UploadTimedOut",
]


class StoreError(ApiError):
    """Base of the image-store's own errors (a 500 unless a subclass says otherwise)."""


class ImageNotFound(NotFound):
    def __init__(self, message: str = "image not found") -> None:
        super().__init__(message)


class RangeNotSatisfiable(StoreError):
    status, code = 416, "range_not_satisfiable"

    def __init__(self, size: int) -> None:
        # RFC 9110 §15.5.17: a 416 names the current length in an unsatisfied Content-Range.
        super().__init__("the requested range is not within the image", headers={"Content-Range": f"bytes */{size}"})


class EmptyUpload(StoreError):
    status, code = 400, "empty_upload"


class PayloadTooLarge(StoreError):
    status, code = 413, "payload_too_large"
    outcome_label = "too_large"


class UploadTimedOut(StoreError):
    """The body stalled or took too long; the error middleware also closes the connection."""

    status, code = 408, "request_timeout"
    outcome_label = "timeout"
    closes_connection = True


class UploadDisabled(StoreError):
    status, code = 503, "upload_disabled"
    outcome_label = "disabled"


class RateLimited(StoreError):
    status, code = 429, "rate_limited"
    outcome_label = "rate_limited"


class StoreBusy(StoreError):
    status, code = 503, "busy"
    outcome_label = "busy"


class InsufficientStorage(StoreError):
    status, code = 507, "insufficient_storage"
    outcome_label = "insufficient_storage"


class StorageUnavailable(StoreError):
    """The object store did not answer (down, 5xx after retries, timeout); nothing was half-written."""

    status, code = 503, "storage_unavailable"

    def __init__(self, message: str = "the image storage is unavailable; retry shortly") -> None:
        super().__init__(message, retry_after=2)
