"""Domain errors of the vision-gateway, each with the contract's status and code."""

from __future__ import annotations


class GatewayError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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


class UploadDisabled(GatewayError):
    status, code = 503, "upload_disabled"


class UpstreamRejected(GatewayError):
    """Ollama or the image-store refused a request with a 4xx we pass on as 502."""

    status, code = 502, "upstream_error"
