"""The SSE event contract of `POST /api/stream-message`, in one place.

Each constructor returns exactly the fields docs/openapi/vision-gateway.yaml describes for its
event type; nothing else in the gateway builds event dictionaries by hand.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Literal, TypedDict


class StartEvent(TypedDict):
    type: Literal["start"]
    stream_id: str
    conversation_id: str
    user_message_id: str
    message_id: str
    model: str
    vision: bool
    image_ids: list[str]


class ChunkEvent(TypedDict):
    type: Literal["chunk"]
    content: str


class ThinkingEvent(TypedDict):
    type: Literal["thinking"]
    content: str


class NoticeEvent(TypedDict):
    type: Literal["notice"]
    code: str
    message: str


class DoneEvent(TypedDict):
    type: Literal["done"]
    message_id: str
    done_reason: str
    stats: dict[str, Any]
    saved: bool


class ErrorEvent(TypedDict):
    type: Literal["error"]
    code: str
    message: str
    partial: bool
    saved: bool


Event = StartEvent | ChunkEvent | ThinkingEvent | NoticeEvent | DoneEvent | ErrorEvent


def start(
    *,
    stream_id: uuid.UUID,
    conversation_id: uuid.UUID,
    user_message_id: uuid.UUID,
    message_id: uuid.UUID,
    model: str,
    vision: bool,
    image_ids: Sequence[uuid.UUID],
) -> StartEvent:
    return {
        "type": "start",
        "stream_id": str(stream_id),
        "conversation_id": str(conversation_id),
        "user_message_id": str(user_message_id),
        "message_id": str(message_id),
        "model": model,
        "vision": vision,
        "image_ids": [str(i) for i in image_ids],
    }


def chunk(content: str) -> ChunkEvent:
    return {"type": "chunk", "content": content}


def thinking(content: str) -> ThinkingEvent:
    """A piece of the model's reasoning (Ollama's `message.thinking`), sent before the answer's chunks."""
    return {"type": "thinking", "content": content}


def notice(code: str, message: str) -> NoticeEvent:
    return {"type": "notice", "code": code, "message": message}


def done(*, message_id: uuid.UUID, done_reason: str, stats: dict[str, Any], saved: bool) -> DoneEvent:
    """The answer ended (completed or stopped); `saved` says whether it is in the database."""
    return {"type": "done", "message_id": str(message_id), "done_reason": done_reason, "stats": stats, "saved": saved}


def error(*, code: str, message: str, partial: bool, saved: bool) -> ErrorEvent:
    """The answer failed after streaming began; `partial`: some text was sent, `saved`: it is stored."""
    return {"type": "error", "code": code, "message": message, "partial": partial, "saved": saved}
