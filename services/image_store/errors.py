"""Domain errors of the image-store; handlers turn them into JSON errors unchanged."""

from __future__ import annotations


class StoreError(Exception):
    """A failure with an HTTP status and a stable code from the contract."""

    status = 500
    code = "internal_error"

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


class UploadDisabled(StoreError):
    status, code = 503, "upload_disabled"


class RateLimited(StoreError):
    status, code = 429, "rate_limited"


class StoreBusy(StoreError):
    status, code = 503, "busy"


class InsufficientStorage(StoreError):
    status, code = 507, "insufficient_storage"


class StorageUnavailable(StoreError):
    """The object store did not answer (down, 5xx after retries, timeout); nothing was half-written."""

    status, code = 503, "storage_unavailable"

    def __init__(self, message: str = "the image storage is unavailable; retry shortly") -> None:
        super().__init__(message, retry_after=2)
