"""Domain errors of the vision-gateway, each with the contract's status and code."""

from __future__ import annotations


class GatewayError(Exception):
    status = 500
    code = "internal_error"
    # The request body was left unread on purpose (a stalled client): answer, then hang up.
    closes_connection = False

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class BadRequest(GatewayError):
    status, code = 400, "bad_request"


class TooManyImages(GatewayError):
    status, code = 400, "too_many_images"


class UnknownModel(GatewayError):
    status, code = 404, "unknown_model"


class ImageNotFound(GatewayError):
    status, code = 404, "image_not_found"


class ConversationNotFound(GatewayError):
    status, code = 404, "not_found"


class StreamNotFound(GatewayError):
    status, code = 404, "not_found"


class ModelNotVisionCapable(GatewayError):
    status, code = 422, "model_not_vision_capable"


class UpstreamUnavailable(GatewayError):
    status, code = 503, "upstream_unavailable"


class RequestTimeout(GatewayError):
    """The client's body stalled or took longer than the upload deadline."""

    status, code = 408, "request_timeout"
    closes_connection = True


class StoreRefusedUpload(GatewayError):
    """The image-store refused an uploaded file: its status, code, message and Retry-After are
    passed on unchanged (a 429 must not become a 503, a 408 must not become "unavailable")."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status
        self.code = code
        self.closes_connection = status == 408


class UploadDisabled(GatewayError):
    status, code = 503, "upload_disabled"


class UpstreamRejected(GatewayError):
    """Ollama or the image-store refused a request with a 4xx we pass on as 502."""

    status, code = 502, "upstream_error"
