"""Domain errors of the image-store; handlers turn them into JSON errors unchanged."""

from __future__ import annotations


class StoreError(Exception):
    """A failure with an HTTP status and a stable code from the contract."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, retry_after: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.headers = headers or {}


class ImageNotFound(StoreError):
    status, code = 404, "not_found"

    def __init__(self) -> None:
        super().__init__("image not found")


class PreconditionFailed(StoreError):
    status, code = 412, "precondition_failed"


class RangeNotSatisfiable(StoreError):
    status, code = 416, "range_not_satisfiable"

    def __init__(self, size: int) -> None:
        # RFC 9110 §15.5.17: a 416 names the current length in an unsatisfied Content-Range.
        super().__init__("the requested range is not within the image", headers={"Content-Range": f"bytes */{size}"})


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
