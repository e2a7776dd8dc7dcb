"""OpenAI's chat-completions body mapped into the one chat request (chat/request.py), at the edge.

Pure, no I/O. Only what is OpenAI's own is checked here: the body's shape (messages, roles,
content parts, image URLs), features refused rather than ignored (n > 1, tools, logprobs), and the
fields whose OpenAI ranges differ (max_tokens from 1, stop as a string or up to 4). Everything the
chat request also has (model, message text, sampling options, format, think, caps) is mapped into
`ChatRequest` fields and validated by its rules, so a bad value gets the same status and code here
as on /api/stream-message; `openai_params` re-words such a refusal with the OpenAI field's name.

Images are only classified here: a `data:` URL's bytes, or a `retina:<image-id>` reference; the
handler uploads the former through the Ask, as a multipart form's images are.
"""

from __future__ import annotations

import binascii
import contextlib
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from common.auth import MAX_USER_ID_LENGTH
from common.errors import BadRequest, TooManyImages
from common.ids import parse_uuid
from services.vision_gateway.chat.request import MAX_TOKENS, InvalidField, Think, check_text

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
class Completion:
    """An OpenAI body in the chat's terms. `fields` are ChatRequest fields, validated by the Ask;
    `params` names the OpenAI field each of them came from, for error messages."""

    fields: dict[str, Any]
    params: dict[str, str]
    history: list[ParsedMessage]  # everything before the last message
    last: ParsedMessage  # the user's new message
    stream: bool
    include_usage: bool
    user: str | None

    @property
    def image_count(self) -> int:
        return len(self.last.images) + sum(len(m.images) for m in self.history)


def map_completion(body: Any, *, max_images: int) -> Completion:
    """The body's OpenAI-only rules; every other value is passed on for the chat request's rules."""
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object", None)
    _refuse_unsupported(body)
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise invalid("messages must be a non-empty array", "messages")
    if len(raw_messages) > MAX_MESSAGES:
        raise invalid(f"at most {MAX_MESSAGES} messages", "messages")
    messages = [_message(raw, f"messages[{i}]") for i, raw in enumerate(raw_messages)]
    *history, last = messages
    last_param = f"messages[{len(messages) - 1}]"
    if last.role != "user":
        raise invalid("the last message must be the user's", f"{last_param}.role")
    if not last.text.strip() and not last.images:
        raise invalid("the last message has neither text nor images", f"{last_param}.content")
    fields: dict[str, Any] = {"model": body.get("model"), "message": last.text}
    params = {"message": f"{last_param}.content", "image_ids": f"{last_param}.content", **_OPTION_PARAMS}
    options, params["options.num_predict"] = ollama_options(body)
    if options:
        fields["options"] = options
    if (format_ := ollama_format(body.get("response_format"))) is not None:
        fields["format"] = format_
    if (think := _reasoning_effort(body.get("reasoning_effort"))) is not None:
        fields["think"] = think
    completion = Completion(
        fields=fields,
        params=params,
        history=history,
        last=last,
        stream=_boolean(body.get("stream"), "stream"),
        include_usage=_include_usage(body.get("stream_options")),
        user=_user(body.get("user")),
    )
    if completion.image_count > max_images:
        raise TooManyImages(f"{completion.image_count} images sent; at most {max_images} per request")
    return completion


# ChatRequest fields whose OpenAI names differ (options.num_predict is max_tokens or max_completion_tokens).
_OPTION_PARAMS = {
    **{f"options.{name}": name for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty", "seed")},
    "options.stop": "stop",
    "format": "response_format.json_schema.schema",
    "think": "reasoning_effort",
}


@contextlib.contextmanager
def openai_params(params: dict[str, str]) -> Iterator[None]:
    """Re-word a chat request field's refusal with the OpenAI field it came from (OpenAI's `param`)."""
    try:
        yield
    except InvalidField as exc:
        param = params.get(exc.field, exc.field)
        raise invalid(f"{param} {exc.rule}", param) from exc


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
    with openai_params({}):
        check_text(text, f"{param}.content")  # the chat request's rules for a message's text
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
            # popped: once decoded, the data URL's text is garbage at once, not when the body goes
            images.append(image_part(part.pop("image_url", None), f"{where}.image_url"))
        else:
            raise invalid("content parts must be {'type': 'text'} or {'type': 'image_url'}", where)
    return "\n".join(texts), images


def image_part(raw: Any, param: str) -> ImagePart:
    """`{"url": ...}` (or a bare string): a base64 data: URL or `retina:<image-id>`; never a remote URL.

    A data URL is megabytes of text: it is taken out of `raw`, and its text is dropped as soon as
    the base64 is cut out of it, so one image is held about twice at the peak, not four times.
    """
    url = raw.pop("url", None) if isinstance(raw, dict) else raw
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
    payload, media_type = url[match.end() :], (match.group("type") or "application/octet-stream").lower()
    del url
    try:  # binascii reads an ASCII str in place; base64.b64decode would first copy it to bytes
        data = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid("the data: URL is not valid base64", param) from exc
    if not data:
        raise invalid("the data: URL holds no bytes", param)
    return ImagePart(param, data=data, media_type=media_type)


def ollama_options(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """temperature, top_p, penalties, seed, max_tokens and stop under Ollama's option names (their values
    are checked by the chat request's `options` rules), and the field num_predict came from."""
    options: dict[str, Any] = {}
    for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty", "seed"):
        if (value := body.get(name)) is not None:
            options[name] = value
    num_predict_param = "max_tokens"
    for name in ("max_tokens", "max_completion_tokens"):  # the newer name wins when both are sent
        value = body.get(name)
        if value is None:
            continue
        # OpenAI's range: Ollama's -1 (no limit) and -2 (fill the context) are not OpenAI values.
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKENS:
            raise invalid(f"{name} must be an integer from 1 to {MAX_TOKENS}", name)
        options["num_predict"], num_predict_param = value, name
    stop = body.get("stop")
    if stop is not None:
        options["stop"] = _stop(stop)
    return options, num_predict_param


def ollama_format(response_format: Any) -> Any:
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
    return spec["schema"]


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
