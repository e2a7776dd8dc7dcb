"""The vision-gateway's errors: declarations only; common/http/error_middleware.py renders them."""

from __future__ import annotations

from common.errors import ApiError, BadRequest, NotFound, UnsupportedMediaType

__all__ = [
    "BadRequest",
    "ConversationNotFound",
    "GatewayBusy",
    "GatewayError",
    "ImageNotFound",
    "ModelCannotThink",
    "ModelNotVisionCapable",
    "RateLimited",
    "RequestTimeout",
    "StoreRefusedUpload",
    "StreamNotFound",
    "TooManyImages",
    "UnknownModel",
    "UnsupportedMediaType",
    "UploadDisabled",
    "UpstreamRejected",
    "UpstreamUnavailable",
]


class GatewayError(ApiError):
    """Base of the gateway's own errors (a 500 unless a subclass says otherwise)."""


class TooManyImages(GatewayError):
    status, code = 400, "too_many_images"


class UnknownModel(GatewayError):
    status, code = 404, "unknown_model"


class ImageNotFound(GatewayError):
    status, code = 404, "image_not_found"


class ConversationNotFound(NotFound):
    def __init__(self, message: str = "conversation not found") -> None:
        super().__init__(message)


class StreamNotFound(NotFound):
    def __init__(self, message: str = "stream not found") -> None:
        super().__init__(message)


class ModelNotVisionCapable(GatewayError):
    status, code = 422, "model_not_vision_capable"


class ModelCannotThink(GatewayError):
    """`think` asked of a model without the `thinking` capability (Ollama refuses it too). A well-formed
    request the model cannot serve: 422, as for images sent to a model that cannot see."""

    status, code = 422, "model_cannot_think"


class RateLimited(GatewayError):
    status, code = 429, "rate_limited"
    outcome_label = "rate_limited"


class GatewayBusy(GatewayError):
    """Too many image bytes are being fetched and prepared already (VISION_PREP_BUDGET_MB)."""

    status, code = 503, "busy"
    outcome_label = "busy"


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
        super().__init__(message, status=status, code=code, retry_after=retry_after)
        self.closes_connection = status == 408


class UploadDisabled(GatewayError):
    status, code = 503, "upload_disabled"


class UpstreamRejected(GatewayError):
    """Ollama or the image-store refused a request with a 4xx we pass on as 502."""

    status, code = 502, "upstream_error"
