"""All SQL of the vision-gateway: conversations, messages, stream ownership."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from common.db import connection, required_row

STOP_CHANNEL = "retina_stream_stop"
# pg_advisory lock key of the stuck-stream sweeper (any constant unique within the database).
SWEEP_LOCK_KEY = 0x7265_7469_6E61_0001
_INTERRUPTED = (
    "status = 'interrupted', completed_at = now(), "
    "error = coalesce(error, 'the stream was interrupted (its gateway stopped); the text saved so far is kept')"
)


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


@dataclass(frozen=True, slots=True)
class NewTurn:
    conversation_id: uuid.UUID
    user_message_id: uuid.UUID
    assistant_message_id: uuid.UUID


_MESSAGE_COLUMNS = "id, role, content, thinking, model, status, has_images, image_ids, created_at, completed_at"


class ConversationRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def conversation_owned(self, conversation_id: uuid.UUID, owner_id: str) -> bool:
        async with connection(self._pool) as conn:
            return bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM conversations WHERE id = $1 AND owner_id = $2)",
                    conversation_id,
                    owner_id,
                )
            )

    async def history(self, conversation_id: uuid.UUID, limit: int) -> list[StoredMessage]:
        """The newest `limit` finished messages, oldest first (the order the model reads them)."""
        if limit <= 0:
            return []
        async with connection(self._pool) as conn:
            records = await conn.fetch(
                f"""
                SELECT {_MESSAGE_COLUMNS} FROM (
                    SELECT * FROM messages
                     WHERE conversation_id = $1 AND status IN ('complete', 'stopped', 'interrupted') AND content <> ''
                     ORDER BY created_at DESC, id DESC LIMIT $2) recent
                 ORDER BY created_at, id
                """,
                conversation_id,
                limit,
            )
        return [StoredMessage(**dict(r)) for r in records]

    async def start_turn(
        self,
        *,
        owner_id: str,
        conversation_id: uuid.UUID | None,
        content: str,
        model: str,
        image_ids: list[uuid.UUID],
        stream_id: uuid.UUID,
    ) -> NewTurn:
        """The user's message and the (empty, streaming) assistant message: one statement, one round trip."""
        async with connection(self._pool) as conn:
            record = await conn.fetchrow(
                """
                WITH new_conversation AS (
                    INSERT INTO conversations (owner_id, title)
                    SELECT $1, left($2, 80) WHERE $3::uuid IS NULL
                    RETURNING id
                ), target AS (
                    SELECT id FROM new_conversation
                    UNION ALL SELECT $3::uuid WHERE $3::uuid IS NOT NULL
                ), touched AS (
                    UPDATE conversations SET updated_at = now() WHERE id = $3::uuid
                ), user_message AS (
                    INSERT INTO messages (conversation_id, role, content, model, status, has_images, image_ids,
                                          completed_at)
                    SELECT id, 'user', $2, $4, 'complete', cardinality($5::uuid[]) > 0, $5, now() FROM target
                    RETURNING id
                ), assistant_message AS (
                    -- created_at is the statement time for both rows; order them explicitly.
                    INSERT INTO messages (conversation_id, role, content, model, status, stream_id, created_at,
                                          progress_at)
                    SELECT id, 'assistant', '', $4, 'streaming', $6, now() + interval '1 microsecond', now()
                      FROM target
                    RETURNING id
                )
                SELECT (SELECT id FROM target) AS conversation_id,
                       (SELECT id FROM user_message) AS user_message_id,
                       (SELECT id FROM assistant_message) AS assistant_message_id
                """,
                owner_id,
                content,
                conversation_id,
                model,
                image_ids,
                stream_id,
            )
        turn = required_row(record)  # a SELECT of scalar subqueries: always one row
        return NewTurn(turn["conversation_id"], turn["user_message_id"], turn["assistant_message_id"])

    async def discard_turn(self, turn: NewTurn, *, new_conversation: bool) -> None:
        """Undo start_turn for a request that failed before streaming (no half-written rows)."""
        async with connection(self._pool) as conn:
            if new_conversation:
                await conn.execute("DELETE FROM conversations WHERE id = $1", turn.conversation_id)
            else:
                await conn.execute(
                    "DELETE FROM messages WHERE id = ANY($1::uuid[])",
                    [turn.user_message_id, turn.assistant_message_id],
                )

    async def save_progress(self, message_id: uuid.UUID, content: str, thinking: str = "") -> None:
        """The answer (and thinking) so far, while it streams: a crash then loses seconds, not the whole answer."""
        async with connection(self._pool) as conn:
            await conn.execute(
                """
                UPDATE messages SET content = $2, thinking = nullif($3, ''), progress_at = now()
                 WHERE id = $1 AND status = 'streaming'
                """,
                message_id,
                content,
                thinking,
            )

    async def finish_turn(
        self,
        message_id: uuid.UUID,
        *,
        content: str,
        status: str,
        error: str | None,
        stats: dict[str, Any] | None,
        thinking: str = "",
    ) -> None:
        async with connection(self._pool) as conn:
            await conn.execute(
                """
                UPDATE messages SET content = $2, status = $3, error = $4, stats = $5, thinking = nullif($6, ''),
                       completed_at = now()
                 WHERE id = $1
                """,
                message_id,
                content,
                status,
                error,
                stats,
                thinking,
            )

    async def stream_state(self, stream_id: uuid.UUID) -> StreamState | None:
        """Who owns a stream and where its answer stands (running or ended, on any replica)."""
        async with connection(self._pool) as conn:
            record = await conn.fetchrow(
                """
                SELECT c.owner_id, m.status, m.id AS message_id
                  FROM messages m JOIN conversations c ON c.id = m.conversation_id
                 WHERE m.stream_id = $1
                """,
                stream_id,
            )
        return StreamState(**dict(record)) if record else None

    async def interrupt_stream(self, message_id: uuid.UUID) -> str:
        """Close a stream no replica is running; returns the message's status afterwards."""
        async with connection(self._pool) as conn:
            status: str | None = await conn.fetchval(
                f"UPDATE messages SET {_INTERRUPTED} WHERE id = $1 AND status = 'streaming' RETURNING status",
                message_id,
            )
            if status:
                return status
            current: str = await conn.fetchval("SELECT status FROM messages WHERE id = $1", message_id)
            return current

    async def interrupt_stale_streams(self, silent_for_seconds: float) -> int:
        """Sweep: close streams without progress for that long; one replica at a time (advisory lock)."""
        async with connection(self._pool) as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", SWEEP_LOCK_KEY):
                return 0
            records = await conn.fetch(
                f"""
                UPDATE messages SET {_INTERRUPTED}
                 WHERE status = 'streaming'
                   AND coalesce(progress_at, created_at) < now() - make_interval(secs => $1)
                RETURNING id
                """,
                silent_for_seconds,
            )
        return len(records)

    async def notify_stop(self, stream_id: uuid.UUID) -> None:
        async with connection(self._pool) as conn:
            await conn.execute("SELECT pg_notify($1, $2)", STOP_CHANNEL, str(stream_id))

    async def messages(self, conversation_id: uuid.UUID, owner_id: str) -> list[StoredMessage] | None:
        async with connection(self._pool) as conn:
            owned = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM conversations WHERE id = $1 AND owner_id = $2)",
                conversation_id,
                owner_id,
            )
            if not owned:
                return None
            records = await conn.fetch(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 ORDER BY created_at, id",
                conversation_id,
            )
        return [StoredMessage(**dict(r)) for r in records]

    # ---- conversation list and deletion (GET /api/conversations, DELETE /api/conversations/{id}) ----

    async def list_conversations(
        self, owner_id: str, *, limit: int, after: tuple[datetime, uuid.UUID] | None
    ) -> list[ConversationSummary]:
        """The owner's conversations, most recent activity first; `after` is the last row of the previous page.

        Last activity is the newest of the conversation's own update time and its messages' creation
        and completion times, so a conversation moves up when an answer finishes, not only when asked.
        """
        after_at, after_id = after if after is not None else (None, None)
        async with connection(self._pool) as conn:
            records = await conn.fetch(
                f"""
                WITH summary AS (
                    SELECT c.id, c.created_at,
                           greatest(c.updated_at, max(coalesce(m.completed_at, m.created_at))) AS last_activity_at,
                           count(m.id) AS message_count,
                           coalesce(bool_or(m.has_images), false) AS has_images
                      FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id
                     WHERE c.owner_id = $1
                     GROUP BY c.id
                )
                SELECT s.*, first_message.content AS first_content
                  FROM summary s
                  LEFT JOIN LATERAL (
                      SELECT left(content, {TITLE_SOURCE_CHARS}) AS content FROM messages
                       WHERE conversation_id = s.id ORDER BY created_at, id LIMIT 1
                  ) first_message ON true
                 WHERE $2::timestamptz IS NULL OR (s.last_activity_at, s.id) < ($2::timestamptz, $3::uuid)
                 ORDER BY s.last_activity_at DESC, s.id DESC
                 LIMIT $4
                """,
                owner_id,
                after_at,
                after_id,
                limit,
            )
        return [ConversationSummary(**dict(r)) for r in records]

    async def delete_conversation(self, conversation_id: uuid.UUID, owner_id: str) -> DeletedConversation | None:
        """Delete a conversation and (ON DELETE CASCADE) its messages; None if it is not the owner's.

        Images in the image-store keep existing: their `message_id` is set to NULL by the foreign key.
        Returned: the image IDs its messages named and the streams still running, read in the same
        statement (one snapshot) as the delete.
        """
        async with connection(self._pool) as conn:
            record = await conn.fetchrow(
                """
                WITH doomed AS (
                    SELECT id FROM conversations WHERE id = $1 AND owner_id = $2 FOR UPDATE
                ), facts AS (
                    SELECT coalesce(array_agg(DISTINCT image_id) FILTER (WHERE image_id IS NOT NULL), '{}')
                               AS image_ids,
                           coalesce(array_agg(DISTINCT m.stream_id)
                                    FILTER (WHERE m.status = 'streaming' AND m.stream_id IS NOT NULL), '{}')
                               AS live_stream_ids
                      FROM messages m LEFT JOIN LATERAL unnest(m.image_ids) AS image_id ON true
                     WHERE m.conversation_id IN (SELECT id FROM doomed)
                ), gone AS (
                    DELETE FROM conversations WHERE id IN (SELECT id FROM doomed) RETURNING id
                )
                SELECT (SELECT count(*) FROM gone) AS deleted, facts.image_ids, facts.live_stream_ids FROM facts
                """,
                conversation_id,
                owner_id,
            )
        facts = required_row(record)  # selected from an ungrouped aggregate: always one row
        if not facts["deleted"]:
            return None
        return DeletedConversation(list(facts["image_ids"]), list(facts["live_stream_ids"]))


# Enough of the first message for a title of its first words.
TITLE_SOURCE_CHARS = 400


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
