"""OpenAI's chat-completions request body, checked and turned into what ChatService needs.

Pure parsing, no I/O: everything a request could be refused for (shape, types, ranges, remote
image URLs, unsupported features) is found here, before any image is uploaded or any row is
written. Images are only classified: a `data:` URL's bytes, or a `retina:<image-id>` reference.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from common.auth import MAX_USER_ID_LENGTH
from common.errors import BadRequest, TooManyImages
from common.ids import parse_uuid
from services.vision_gateway.chat.ollama_request_fields import MAX_TOKENS, InvalidField, check_format, check_option
from services.vision_gateway.chat.thinking import Think
from services.vision_gateway.chat_fields import unstorable

MAX_MODEL_CHARS = 200
MAX_TEXT_CHARS = 32_000  # per message, the same bound as POST /api/stream-message
MAX_MESSAGES = 1_000
MAX_STOP_SEQUENCES = 4  # as OpenAI
RETINA_SCHEME = "retina:"
_DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,", re.IGNORECASE)
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# `reasoning_effort` as Ollama's own /v1 reads it: a level passed on as `think`, "none" turns thinking off.
_REASONING_EFFORTS: dict[str, Think] = {"low": "low", "medium": "medium", "high": "high", "none": False}


def invalid(message: str, param: str | None) -> BadRequest:
    """A 400 naming the offending field (OpenAI's `param`)."""
    return BadRequest(message, details={"param": param} if param else None)


@dataclass(frozen=True, slots=True)
class ImagePart:
    """One image of a message: bytes from a data: URL, or the ID of an image already in the store."""

    param: str  # where it was in the request, for error messages
    data: bytes | None = None
    media_type: str = "application/octet-stream"
    image_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    role: str  # system | user | assistant (developer is read as system)
    text: str
    images: list[ImagePart] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    model: str
    history: list[ParsedMessage]  # everything before the last message
    last: ParsedMessage  # the user's new message
    stream: bool
    include_usage: bool
    options: dict[str, Any] | None
    user: str | None
    format: str | dict[str, Any] | None = None  # from response_format
    think: Think | None = None

    @property
    def image_count(self) -> int:
        return len(self.last.images) + sum(len(m.images) for m in self.history)


def parse_completion_request(body: Any, *, max_images: int) -> CompletionRequest:
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object", None)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > MAX_MODEL_CHARS or unstorable(model):
        raise invalid("model is required and must be a model name", "model")
    _refuse_unsupported(body)
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise invalid("messages must be a non-empty array", "messages")
    if len(raw_messages) > MAX_MESSAGES:
        raise invalid(f"at most {MAX_MESSAGES} messages", "messages")
    messages = [_message(raw, f"messages[{i}]") for i, raw in enumerate(raw_messages)]
    *history, last = messages
    if last.role != "user":
        raise invalid("the last message must be the user's", f"messages[{len(messages) - 1}].role")
    if not last.text.strip() and not last.images:
        raise invalid("the last message has neither text nor images", f"messages[{len(messages) - 1}].content")
    parsed = CompletionRequest(
        model=model.strip(),
        history=history,
        last=last,
        stream=_boolean(body.get("stream"), "stream"),
        include_usage=_include_usage(body.get("stream_options")),
        options=ollama_options(body),
        user=_user(body.get("user")),
        format=ollama_format(body.get("response_format")),
        think=_reasoning_effort(body.get("reasoning_effort")),
    )
    if parsed.image_count > max_images:
        raise TooManyImages(f"{parsed.image_count} images sent; at most {max_images} per request")
    return parsed


def _refuse_unsupported(body: dict[str, Any]) -> None:
    """Features whose silent omission would change the answer's meaning are refused, not ignored."""
    n = body.get("n")
    if n is not None and n != 1:
        raise invalid("only n=1 is supported", "n")
    for name in ("tools", "functions"):
        if body.get(name):
            raise invalid(f"{name} are not supported by this server", name)
    if body.get("logprobs"):
        raise invalid("logprobs are not supported by this server", "logprobs")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise invalid("only text output is supported", "modalities")


def _message(raw: Any, param: str) -> ParsedMessage:
    if not isinstance(raw, dict):
        raise invalid("each message must be an object", param)
    raw_role = raw.get("role")
    # Only a string can be a role; an object or array would be unhashable in the lookup (a 500).
    role = _ROLES.get(raw_role) if isinstance(raw_role, str) else None
    if role is None:
        raise invalid("role must be one of system, developer, user, assistant", f"{param}.role")
    content = raw.get("content")
    if content is None and role == "assistant":
        content = ""  # an assistant turn that only called tools; nothing for the model to read
    images: list[ImagePart]
    if isinstance(content, str):
        text, images = content, []
    elif isinstance(content, list):
        text, images = _parts(content, f"{param}.content")
    else:
        raise invalid("content must be a string or an array of content parts", f"{param}.content")
    if images and role != "user":
        raise invalid("only user messages may carry images", f"{param}.content")
    if len(text) > MAX_TEXT_CHARS:
        raise invalid(f"a message is longer than {MAX_TEXT_CHARS} characters", f"{param}.content")
    if (problem := unstorable(text)) is not None:  # stored like a native turn: the same 400, not a 500
        raise invalid(f"content {problem}", f"{param}.content")
    return ParsedMessage(role, text, images)


def _parts(parts: list[Any], param: str) -> tuple[str, list[ImagePart]]:
    texts: list[str] = []
    images: list[ImagePart] = []
    for index, part in enumerate(parts):
        where = f"{param}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            images.append(image_part(part.get("image_url"), f"{where}.image_url"))
        else:
            raise invalid("content parts must be {'type': 'text'} or {'type': 'image_url'}", where)
    return "\n".join(texts), images


def image_part(raw: Any, param: str) -> ImagePart:
    """`{"url": ...}` (or a bare string): a base64 data: URL or `retina:<image-id>`; never a remote URL."""
    url = raw.get("url") if isinstance(raw, dict) else raw
    if not isinstance(url, str) or not url:
        raise invalid("image_url.url is required", param)
    if url[:8].lower().startswith(("http://", "https://")):
        raise invalid(
            "remote image URLs are not fetched; send the image as a data: URL or upload it and use retina:<image-id>",
            param,
        )
    if url[: len(RETINA_SCHEME)].lower() == RETINA_SCHEME:
        image_id = parse_uuid(url[len(RETINA_SCHEME) :])
        if image_id is None:
            raise invalid("a retina: image reference is retina:<image-id> with a UUID", param)
        return ImagePart(param, image_id=image_id)
    match = _DATA_URL.match(url[:200])
    if match is None:
        raise invalid("image_url.url must be a base64 data: URL or retina:<image-id>", param)
    try:
        data = base64.b64decode(url[match.end() :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid("the data: URL is not valid base64", param) from exc
    if not data:
        raise invalid("the data: URL holds no bytes", param)
    return ImagePart(param, data=data, media_type=(match.group("type") or "application/octet-stream").lower())


def ollama_options(body: dict[str, Any]) -> dict[str, Any] | None:
    """temperature, top_p, penalties, seed, max_tokens and stop, as Ollama's option names, checked by the
    same rules as /api/stream-message's `options` (chat/ollama_request_fields.py) but named as sent."""
    options: dict[str, Any] = {}
    for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty", "seed"):
        if (value := body.get(name)) is not None:
            options[name] = _checked(name, value, name)
    for name in ("max_tokens", "max_completion_tokens"):  # the newer name wins when both are sent
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKENS:
            raise invalid(f"{name} must be an integer from 1 to {MAX_TOKENS}", name)
        options["num_predict"] = value
    stop = body.get("stop")
    if stop is not None:
        options["stop"] = _checked("stop", _stop(stop), "stop")
    return options or None


def ollama_format(response_format: Any) -> str | dict[str, Any] | None:
    """`response_format` as Ollama's `format`: json_object is "json", json_schema its `schema`."""
    param = "response_format"
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if response_format is None or kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind != "json_schema":
        raise invalid("response_format.type must be text, json_object or json_schema", param)
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or "schema" not in spec:
        raise invalid("response_format.json_schema.schema is required", f"{param}.json_schema.schema")
    try:
        return check_format(spec["schema"], f"{param}.json_schema.schema")
    except InvalidField as exc:
        raise invalid(exc.message, exc.field) from exc


def _checked(option: str, value: Any, param: str) -> Any:
    try:
        return check_option(option, value, param)
    except InvalidField as exc:
        raise invalid(exc.message, param) from exc


def _stop(stop: Any) -> list[str]:
    sequences = [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(sequences, list)
        or not 1 <= len(sequences) <= MAX_STOP_SEQUENCES
        or not all(isinstance(s, str) and s for s in sequences)
    ):
        raise invalid(f"stop must be a non-empty string or up to {MAX_STOP_SEQUENCES} of them", "stop")
    return sequences


def _reasoning_effort(value: Any) -> Think | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in _REASONING_EFFORTS:
        raise invalid('reasoning_effort must be "low", "medium", "high" or "none"', "reasoning_effort")
    return _REASONING_EFFORTS[value]


def _boolean(value: Any, param: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(f"{param} must be true or false", param)
    return value


def _include_usage(stream_options: Any) -> bool:
    if stream_options is None:
        return False
    if not isinstance(stream_options, dict):
        raise invalid("stream_options must be an object", "stream_options")
    return _boolean(stream_options.get("include_usage"), "stream_options.include_usage")


def _user(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > MAX_USER_ID_LENGTH:
        raise invalid(f"user must be a non-empty string of at most {MAX_USER_ID_LENGTH} characters", "user")
    if not value.strip().isprintable():
        raise invalid("user must not contain control characters", "user")
    return value.strip()
