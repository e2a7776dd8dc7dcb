"""What the gateway's SQL returns and the constants its queries share."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg

STOP_CHANNEL = "retina_stream_stop"
# pg_advisory lock key of the stuck-stream sweeper (any constant unique within the database).
SWEEP_LOCK_KEY = 0x7265_7469_6E61_0001
MARK_INTERRUPTED = (
    "status = 'interrupted', completed_at = now(), "
    "error = coalesce(error, 'the stream was interrupted (its gateway stopped); the text saved so far is kept')"
)
# Enough of the first message for a title of its first words.
TITLE_SOURCE_CHARS = 400
MESSAGE_COLUMNS = "id, role, content, thinking, model, status, has_images, image_ids, created_at, completed_at"


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: uuid.UUID
    role: str
    content: str
    model: str | None
    status: str
    has_images: bool
    image_ids: list[uuid.UUID]
    created_at: datetime
    completed_at: datetime | None
    thinking: str | None = None  # the model's reasoning, kept apart from the answer; None when it did not think

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "role": self.role,
            "content": self.content,
            "thinking": self.thinking,
            "model": self.model,
            "status": self.status,
            "has_images": self.has_images,
            "image_ids": [str(i) for i in self.image_ids],
            "created_at": self.created_at.isoformat(),
            "completed_at": self.completed_at.isoformat() if self.completed_at else None,
        }


@dataclass(frozen=True, slots=True)
class StreamState:
    owner_id: str
    status: str
    message_id: uuid.UUID


class ProgressRow(NamedTuple):
    """A streaming answer's text so far, as one row of the replica's batched progress save."""

    message_id: uuid.UUID
    content: str
    thinking: str


@dataclass(frozen=True, slots=True)
class NewTurn:
    conversation_id: uuid.UUID
    user_message_id: uuid.UUID
    assistant_message_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    id: uuid.UUID
    created_at: datetime
    last_activity_at: datetime
    message_count: int
    has_images: bool
    first_content: str | None


@dataclass(frozen=True, slots=True)
class DeletedConversation:
    image_ids: list[uuid.UUID]
    live_stream_ids: list[uuid.UUID]


class PoolQueries:
    """Base of the repository's parts: each runs its SQL on the service's one asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
