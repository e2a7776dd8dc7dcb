"""Domain errors of the image-store; handlers turn them into JSON errors unchanged."""

from __future__ import annotations


class StoreError(Exception):
    """A failure with an HTTP status and a stable code from the contract."""

    status = 500
    code = "internal_error"
    # The request body was left unread on purpose (a stalled client): answer, then hang up.
    closes_connection = False

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class ImageNotFound(StoreError):
    status, code = 404, "not_found"

    def __init__(self) -> None:
        super().__init__("image not found")


class BadRequest(StoreError):
    status, code = 400, "bad_request"


class EmptyUpload(StoreError):
    status, code = 400, "empty_upload"


class PayloadTooLarge(StoreError):
    status, code = 413, "payload_too_large"


class UploadTimedOut(StoreError):
    """The body stalled or took too long; the handler also closes the connection."""

    status, code = 408, "request_timeout"
    closes_connection = True


class UploadDisabled(StoreError):
    status, code = 503, "upload_disabled"


class RateLimited(StoreError):
    status, code = 429, "rate_limited"


class StoreBusy(StoreError):
    status, code = 503, "busy"


class InsufficientStorage(StoreError):
    status, code = 507, "insufficient_storage"
