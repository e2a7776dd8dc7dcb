"""The fields of a chat request (JSON body or multipart form), checked and made a ChatRequest.

Every rule here is also stated in docs/openapi/vision-gateway.yaml; the contract tests fuzz the
two against each other, so a refusal here is always a 400 the document predicts.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common.errors import BadRequest
from common.ids import parse_uuid
from services.vision_gateway.chat import ChatRequest
from services.vision_gateway.chat.ollama_request_fields import OllamaFields, parse_ollama_fields
from services.vision_gateway.chat.thinking import Think, parse_think

if TYPE_CHECKING:  # typing.TypeIs arrives in 3.13; only the checker needs it
    from typing_extensions import TypeIs

MAX_MESSAGE_CHARS = 32_000
MAX_MODEL_CHARS = 200


def _uuid(raw: Any, field: str) -> uuid.UUID:
    value = parse_uuid(raw)
    if value is None:
        if isinstance(raw, str) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", raw):
            raise BadRequest(f"{field} must hold image IDs, not URLs")
        raise BadRequest(f"{field} must be a UUID")
    return value


# What the document's `not: {pattern: "^\s*$"}` calls space: ECMAScript's \s. Python's str.strip() also strips
# U+001C..U+001F and U+0085, which would refuse text the document calls valid.
_ECMA_SPACE = "\t\n\v\f\r \u00a0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff" + "".join(map(chr, range(0x2000, 0x200B)))


def _has_text(value: object) -> TypeIs[str]:
    return isinstance(value, str) and bool(value.strip(_ECMA_SPACE))


def unstorable(text: str) -> str | None:
    """Why PostgreSQL text cannot hold `text` (JSON allows NUL and lone surrogates; text does not), or None."""
    if "\x00" in text:
        return "must not contain NUL characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text"
    return None


def _storable(text: str, field: str) -> str:
    """Refuse what PostgreSQL cannot store as a 400 naming the field, not a 500 at the INSERT."""
    if (problem := unstorable(text)) is not None:
        raise BadRequest(f"{field} {problem}")
    return text


@dataclass(frozen=True, slots=True)
class FieldsBeforeImages:
    """What a multipart form has said by its first image part, checked by the JSON body's rules."""

    model: str | None
    think: Think | None
    ollama: OllamaFields


def fields_before_images(fields: dict[str, Any]) -> FieldsBeforeImages:
    """Check the fields a form sent before its images now, so a refusal costs no upload; the whole
    form is checked again by parse_chat_fields once it has been read. A client that puts its text
    fields first (as `retina ask` and browsers' FormData in field order do) gets every field refusal
    before any image moves."""
    model = _model_name(fields["model"]) if "model" in fields else None
    return FieldsBeforeImages(model, parse_think(fields.get("think")), parse_ollama_fields(fields))


def _model_name(raw: Any) -> str:
    if not _has_text(raw) or len(raw) > MAX_MODEL_CHARS:
        raise BadRequest("model is required and must be a model name")
    return _storable(raw, "model").strip(_ECMA_SPACE)


def parse_chat_fields(fields: dict[str, Any], user_id: str, request_id: str) -> ChatRequest:
    message = fields.get("message")
    if not _has_text(message):
        raise BadRequest("message is required and must be non-empty text")
    if len(message) > MAX_MESSAGE_CHARS:
        raise BadRequest(f"message is longer than {MAX_MESSAGE_CHARS} characters")
    _storable(message, "message")
    model = _model_name(fields.get("model"))
    # Only an absent or null conversation_id starts a new conversation: "" is a client bug, not a request.
    conversation = fields.get("conversation_id")
    conversation_id = None if conversation is None else _uuid(conversation, "conversation_id")
    raw_ids = fields.get("image_ids", [])
    if not isinstance(raw_ids, list):
        raise BadRequest("image_ids must be a list of image IDs")
    ollama = parse_ollama_fields(fields)  # format, keep_alive, allow-listed options
    return ChatRequest(
        user_id=user_id,
        message=message,
        model=model,
        conversation_id=conversation_id,
        image_ids=[_uuid(raw, "image_ids") for raw in raw_ids],
        options=ollama.options,
        request_id=request_id,
        format=ollama.format,
        keep_alive=ollama.keep_alive,
        think=parse_think(fields.get("think")),
    )


def json_text(text: str, field: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"{field} must be JSON text") from exc


def format_text(text: str) -> Any:
    """A `format` part: the bare word json, or JSON text (a schema object, or "json" quoted)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def parse_image_ids_part(text: str) -> list[Any]:
    """One `image_ids` form part: a single ID (the part may repeat, as HTML forms and OpenAPI send arrays)
    or, as before, a JSON array of IDs. The IDs themselves are checked with the JSON body's rules."""
    if not text.lstrip().startswith("["):
        return [text]
    ids = json_text(text, "image_ids")
    if not isinstance(ids, list):
        raise BadRequest("image_ids must be a list of image IDs")
    return ids
