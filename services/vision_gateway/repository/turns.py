"""Opening, saving and finishing a chat turn: the user's message and the streaming answer."""

from __future__ import annotations

import uuid
from typing import Any

from common.db import connection, required_row
from services.vision_gateway.repository.records import (
    MESSAGE_COLUMNS,
    NewTurn,
    PoolQueries,
    StoredMessage,
)


class TurnQueries(PoolQueries):
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
                SELECT {MESSAGE_COLUMNS} FROM (
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
        """The user's message and the (empty, streaming) assistant message: one statement, one round trip.

        Committed without waiting for the WAL flush (synchronous_commit off for this transaction only):
        the first token is not held behind a disk flush (0.3-12 ms here). What is traded: if PostgreSQL
        itself crashes within about 3 x wal_writer_delay (600 ms by default) of this commit, the turn's
        opening rows are lost; the answer's later writes are ordinary durable commits (they then find
        no row, and the client had its `done`/`error` event). Nothing else is relaxed.
        """
        async with connection(self._pool, stateless=True) as conn:
            record = await conn.fetchrow(
                """
                WITH async_commit AS (
                    SELECT set_config('synchronous_commit', 'off', true)  -- this transaction only
                ), new_conversation AS (
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
                  FROM async_commit
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
        async with connection(self._pool, stateless=True) as conn:
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
